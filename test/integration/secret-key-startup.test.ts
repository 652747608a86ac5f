/**
 * The secret key as an operator meets it through the real entry points:
 * generated at first start (0600), a malformed or wrong key is one line and
 * exit code 2 that never echoes a key or a credential, and `npm run
 * rotate-secrets` moves every credential to a new key, after which the old
 * one no longer starts the service and the new one alone does.
 */
import { randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, inject, it } from "vitest";
import { keyIdOf } from "../../src/secrets/index.ts";
import { ROOT, TOKEN, freePort, restClient, spawnService, type ServiceProcess } from "../fixtures/service.ts";

const fleet = inject("sshFleet");
const NODE24 = path.join(ROOT, "node_modules/.bin/node");
const MAIN = path.join(ROOT, "src/main.ts");
const SLOW = { timeout: 300_000 };

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-secret-key-"));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** No FLEETRUN_ or DATABASE_URL from the test runner. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("FLEETRUN_") && k !== "DATABASE_URL") env[k] = v;
  return { ...env, HOST: "127.0.0.1", PORT: "0", ...extra };
}

function runMain(env: Record<string, string>): { status: number | null; stderr: string } {
  const r = spawnSync(NODE24, [MAIN], { cwd: ROOT, env: cleanEnv(env), encoding: "utf8", timeout: 120_000 });
  return { status: r.status, stderr: r.stderr };
}

async function stop(svc: ServiceProcess): Promise<void> {
  svc.child.kill("SIGTERM");
  expect(await svc.exited).toBe(0);
}

it("a malformed FLEETRUN_SECRET_KEY is one line naming the setting, exit 2, never the key", SLOW, () => {
  const short = randomBytes(16).toString("base64");
  const r = runMain({ FLEETRUN_DATA_DIR: path.join(tmp, "bad"), FLEETRUN_SECRET_KEY: short });
  expect(r.status).toBe(2);
  expect(r.stderr).toMatch(/^fleetrun: FLEETRUN_SECRET_KEY: the key is 16 bytes, not 32; expected 32 random bytes in base64.*openssl rand -base64 32\)\n$/);
  expect(r.stderr).not.toContain(short);
});

it("generates a 0600 key; another key refuses the database by key id; rotate-secrets moves every credential to a new key", SLOW, async () => {
  const dataDir = path.join(tmp, "data");
  const svc = await spawnService({ FLEETRUN_DATA_DIR: dataDir }, await freePort());
  let machineId: string;
  try {
    const rest = restClient(svc.url, TOKEN);
    const r = await rest("POST", "/v1/machines", { name: "k", host: fleet.addresses[7], port: fleet.port, username: "frtest", password: fleet.loginPassword });
    expect(r.status).toBe(201);
    machineId = r.body.data.id;
    expect((await rest("POST", "/v1/commands", { machine_id: machineId, command: "id -un" })).body.data.stdout).toBe("frtest\n");
  } finally {
    await stop(svc);
  }
  const keyFile = path.join(dataDir, "secret-key");
  expect(fs.statSync(keyFile).mode & 0o777).toBe(0o600);
  const oldKey = fs.readFileSync(keyFile, "utf8").trim();
  const oldId = keyIdOf(Buffer.from(oldKey, "base64"));
  expect(svc.output()).not.toContain(oldKey);

  const newKey = randomBytes(32).toString("base64");
  const wrong = runMain({ FLEETRUN_DATA_DIR: dataDir, FLEETRUN_SECRET_KEY: newKey });
  expect(wrong.status).toBe(2);
  expect(wrong.stderr.split("\n")).toHaveLength(2);
  expect(wrong.stderr).toContain(`fleetrun: FLEETRUN_SECRET_KEY: the database holds credentials sealed under key ${oldId} (1 value)`);
  for (const secret of [newKey, oldKey, fleet.loginPassword]) expect(wrong.stderr).not.toContain(secret);

  const rotate = spawnSync("npm", ["run", "--silent", "rotate-secrets"], {
    cwd: ROOT,
    env: cleanEnv({ FLEETRUN_DATA_DIR: dataDir, FLEETRUN_SECRET_KEY: `${newKey},${oldKey}` }),
    encoding: "utf8",
    timeout: 120_000,
  });
  expect(rotate.stderr).toBe("");
  expect(rotate.status).toBe(0);
  expect(rotate.stdout).toBe(`re-encrypted 1 value of 1 machine under key ${keyIdOf(Buffer.from(newKey, "base64"))}; every credential is now under it, so older keys may be removed\n`);

  // The old key alone no longer opens the database; the new one alone does.
  expect(runMain({ FLEETRUN_DATA_DIR: dataDir, FLEETRUN_SECRET_KEY: oldKey }).status).toBe(2);
  const after = await spawnService({ FLEETRUN_DATA_DIR: dataDir, FLEETRUN_SECRET_KEY: newKey, FLEETRUN_LOCAL_MACHINE: "1" }, await freePort());
  try {
    const rest = restClient(after.url, TOKEN);
    expect((await rest("POST", "/v1/commands", { machine_id: machineId, command: "id -un" })).body.data.stdout).toBe("frtest\n");
    // Neither the key nor the admin token is handed to commands of the built-in machine.
    const env = (await rest("POST", "/v1/commands", { machine_id: "mach_local", command: "env" })).body.data.stdout as string;
    expect(env).toContain("PATH=");
    for (const leaked of [newKey, TOKEN, "FLEETRUN_SECRET_KEY", "FLEETRUN_ADMIN_TOKEN"]) expect(env).not.toContain(leaked);
  } finally {
    await stop(after);
  }
});
