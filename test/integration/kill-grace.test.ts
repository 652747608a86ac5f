/**
 * FLEETRUN_KILL_GRACE_MS is the delay between SIGTERM and SIGKILL on every
 * path: a timeout or cancel of a command with a waiting caller (light path)
 * and of a detached one.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually, startService, type TestService } from "../fixtures/service.ts";

const GRACE_MS = 5000;

describe("kill grace", () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startService({ env: { FLEETRUN_KILL_GRACE_MS: String(GRACE_MS) } });
  });
  afterAll(async () => {
    await svc?.close();
  });

  // The command ignores SIGTERM and prints how long it lived after the first one.
  const command = `trap 'echo got-term' TERM; i=0; while [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done`;

  it("a timeout of a command with a waiting caller sends SIGKILL only after the grace period", async () => {
    const t0 = Date.now();
    const r = await svc.rest("POST", "/v1/commands", { machine_id: "mach_local", command, timeout: 1000 });
    const took = Date.now() - t0;
    expect(r.body.data.status, JSON.stringify(r.body)).toBe("timed_out");
    expect(r.body.data.signal).toBe("SIGKILL");
    expect(r.body.data.stdout).toContain("got-term");
    expect(took).toBeGreaterThanOrEqual(1000 + GRACE_MS - 300);
    expect(r.body.data.duration).toBeGreaterThanOrEqual(1000 + GRACE_MS - 300);
  }, 30_000);

  it("a timeout of a detached command sends SIGKILL only after the grace period", async () => {
    const s = await svc.rest("POST", "/v1/commands/async", { machine_id: "mach_local", command, timeout: 1000 });
    const done = await eventually(async () => {
      const g = await svc.rest("GET", `/v1/commands/${s.body.data.id}`);
      return g.body.data.finished_at !== null ? g.body.data : null;
    }, 20_000);
    expect(done.status).toBe("timed_out");
    expect(done.signal).toBe("SIGKILL");
    expect(done.duration).toBeGreaterThanOrEqual(1000 + GRACE_MS - 300);
  }, 30_000);
});
