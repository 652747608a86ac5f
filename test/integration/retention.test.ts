/** Retention runs in the background of the real service process. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, expect, it } from "vitest";
import { TOKEN, eventually, freePort, spawnService, type ServiceProcess } from "../fixtures/service.ts";

let svc: ServiceProcess | null = null;
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-retention-"));

afterAll(async () => {
  if (svc && svc.child.exitCode === null) {
    svc.child.kill("SIGTERM");
    await svc.exited;
  }
  fs.rmSync(dataDir, { recursive: true, force: true });
});

async function rest(method: string, p: string, body?: unknown): Promise<any> {
  const res = await fetch(svc!.url + p, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body ? { "content-type": "application/json" } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  return res.json();
}

it("keeps at most FLEETRUN_RETENTION_MAX_PER_MACHINE ended commands per machine", async () => {
  svc = await spawnService(
    { FLEETRUN_DATA_DIR: dataDir, FLEETRUN_LOCAL_MACHINE: "1", FLEETRUN_RETENTION_MAX_PER_MACHINE: "3", FLEETRUN_RETENTION_INTERVAL_MS: "1000" },
    await freePort(),
  );
  const ids: string[] = [];
  for (let i = 0; i < 6; i++) ids.push((await rest("POST", "/v1/commands", { machine_id: "mach_local", command: `echo ${i}` })).data.id);
  const page = await eventually(async () => {
    const p = await rest("GET", "/v1/machines/mach_local/commands?limit=50");
    return p.meta.total === 3 ? p : null;
  }, 15_000, "retention to prune");
  expect(page.data.map((c: { id: string }) => c.id)).toEqual(ids.slice(3).reverse());
  expect((await rest("GET", `/v1/commands/${ids[0]}`)).error.code).toBe("not_found");
}, 60_000);
