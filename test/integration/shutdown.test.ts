/**
 * Stopping the service as a real process: followers (NDJSON, SSE, grpc-js
 * WatchCommand and ExecuteAsync) are ended at once with the offset to resume
 * from, detached commands are left running and re-attached by the next start,
 * commands with a waiting caller keep their grace (the log says so, /healthz
 * answers 503 meanwhile), and a second signal stops at once.
 */
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CommandService, OutputStream, type CommandEvent } from "../../src/gen/fleetrun/v1/command_pb.js";
import { GrpcClient, TOKEN, eventually, freePort, processesWith, spawnService, type ServiceProcess } from "../fixtures/service.ts";

const fleet = inject("sshFleet");

function unique(): string {
  return `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
}

async function rest(url: string, method: string, p: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(url + p, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** The service's JSON log lines (pino), parsed. */
function logLines(svc: ServiceProcess): { msg?: string; [k: string]: unknown }[] {
  return svc
    .output()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as { msg?: string });
}

type Kind = "ndjson" | "sse" | "grpc";

/** One follower of one command: what it received, per stream, and how its stream ended. */
interface Follower {
  kind: Kind;
  id: string;
  stdout: string;
  stderr: string;
  /** The offset after the last output it received. */
  offset: number;
  /** NDJSON: the final `{error}` line; SSE: the last event; gRPC: the status. */
  final: any;
  /** The terminal command, when the stream ended with `end`. */
  end: any;
  /** Gaps, duplicates and wrong ids seen (asserted by the test, not thrown from a socket handler). */
  problems: string[];
  done: Promise<void>;
  close(): void;
}

function follow(kind: Kind, url: string, id: string, from: number, grpcClient?: GrpcClient): Follower {
  const f: Follower = { kind, id, stdout: "", stderr: "", offset: from, final: null, end: null, problems: [], done: Promise.resolve(), close: () => {} };
  const take = (stream: string, offset: number, data: string) => {
    if (offset !== f.offset) f.problems.push(`${kind} follower of ${id}: chunk at ${offset}, expected ${f.offset}`);
    if (stream === "stdout") f.stdout += data;
    else f.stderr += data;
    f.offset = offset + Buffer.byteLength(data);
  };
  if (kind === "grpc") {
    const call = grpcClient!.stream(CommandService.method.watchCommand, { id, offset: BigInt(from) });
    f.close = () => call.cancel();
    f.done = new Promise<void>((resolve) => {
      call.on("data", (e: CommandEvent) => {
        if (e.event.case === "output") {
          const o = e.event.value;
          take(o.stream === OutputStream.STDOUT ? "stdout" : "stderr", Number(o.offset), Buffer.from(o.data).toString());
        } else if (e.event.case === "end") {
          f.end = { status: e.event.value.status, exit_code: e.event.value.exitCode };
        }
      });
      call.on("error", (err: grpc.ServiceError) => {
        f.final = { code: err.code, details: err.details, resume: err.metadata.get("fleetrun-resume-offset")[0] };
        resolve();
      });
      call.on("end", () => resolve());
    });
    return f;
  }
  const headers: Record<string, string> = { authorization: `Bearer ${TOKEN}` };
  let target = `${url}/v1/commands/${id}/stream`;
  if (kind === "sse") {
    headers.accept = "text/event-stream";
    if (from > 0) headers["last-event-id"] = String(from);
  } else {
    target += `?offset=${from}`;
  }
  f.done = new Promise<void>((resolve) => {
    const gone = (err: Error) => {
      f.problems.push(`${kind} follower of ${id}: ${err.message}`);
      resolve();
    };
    const req = http.get(target, { headers, agent: false }, (res) => {
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        buf += d;
        const sep = kind === "sse" ? "\n\n" : "\n";
        let i: number;
        while ((i = buf.indexOf(sep)) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + sep.length);
          if (kind === "ndjson") {
            const line = JSON.parse(block);
            if (line.data?.output) take(line.data.output.stream, line.data.output.offset, line.data.output.data);
            else if (line.data?.end) f.end = line.data.end;
            else if (line.error) f.final = line;
            continue;
          }
          const ev: Record<string, string> = {};
          for (const l of block.split("\n")) {
            const c = l.indexOf(":");
            if (c > 0) ev[l.slice(0, c)] = l.slice(c + 1).trimStart();
          }
          if (ev.data === undefined) continue;
          const data = JSON.parse(ev.data);
          if (ev.event === "output") {
            take(data.data.output.stream, data.data.output.offset, data.data.output.data);
            if (ev.id !== String(f.offset)) f.problems.push(`sse id ${ev.id} after offset ${f.offset}`);
          } else if (ev.event === "end") {
            f.end = data.data.end;
          } else {
            f.final = { event: ev.event, id: ev.id, retry: ev.retry, data };
          }
        }
      });
      res.on("end", () => resolve());
      res.on("error", gone);
    });
    req.on("error", gone);
    f.close = () => req.destroy();
  });
  return f;
}

describe("stopping the service", () => {
  let dataDir: string;
  let port: number;
  let svc: ServiceProcess | null = null;
  const machines: string[] = [];
  /** Files whose existence lets the test's commands end. */
  const finishFiles: string[] = [];
  const env = () => ({ FLEETRUN_DATA_DIR: dataDir, FLEETRUN_KILL_GRACE_MS: "1000", FLEETRUN_LOG_LEVEL: "info" });

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-stop-"));
    port = await freePort();
    svc = await spawnService(env(), port);
    const ed = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519")!;
    for (let i = 0; i < 5; i++) {
      const r = await rest(svc.url, "POST", "/v1/machines", {
        name: `stop-${i}`,
        host: fleet.addresses[15 + i],
        port: fleet.port,
        username: i % 2 === 0 ? "root" : "frtest",
        private_key: fleet.clientKey.privateKey,
        host_key_fingerprint: ed.fingerprint,
      });
      expect(r.status).toBe(201);
      machines.push(r.body.data.id);
    }
  });

  afterAll(async () => {
    // Whatever happened, the commands on the targets end.
    for (const f of finishFiles) fs.writeFileSync(f, "");
    if (svc && svc.child.exitCode === null) {
      svc.child.kill("SIGKILL");
      await svc.exited;
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
    await new Promise((resolve) => setTimeout(resolve, 3_000)); // the commands' last sleep, before their marker goes
    for (const f of finishFiles) fs.rmSync(f, { force: true });
  });

  it("SIGTERM with 100 followers and 50 detached commands: stops in under 2 s, each follower resumes after the restart with no gap or duplicate", async () => {
    // The commands print until the test says (the targets share this host's /tmp), so
    // that they still run at the stop however slow the machine is; lines are numbered.
    const finish = path.join(os.tmpdir(), `fleetrun-stop-${unique()}`);
    finishFiles.push(finish);
    const lines = (k: number, n: number, what: string) => Array.from({ length: n }, (_, i) => `c${k} ${what} ${i + 1}\n`).join("");
    const ids: string[] = [];
    for (let k = 0; k < 50; k++) {
      const r = await rest(svc!.url, "POST", "/v1/commands/async", {
        machine_id: machines[k % machines.length],
        command: `i=0; while [ $i -lt 3 ] || [ ! -e ${finish} ]; do i=$((i+1)); echo "c${k} out $i"; echo "c${k} err $i" >&2; sleep 1; done; exit ${k % 7}`,
      });
      expect(r.status).toBe(202);
      ids.push(r.body.data.id);
    }
    const grpcClient = new GrpcClient(svc!.url, TOKEN);
    const kinds: Kind[] = ["ndjson", "sse", "grpc"];
    const followers = Array.from({ length: 100 }, (_, i) => follow(kinds[i % 3]!, svc!.url, ids[i % 50]!, 0, grpcClient));
    try {
      await eventually(() => followers.every((f) => f.offset > 0), 90_000, "every follower to receive output").catch((err: Error) => {
        const idle = followers.filter((f) => f.offset === 0);
        throw new Error(`${err.message} (${idle.length} without output: ${[...new Set(idle.map((f) => f.kind))].join(", ")})`);
      });
      const t0 = performance.now();
      svc!.child.kill("SIGTERM");
      const code = await svc!.exited;
      const elapsed = performance.now() - t0;
      expect(code).toBe(0);
      console.log(`stop with 100 followers and 50 detached commands: ${Math.round(elapsed)} ms from SIGTERM to exit`);
      await Promise.all(followers.map((f) => f.done));
      const log = logLines(svc!);
      const stopped = log.find((l) => l.msg === "stopped");
      expect(stopped).toBeDefined();
      // The service's own stop, from the signal's handler to `stopped`, is what it controls.
      // Signal to exit also includes the time a busy event loop takes to run the handler,
      // which on a machine loaded by other work was seen at up to ~5 s: bounded loosely.
      expect(Number(stopped!.took_ms), JSON.stringify(stopped)).toBeLessThan(2_000);
      expect(elapsed, `signal to exit; the service's own stop: ${JSON.stringify(stopped)}`).toBeLessThan(10_000);
      expect(log.some((l) => String(l.msg).startsWith("waiting for"))).toBe(false);

      // Each follower got a final word with the offset it had received up to.
      for (const f of followers) {
        expect(f.problems).toEqual([]);
        expect(f.end, `${f.kind} ${f.id} ended early`).toBeNull();
        if (f.kind === "ndjson") {
          expect(f.final.error).toMatchObject({ code: "unavailable", resume_offset: f.offset });
          expect(f.final.error.message).toContain("stopping");
        } else if (f.kind === "sse") {
          expect(f.final).toMatchObject({ event: "stopping", id: String(f.offset), retry: "2000" });
          expect(f.final.data.error).toMatchObject({ code: "unavailable", resume_offset: f.offset });
        } else {
          expect(f.final).toMatchObject({ code: 14, resume: String(f.offset) });
          expect(f.final.details).toContain("stopping");
        }
      }
    } finally {
      for (const f of followers) f.close();
      grpcClient.close();
    }

    // The next start re-attaches; every follower resumes from its offset.
    svc = await spawnService(env(), port);
    const grpc2 = new GrpcClient(svc.url, TOKEN);
    try {
      const resumed = followers.map((f) => ({ before: f, after: follow(f.kind, svc!.url, f.id, f.offset, grpc2) }));
      fs.writeFileSync(finish, "");
      await Promise.all(resumed.map((r) => r.after.done));
      for (const { before, after } of resumed) {
        const k = ids.indexOf(before.id);
        expect(after.problems).toEqual([]);
        const stdout = before.stdout + after.stdout;
        const n = stdout.split("\n").length - 1;
        expect(n).toBeGreaterThanOrEqual(3);
        expect(stdout, `${before.kind} ${before.id}`).toBe(lines(k, n, "out"));
        expect(before.stderr + after.stderr).toBe(lines(k, n, "err"));
        expect(after.end, `${before.kind} ${before.id} end`).not.toBeNull();
        if (before.kind !== "grpc") {
          expect(after.end).toMatchObject({ status: "completed", exit_code: k % 7 });
        } else {
          expect(after.end.exit_code).toBe(k % 7);
        }
      }
      for (const [k, id] of ids.entries()) {
        const c = (await rest(svc.url, "GET", `/v1/commands/${id}`)).body.data;
        expect(c.status).toBe("completed");
        expect(c.exit_code).toBe(k % 7);
        // What the followers saw is the whole output.
        const seen = resumed.find((r) => r.before.id === id)!;
        expect(c.stdout).toBe(seen.before.stdout + seen.after.stdout);
        expect(c.stderr).toBe(seen.before.stderr + seen.after.stderr);
      }
    } finally {
      grpc2.close();
    }
  }, 240_000);

  it("a command with a waiting caller keeps its grace: the log says what is waited for, /healthz answers 503, followers end at once", async () => {
    const finish = path.join(os.tmpdir(), `fleetrun-stop-${unique()}`);
    const callerStarted = `${finish}.started`;
    const callerFinish = `${finish}.caller`;
    finishFiles.push(finish, callerFinish, callerStarted);
    const loop = (prefix: string) => `i=0; while [ ! -e ${finish} ]; do i=$((i+1)); echo ${prefix}$i; sleep 0.5; done`;
    const detached = await rest(svc!.url, "POST", "/v1/commands/async", { machine_id: machines[1], command: loop("d") });
    const detachedId = detached.body.data.id as string;
    const grpcClient = new GrpcClient(svc!.url, TOKEN);
    // ExecuteAsync: its stream is a follower too.
    const asyncEvents: CommandEvent[] = [];
    let asyncError: grpc.ServiceError | null = null;
    const asyncCall = grpcClient.stream(CommandService.method.executeAsync, { machineId: machines[3], command: loop("a") });
    asyncCall.on("data", (e: CommandEvent) => asyncEvents.push(e));
    const asyncDone = new Promise<void>((resolve) => {
      asyncCall.on("error", (err: grpc.ServiceError) => {
        asyncError = err;
        resolve();
      });
      asyncCall.on("end", () => resolve());
    });
    const follower = follow("ndjson", svc!.url, detachedId, 0);
    const call = rest(svc!.url, "POST", "/v1/commands", {
      machine_id: machines[0],
      command: `touch ${callerStarted}; while [ ! -e ${callerFinish} ]; do sleep 0.1; done; echo finished`,
    });
    try {
      await eventually(() => fs.existsSync(callerStarted), 30_000, "the command with a caller to run");
      await eventually(() => follower.offset > 0 && asyncEvents.some((e) => e.event.case === "output"), 30_000, "followers to receive output");
      const t0 = performance.now();
      svc!.child.kill("SIGTERM");

      // Followers end at once, while the process still waits for the caller's command.
      await follower.done;
      await asyncDone;
      expect(performance.now() - t0).toBeLessThan(2_000);
      expect(svc!.child.exitCode).toBeNull();
      expect(follower.final.error).toMatchObject({ code: "unavailable", resume_offset: follower.offset });
      const asyncOffset = asyncEvents.reduce((n, e) => (e.event.case === "output" ? Number(e.event.value.offset) + e.event.value.data.length : n), 0);
      expect(asyncError!.code).toBe(14);
      expect(asyncError!.metadata.get("fleetrun-resume-offset")).toEqual([String(asyncOffset)]);

      const waiting = await eventually(() => logLines(svc!).find((l) => String(l.msg).startsWith("waiting for")), 5_000, "the waiting log line");
      expect(waiting.msg).toBe("waiting for 1 command with a caller, up to 30 s; signal again to stop now");
      // The port answers meanwhile: not healthy, and no new commands.
      const health = await fetch(`${svc!.url}/healthz`);
      expect(health.status).toBe(503);
      expect(await health.json()).toEqual({ status: "stopping" });
      const refused = await rest(svc!.url, "POST", "/v1/commands/async", { machine_id: machines[2], command: "true" });
      expect(refused.status).toBe(503);
      expect(refused.body.error.code).toBe("unavailable");
      expect(svc!.child.exitCode).toBeNull();

      // The caller's command ends by itself within the grace: its caller gets the result.
      fs.writeFileSync(callerFinish, "");
      const res = await call;
      expect(res.status).toBe(200);
      expect(res.body.data).toMatchObject({ status: "completed", exit_code: 0, stdout: "finished\n" });
      expect(await svc!.exited).toBe(0);
      expect(logLines(svc!).some((l) => l.msg === "stopped")).toBe(true);
    } finally {
      follower.close();
      grpcClient.close();
    }

    // The detached commands were left running and are re-attached.
    svc = await spawnService(env(), port);
    fs.writeFileSync(finish, "");
    const startedId = asyncEvents[0]!.event.case === "started" ? asyncEvents[0]!.event.value.id : "";
    for (const [id, prefix] of [[detachedId, "d"], [startedId, "a"]] as const) {
      const c = await eventually(async () => {
        const d = (await rest(svc!.url, "GET", `/v1/commands/${id}`)).body.data;
        return d.status === "completed" ? d : null;
      }, 30_000, `${id} to complete`);
      const n = c.stdout.split("\n").length - 1;
      expect(n).toBeGreaterThan(1);
      expect(c.stdout).toBe(Array.from({ length: n }, (_, i) => `${prefix}${i + 1}\n`).join(""));
    }
  }, 120_000);

  it("a second signal stops at once: the caller's command is cancelled, detached ones are left to re-attach", async () => {
    const finish = path.join(os.tmpdir(), `fleetrun-stop-${unique()}`);
    finishFiles.push(finish);
    const detached = await rest(svc!.url, "POST", "/v1/commands/async", {
      machine_id: machines[2],
      command: `while [ ! -e ${finish} ]; do sleep 0.2; done; echo back; exit 4`,
    });
    const mark = `600.${unique()}`;
    const call = rest(svc!.url, "POST", "/v1/commands", { machine_id: machines[4], command: `sleep ${mark}` }).catch(() => null);
    await eventually(() => processesWith(mark).length > 0, 30_000, "the command with a caller to run");
    svc!.child.kill("SIGTERM");
    await eventually(() => logLines(svc!).some((l) => String(l.msg).startsWith("waiting for 1 command")), 5_000, "the waiting log line");
    const t0 = performance.now();
    svc!.child.kill("SIGINT");
    expect(await svc!.exited).toBe(0);
    const elapsed = performance.now() - t0;
    await call;
    const log = logLines(svc!);
    const now = log.find((l) => String(l.msg).startsWith("stopping now"));
    const stopped = log.find((l) => l.msg === "stopped");
    expect(now).toBeDefined();
    expect(stopped).toBeDefined();
    // The service's own part, from handling the second signal to `stopped` (its log
    // times), is what it controls; signal to exit also includes the time a busy event
    // loop takes to run the handler (seen at ~3 s with the rest of the suite beside it).
    expect(Number(stopped!.time) - Number(now!.time), JSON.stringify({ now, stopped })).toBeLessThan(2_000);
    expect(elapsed).toBeLessThan(10_000);
    await eventually(() => processesWith(mark).length === 0, 10_000, "the caller's command to be killed");

    svc = await spawnService(env(), port);
    fs.writeFileSync(finish, "");
    const hist = await rest(svc.url, "GET", `/v1/machines/${machines[4]}/commands?limit=5`);
    const item = hist.body.data.find((c: any) => c.command === `sleep ${mark}`);
    // Killed by the stop; `lost` only if its end could not be seen within the second.
    expect(["cancelled", "lost"]).toContain(item.status);
    const d = await eventually(async () => {
      const c = (await rest(svc!.url, "GET", `/v1/commands/${detached.body.data.id}`)).body.data;
      return c.status === "completed" ? c : null;
    }, 30_000, "the detached command to complete");
    expect(d).toMatchObject({ exit_code: 4, stdout: "back\n" });
  }, 120_000);
});
