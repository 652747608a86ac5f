/**
 * Job directories left on a target (cleanup failed, outcome given up) are
 * swept by a later detached start on the same machine: only stale `cmd_*`
 * directories whose supervisor is gone; a live job, a recent one and
 * anything else stay.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { startScript } from "../../src/exec/remote-script.ts";
import { eventually, registerMachine, startService, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");
// The fleet's root login: its job directories live in root's home on this host.
const JOBS = "/root/.fleetrun/jobs";

function unique(): string {
  return `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
}

/** A job directory as a finished job leaves it, every file and the directory itself `daysOld` old. */
function fakeJob(name: string, daysOld: number): string {
  const dir = path.join(JOBS, name);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (const f of ["cmd", "sup", "out", "err", "lock", "pgid", "status"]) fs.writeFileSync(path.join(dir, f), f === "status" ? "0\n" : "");
  const when = new Date(Date.now() - daysOld * 86_400_000);
  for (const f of fs.readdirSync(dir)) fs.utimesSync(path.join(dir, f), when, when);
  fs.utimesSync(dir, when, when);
  return dir;
}

describe("sweep of leftover job directories", () => {
  let svc: TestService;
  let machine: string;
  let holder: ChildProcess | null = null;
  const u = unique();
  const stale = `cmd_sweepstale${u}`;
  const live = `cmd_sweeplive${u}`;
  const recent = `cmd_sweeprecent${u}`;
  const other = `keep_sweepother${u}`;

  beforeAll(async () => {
    fs.mkdirSync(JOBS, { recursive: true, mode: 0o700 });
    svc = await startService({ db: "sqlite" });
    machine = await registerMachine(svc, fleet, { index: 22, user: "root" });
  });
  afterAll(async () => {
    holder?.kill("SIGKILL");
    for (const d of [stale, live, recent, other]) fs.rmSync(path.join(JOBS, d), { recursive: true, force: true });
    await svc?.close();
  });

  it("a detached start removes stale, unlocked cmd_* directories and keeps the rest", async () => {
    fakeJob(stale, 30);
    const liveDir = fakeJob(live, 30);
    fakeJob(recent, 0);
    fakeJob(other, 30);
    // A supervisor that is still alive holds its job's lock (a command with a long timeout that printed nothing).
    holder = spawn("flock", [path.join(liveDir, "lock"), "sleep", "600"], { stdio: "ignore" });
    await eventually(() => {
      const r = spawn("flock", ["-n", path.join(liveDir, "lock"), "true"]);
      return new Promise<boolean>((resolve) => r.on("exit", (code) => resolve(code !== 0)));
    }, 10_000, "the lock to be held");

    const r = await svc.rest("POST", "/v1/commands/async", { machine_id: machine, command: "echo swept" });
    expect(r.status).toBe(202);
    const id = r.body.data.id as string;
    const done = await eventually(async () => {
      const c = (await svc.rest("GET", `/v1/commands/${id}`)).body.data;
      return c.status === "completed" ? c : null;
    }, 20_000, "the command to complete");
    expect(done.stdout).toBe("swept\n");

    await eventually(() => !fs.existsSync(path.join(JOBS, stale)), 15_000, "the stale job directory to be removed");
    expect(fs.existsSync(path.join(JOBS, live, "status"))).toBe(true);
    expect(fs.existsSync(path.join(JOBS, recent, "status"))).toBe(true);
    expect(fs.existsSync(path.join(JOBS, other, "status"))).toBe(true);
  }, 60_000);

  it("the start script sweeps only when asked to", () => {
    const spec = { nonce: "n", jobDir: ".fleetrun/jobs/cmd_x", command: "true", cwd: null, env: {}, user: null, timeoutMs: 1000, graceMs: 1000 };
    expect(startScript(spec)).not.toContain("rm -rf --");
    expect(startScript({ ...spec, sweepAfterMinutes: null })).not.toContain("rm -rf --");
    expect(startScript({ ...spec, sweepAfterMinutes: 11_000 })).toContain("-mmin -11000");
  });
});
