/**
 * The detached helpers fleetrun leaves on a target (the supervisor's
 * watchdog, the cancel escalation, the light path's kill helper) end with
 * the job: none of them waits out its timeout or grace period once the job
 * or the group is gone. The scripts run here with this host's /bin/sh
 * (dash) and HOME in a temporary directory.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { cancelScript, cleanupScript, collectScript, jobDirFor, killGroupScript, newNonce, startScript } from "../../src/exec/remote-script.ts";
import { eventually, processesWith } from "../fixtures/service.ts";

let home: string;
const groups: number[] = [];
const starts: ChildProcess[] = [];

beforeAll(() => {
  home = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-helpers-"));
});
afterEach(() => {
  for (const pid of groups.splice(0)) {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // gone
    }
  }
  for (const child of starts.splice(0)) child.kill("SIGKILL");
});
afterAll(() => {
  // Anything a failed test left: every helper of a job names its directory,
  // and leads a process group of its own (with its sleep or flock).
  for (const line of processesWith(home)) {
    const pid = Number(line.split(" ")[0]);
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
  }
  fs.rmSync(home, { recursive: true, force: true });
});

let seq = 0;
function newJob(): { id: string; jobDir: string; dir: string } {
  const id = `cmd_helpers${process.pid}x${++seq}`;
  const jobDir = jobDirFor(id);
  return { id, jobDir, dir: path.join(home, jobDir) };
}

function sh(script: string): string {
  return spawnSync("/bin/sh", ["-s"], { input: script, encoding: "utf8", env: { ...process.env, HOME: home } }).stdout;
}

function shAsync(script: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn("/bin/sh", ["-s"], { env: { ...process.env, HOME: home }, stdio: ["pipe", "pipe", "ignore"] });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.on("error", reject);
    child.on("close", () => resolve(out));
    child.stdin.end(script);
  });
}

/** Starts a job and follows it to its end (as the service does), then reads how it ended. */
async function runJob(jobDir: string, command: string, timeoutMs: number, graceMs: number): Promise<string> {
  const nonce = newNonce();
  expect(await shAsync(startScript({ nonce, jobDir, command, cwd: null, env: {}, user: null, timeoutMs, graceMs }))).toContain(`${nonce} started`);
  return (await shAsync(collectScript(nonce, jobDir))).replace(nonce, "").trim();
}

/** Starts a job without following it (the service is down); resolves once it runs. */
async function startDetached(job: { jobDir: string; dir: string }, command: string, timeoutMs: number, graceMs: number): Promise<void> {
  const nonce = newNonce();
  const child = spawn("/bin/sh", ["-s"], { env: { ...process.env, HOME: home }, stdio: ["pipe", "ignore", "ignore"] });
  starts.push(child);
  child.stdin.end(startScript({ nonce, jobDir: job.jobDir, command, cwd: null, env: {}, user: null, timeoutMs, graceMs }));
  await eventually(() => fs.existsSync(path.join(job.dir, "pgid")), 20_000, "the job to start");
  child.kill("SIGKILL");
}

/** Processes of one job: its supervisor, watchdog and cancel escalation all carry the job directory on their command line. */
const ofJob = (dir: string) => processesWith(dir);

function leaderStart(pid: number): string {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]!;
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

