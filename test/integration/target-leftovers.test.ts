/**
 * Nothing of fleetrun stays on a target once a command's outcome is stored:
 * no supervisor, watchdog, cancel escalation or kill helper, and no job
 * directory, whether the command ended by itself, by its timeout or by a
 * cancel, over SSH and on the built-in local machine. The grace period is
 * two minutes, so a helper that sleeps it out instead of ending with its job
 * fails every deadline below. Other tests may run on the same targets: only
 * this file's own jobs (their command ids, their process groups) are looked at.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { JOBS_DIR } from "../../src/exec/remote-script.ts";
import { GrpcClient, eventually, processesWith, registerMachine, startService, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");

function unique(): string {
  return `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
}

function homeOf(user: string): string {
  const line = fs.readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.startsWith(`${user}:`));
  if (!line) throw new Error(`no account ${user}`);
  return line.split(":")[5]!;
}

/**
 * What is left of these jobs on this host (where the targets run): processes
 * whose command line names one of them (the supervisor, the watchdog and the
 * cancel escalation carry the job directory; each waits for its own children,
 * so none of those outlives it) and job directories.
 */
function leftovers(jobs: { id: string; home: string }[]): string[] {
  const found: string[] = [];
  for (const pid of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z") continue;
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
      const job = jobs.find((j) => cmdline.includes(j.id));
      if (job) found.push(`process ${pid} of ${job.id}: ${cmdline.slice(0, 40).replace(/\s+/g, " ")}… ${cmdline.slice(-120)}`);
    } catch {
      // gone meanwhile
    }
  }
  for (const j of jobs) {
    const dir = path.join(j.home, JOBS_DIR, j.id);
    if (fs.existsSync(dir)) found.push(`directory ${dir}`);
  }
  return found;
}

async function nothingLeft(jobs: { id: string; home: string }[], ms = 30_000): Promise<void> {
  let last: string[] = [];
  try {
    await eventually(() => (last = leftovers(jobs)).length === 0, ms, "nothing left of the jobs");
  } catch {
    expect(last).toEqual([]);
  }
}

describe("nothing is left on a target once a command's outcome is stored", { timeout: 120_000 }, () => {
  let svc: TestService;
  let root: string;
  let login: string;
  const rootHome = homeOf("root");
  const loginHome = homeOf("frtest");
  const localHome = os.homedir();

  beforeAll(async () => {
    svc = await startService({ db: "sqlite", env: { FLEETRUN_KILL_GRACE_MS: "120000" } });
    root = await registerMachine(svc, fleet, { index: 9, user: "root" });
    login = await registerMachine(svc, fleet, { index: 15, user: "frtest" });
  });
  afterAll(async () => {
    await svc?.close();
  });

  const get = async (id: string) => (await svc.rest("GET", `/v1/commands/${id}`)).body.data;
  const startAsync = async (body: Record<string, unknown>) => {
    const r = await svc.rest("POST", "/v1/commands/async", body);
    expect(r.status).toBe(202);
    return r.body.data.id as string;
  };
  const ended = (id: string, status: string) =>
    eventually(async () => {
      const c = await get(id);
      return c.status === status ? c : null;
    }, 60_000, `${id} ${status}`);

  it("30 quick detached commands over SSH and 30 on the local machine", async () => {
    const jobs: { id: string; home: string }[] = [];
    // A long timeout: a watchdog that sleeps it out would still be there.
    const starts = [];
    for (let i = 0; i < 30; i++) {
      starts.push(startAsync({ machine_id: root, command: "true", timeout: 600_000 }).then((id) => jobs.push({ id, home: rootHome })));
      starts.push(startAsync({ machine_id: "mach_local", command: "true", timeout: 600_000 }).then((id) => jobs.push({ id, home: localHome })));
    }
    await Promise.all(starts);
    for (const j of jobs) expect((await ended(j.id, "completed")).exit_code).toBe(0);
    await nothingLeft(jobs);
  }, 300_000);

  for (const who of ["root", "run-as", "local"] as const) {
    it(`a cancelled detached command (${who})`, async () => {
      const mark = `811.${unique()}`;
      const body: Record<string, unknown> = { machine_id: who === "root" ? root : who === "local" ? "mach_local" : login, command: `sleep ${mark}`, timeout: 600_000 };
      if (who === "run-as") body.user = "frrunas";
      const id = await startAsync(body);
      await eventually(() => processesWith(mark).length === 1, 30_000, "the command to run");
      await ended(id, "running");
      expect((await svc.rest("DELETE", `/v1/commands/${id}`)).status).toBe(200);
      expect((await ended(id, "cancelled")).signal).toBe("SIGTERM");
      await nothingLeft([{ id, home: who === "root" ? rootHome : who === "local" ? localHome : loginHome }]);
      expect(processesWith(mark)).toEqual([]);
    });
  }

  it("a timed-out detached command", async () => {
    const mark = `812.${unique()}`;
    const id = await startAsync({ machine_id: login, command: `sleep ${mark}`, timeout: 1500 });
    expect((await ended(id, "timed_out")).signal).toBe("SIGTERM");
    await nothingLeft([{ id, home: loginHome }]);
    expect(processesWith(mark)).toEqual([]);
  });

  /** The process group of the (only) process whose command line has `mark`, once it runs. */
  const groupOf = async (mark: string): Promise<number> => {
    const line = await eventually(() => processesWith(mark)[0], 30_000, "the command to run");
    const stat = fs.readFileSync(`/proc/${line.split(" ")[0]}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
  };
  /** The light path's kill helper names the process group it watches. */
  const killHelpers = (pgid: number) => processesWith(`fleetrun-kill ${pgid} `);

  for (const where of ["ssh", "local"] as const) {
    it(`a light-path timeout leaves no kill helper (${where})`, async () => {
      const mark = `813.${unique()}`;
      const answer = svc.rest("POST", "/v1/commands", { machine_id: where === "ssh" ? root : "mach_local", command: `sleep ${mark}`, timeout: 5000 });
      const pgid = await groupOf(mark);
      expect(pgid).toBeGreaterThan(1);
      expect((await answer).body.data.status).toBe("timed_out");
      await eventually(() => killHelpers(pgid).length === 0, 30_000, "no kill helper");
      expect(processesWith(mark)).toEqual([]);
    });
  }

  it("a cancelled light-path command leaves no kill helper", async () => {
    const client = new GrpcClient(svc.url, svc.token);
    const mark = `814.${unique()}`;
    try {
      let call: { cancel(): void } | undefined;
      const p = client.unary(CommandService.method.execute, { machineId: login, command: `sleep ${mark}` }, { onCall: (c) => (call = c) });
      const pgid = await groupOf(mark);
      expect(pgid).toBeGreaterThan(1);
      call!.cancel();
      await expect(p).rejects.toThrow();
      const hist = await svc.rest("GET", `/v1/machines/${login}/commands?limit=50`);
      const id = hist.body.data.find((c: { command: string }) => c.command === `sleep ${mark}`).id as string;
      await ended(id, "cancelled");
      await eventually(() => killHelpers(pgid).length === 0, 30_000, "no kill helper");
      expect(processesWith(mark)).toEqual([]);
    } finally {
      client.close();
    }
  });
});
