/**
 * The SSH connection dies under a running command: the sshd process that
 * serves the connection is killed on the target (as when a machine's sshd is
 * restarted, or a NAT drops the flow and the server gives up).
 *
 * - A waiting caller's command (Execute, the light path) cannot be followed
 *   any more: it is recorded `lost` with `connection_lost`, and the service
 *   ends what it left on the target over a new connection.
 * - A detached command (ExecuteAsync) runs on; the service re-attaches and
 *   records its true exit code and complete output.
 */
import fs from "node:fs";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { eventually, processesWith, registerMachine, startService, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");

function unique(): string {
  return `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
}

function parentOf(pid: number): { ppid: number; comm: string } | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { ppid: Number(fields[1]), comm };
  } catch {
    return null;
  }
}

/** Kills (SIGKILL) the sshd process nearest above the one process whose command line has `marker`. */
function killServingSshd(marker: string): number {
  const found = processesWith(marker);
  expect(found, `one process with ${marker}`).toHaveLength(1);
  let pid = Number(found[0]!.split(" ")[0]);
  for (let depth = 0; depth < 16; depth++) {
    const p = parentOf(pid);
    if (p === null || p.ppid <= 1) break;
    const parent = parentOf(p.ppid);
    if (parent?.comm === "sshd") {
      process.kill(p.ppid, "SIGKILL");
      return p.ppid;
    }
    pid = p.ppid;
  }
  throw new Error(`no sshd above the process with ${marker}`);
}

describe("the SSH connection dies under a running command", () => {
  let svc: TestService;
  let machine: string;

  beforeAll(async () => {
    svc = await startService({ db: "sqlite" });
    machine = await registerMachine(svc, fleet, { index: 21, user: "root" });
  });
  afterAll(async () => {
    await svc?.close();
  });

  it("Execute: the caller gets `lost` / connection_lost, and nothing of the command is left on the target", async () => {
    const mark = `401.${unique()}`;
    const pending = svc.rest("POST", "/v1/commands", {
      machine_id: machine,
      command: `echo started; sleep ${mark}; echo never`,
      timeout: 600_000,
    });
    await eventually(() => processesWith(`sleep ${mark}`).length === 1, 15_000, "the command runs");
    killServingSshd(`sleep ${mark}`);

    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.body.data).toMatchObject({ status: "lost", exit_code: null, stdout: "started\n" });
    expect(r.body.data.error.code).toBe("connection_lost");
    // Nothing notices a closed pipe while it sleeps: only the service's kill,
    // sent over a new connection, ends it (the target's own timeout is 10 min away).
    await eventually(() => processesWith(`sleep ${mark}`).length === 0, 15_000, "the orphaned command to be killed");

    // The machine is still usable: the pool opens a new connection.
    const next = await svc.rest("POST", "/v1/commands", { machine_id: machine, command: "echo again" });
    expect(next.body.data).toMatchObject({ status: "completed", exit_code: 0, stdout: "again\n" });
  }, 60_000);

  it("ExecuteAsync: the command runs on; the service re-attaches and records its exit code and every byte", async () => {
    const mark = `3.${unique()}`;
    const r = await svc.rest("POST", "/v1/commands/async", {
      machine_id: machine,
      command: `echo before; sleep ${mark}; echo after; echo to-stderr >&2; exit 7`,
    });
    expect(r.status).toBe(202);
    const id = r.body.data.id as string;
    await eventually(async () => {
      const c = (await svc.rest("GET", `/v1/commands/${id}`)).body.data;
      return c.stdout === "before\n" && processesWith(`sleep ${mark}`).length === 1;
    }, 15_000, "the command runs and its first line arrived");
    killServingSshd(`sleep ${mark}`);

    const done = await eventually(async () => {
      const c = (await svc.rest("GET", `/v1/commands/${id}`)).body.data;
      return c.status === "running" || c.status === "queued" ? null : c;
    }, 30_000, "the command to end");
    expect(done).toMatchObject({ status: "completed", exit_code: 7, stdout: "before\nafter\n", stderr: "to-stderr\n", error: null });
  }, 60_000);
});