describe("the watchdog", { timeout: 90_000 }, () => {
  it("of quick jobs ends with their supervisor, long before the timeout, and cleanup leaves no directory", async () => {
    const jobs = Array.from({ length: 12 }, () => newJob());
    const ends = await Promise.all(jobs.map((job) => runJob(job.jobDir, "true", 600_000, 1000)));
    expect(ends).toEqual(jobs.map(() => "status 0"));
    await eventually(() => jobs.every((j) => ofJob(j.dir).length === 0), 20_000, "no process of the jobs");
    for (const job of jobs) sh(cleanupScript(newNonce(), job.jobDir));
    expect(jobs.filter((j) => fs.existsSync(j.dir))).toEqual([]);
  });

  it("enforces the timeout with nobody following, and ends as soon as the group is gone (not after the grace)", async () => {
    const job = newJob();
    const mark = `7101.${process.pid}`;
    await startDetached(job, `sleep ${mark}`, 500, 60_000);
    await eventually(() => processesWith(mark).length === 0, 20_000, "the command to be killed");
    await eventually(() => fs.existsSync(path.join(job.dir, "status")), 20_000, "the status");
    expect(sh(collectScript("n", job.jobDir))).toContain("n status 143 timedout");
    await eventually(() => ofJob(job.dir).length === 0, 20_000, "no process of the job");
  });

  it("sends SIGKILL after the grace to a group that ignores SIGTERM", async () => {
    const job = newJob();
    const t0 = Date.now();
    expect(await runJob(job.jobDir, "trap '' TERM; sleep 7102", 300, 1200)).toBe("status 137 timedout");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
    await eventually(() => ofJob(job.dir).length === 0, 20_000, "no process of the job");
  });

  it("gives what is left of the group the grace period after the command's shell died of SIGTERM", async () => {
    const job = newJob();
    const mark = `7104.${process.pid}`;
    const t0 = Date.now();
    // The background sleep ignores SIGTERM; the command's shell dies of it at the timeout.
    expect(await runJob(job.jobDir, `sh -c "trap '' TERM; exec sleep ${mark}" & sleep 7105`, 300, 1500)).toBe("status 143 timedout");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1800);
    expect(processesWith(mark)).toEqual([]);
    await eventually(() => ofJob(job.dir).length === 0, 20_000, "no process of the job");
  });

  it("still enforces the timeout when the supervisor died, then ends", async () => {
    const job = newJob();
    const mark = `7103.${process.pid}`;
    await startDetached(job, `sleep ${mark}`, 6000, 60_000);
    const sup = ofJob(job.dir).find((l) => l.includes(`${job.dir}/sup `));
    expect(sup).toBeDefined();
    process.kill(Number(sup!.split(" ")[0]), "SIGKILL");
    expect(processesWith(mark).length).toBe(1);
    await eventually(() => processesWith(mark).length === 0, 30_000, "the command to be killed at its timeout");
    expect(fs.existsSync(path.join(job.dir, "timedout"))).toBe(true);
    await eventually(() => ofJob(job.dir).length === 0, 20_000, "the watchdog to end");
  });
});

describe("the cancel escalation", { timeout: 90_000 }, () => {
  it("ends as soon as the job has ended, not after the grace", async () => {
    const job = newJob();
    const mark = `7201.${process.pid}`;
    await startDetached(job, `sleep ${mark}`, 600_000, 60_000);
    const nonce = newNonce();
    expect(sh(cancelScript(nonce, job.jobDir, null, 60_000))).toContain(`${nonce} sent`);
    await eventually(() => fs.existsSync(path.join(job.dir, "status")), 20_000, "the status");
    expect(sh(collectScript("n", job.jobDir))).toContain("n status 143 cancelled");
    await eventually(() => ofJob(job.dir).length === 0, 20_000, "no process of the job");
  });
});

describe("the light path's kill helper", { timeout: 90_000 }, () => {
  const helperOf = (pgid: number) => processesWith(`fleetrun-kill ${pgid} `);

  it("ends as soon as the group is gone, not after the grace", async () => {
    const child = spawn("sleep", ["7301"], { detached: true, stdio: "ignore" });
    groups.push(child.pid!);
    expect(sh(killGroupScript("n", child.pid!, leaderStart(child.pid!), null, 60_000))).toContain("n sent");
    await eventually(() => !alive(child.pid!), 20_000, "the group to die");
    await eventually(() => helperOf(child.pid!).length === 0, 20_000, "the helper to end");
  });

  it("sends SIGKILL after the grace to a group that ignores SIGTERM, then ends", async () => {
    const child = spawn("/bin/sh", ["-c", "trap '' TERM; exec sleep 7302"], { detached: true, stdio: "ignore" });
    groups.push(child.pid!);
    await eventually(() => processesWith("sleep 7302").length === 1, 20_000, "the group to run");
    const t0 = Date.now();
    expect(sh(killGroupScript("n", child.pid!, leaderStart(child.pid!), null, 3000))).toContain("n sent");
    await eventually(() => helperOf(child.pid!).length === 1, 20_000, "the helper to run");
    await eventually(() => !alive(child.pid!), 20_000, "the group to be killed");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(2900);
    await eventually(() => helperOf(child.pid!).length === 0, 20_000, "the helper to end");
  });
});
