/**
 * Admission control against the real service (REST over HTTP/1.1, grpc-js
 * over h2c) and real OpenSSH: at a configured limit a start is refused at
 * once with 429 + Retry-After / RESOURCE_EXHAUSTED + retry-after, is never
 * stored and never runs; accepted ones complete; once they end, starts are
 * accepted again. A start whose SSH handshake would wait in a full queue is
 * refused, not queued.
 */
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { status as GrpcStatus, type ServiceError } from "@grpc/grpc-js";
import { CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { GrpcClient, eventually, processesWith, registerMachine, startService, type RestResponse, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");

/** A world-writable directory for marker files the commands write (targets run on this host). */
function markerDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-admission-"));
  fs.chmodSync(dir, 0o777);
  return dir;
}

/** Runs `fn`, returning its result and how long it took. */
async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, performance.now() - t0];
}

function expect429(r: RestResponse, setting: string, retryAfter: string, headers: Headers | undefined): void {
  expect(r.status, r.text).toBe(429);
  expect(r.body.error.code).toBe("resource_exhausted");
  expect(r.body.error.message).toContain(setting);
  if (headers) expect(headers.get("retry-after")).toBe(retryAfter);
}

/** REST call that also returns the response headers. */
async function restWithHeaders(svc: TestService, method: string, urlPath: string, body?: unknown): Promise<RestResponse & { headers: Headers }> {
  const res = await fetch(svc.url + urlPath, {
    method,
    headers: { authorization: `Bearer ${svc.token}`, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let parsed: any = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = null;
  }
  return { status: res.status, body: parsed, text, headers: res.headers };
}

async function grpcRefusal(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (e) {
    return e as ServiceError;
  }
  throw new Error("the call was accepted");
}

async function historyCommands(svc: TestService, machineId: string): Promise<string[]> {
  const r = await svc.rest("GET", `/v1/machines/${machineId}/commands?limit=1000`);
  expect(r.status).toBe(200);
  return (r.body.data as { command: string }[]).map((c) => c.command);
}

function metric(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`) && l.includes("} "));
  return line === undefined ? Number.NaN : Number(line.slice(line.lastIndexOf(" ") + 1));
}

describe("commands and followers at their limits", () => {
  let svc: TestService;
  const machines: string[] = [];
  let dir: string;

  beforeAll(async () => {
    svc = await startService({ db: "sqlite", env: { FLEETRUN_MAX_ACTIVE_COMMANDS: "3", FLEETRUN_MAX_FOLLOWERS: "1" } });
    for (let i = 0; i < 4; i++) machines.push(await registerMachine(svc, fleet, { index: i }));
    dir = markerDir();
  }, 60_000);
  afterAll(async () => {
    if (dir) {
      // Even after a failure, nothing is left waiting on the targets.
      for (const f of ["release", "gate"]) fs.writeFileSync(path.join(dir, f), "");
      await eventually(() => processesWith(dir).length === 0, 10_000, "waiting commands to end");
    }
    await svc?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A command that waits for `release` in the marker dir, then leaves `name` there. */
  const waiting = (name: string) => `while [ ! -e ${dir}/release ]; do sleep 0.1; done; touch ${dir}/${name}`;

  /** Every place free again (a failed test before must not fail the next). */
  const idle = async () =>
    eventually(async () => metric(await (await fetch(svc.url + "/metrics")).text(), "fleetrun_active_commands") === 0, 20_000, "no active commands");

  it("refuses starts beyond the active commands limit at once, never stores or runs them, and accepts again once they ended", async () => {
    try {
      await refusesBeyondActiveLimit();
    } finally {
      // Whatever failed, the waiting commands end (the next tests need their places).
      fs.writeFileSync(path.join(dir, "release"), "");
    }
  }, 60_000);

  const refusesBeyondActiveLimit = async () => {
    const accepted: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await svc.rest("POST", "/v1/commands/async", { machine_id: machines[i], command: waiting(`ok-${i}`) });
      expect(r.status, r.text).toBe(202);
      accepted.push(r.body.data.id);
    }

    // REST: async start, sync execute, both batch forms.
    const [async4, ms1] = await timed(() => restWithHeaders(svc, "POST", "/v1/commands/async", { machine_id: machines[3], command: `touch ${dir}/refused-async` }));
    expect429(async4, "FLEETRUN_MAX_ACTIVE_COMMANDS", "5", async4.headers);
    expect(ms1).toBeLessThan(1_000);
    const [sync4, ms2] = await timed(() => restWithHeaders(svc, "POST", "/v1/commands", { machine_id: machines[3], command: `touch ${dir}/refused-sync` }));
    expect429(sync4, "FLEETRUN_MAX_ACTIVE_COMMANDS", "5", sync4.headers);
    expect(ms2).toBeLessThan(1_000);
    const batch = await restWithHeaders(svc, "POST", "/v1/commands/batch", { machine_ids: [machines[3]], command: `touch ${dir}/refused-batch` });
    expect429(batch, "FLEETRUN_MAX_ACTIVE_COMMANDS", "5", batch.headers);
    const started = await restWithHeaders(svc, "POST", "/v1/batches", { machine_ids: [machines[3]], command: `touch ${dir}/refused-startbatch` });
    expect429(started, "FLEETRUN_MAX_ACTIVE_COMMANDS", "5", started.headers);

    // gRPC (grpc-js): RESOURCE_EXHAUSTED with retry-after.
    const client = new GrpcClient(svc.url, svc.token);
    try {
      // The HTTP/2 connection first: the clock below is the service's answer alone.
      await client.unary(CommandService.method.getCommand, { id: accepted[0]! });
      const t0 = performance.now();
      const err = await grpcRefusal(client.unary(CommandService.method.startCommand, { machineId: machines[3], command: `touch ${dir}/refused-grpc` }));
      expect(performance.now() - t0).toBeLessThan(1_000);
      expect(err.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
      expect(err.details).toContain("FLEETRUN_MAX_ACTIVE_COMMANDS");
      expect(err.metadata.get("retry-after")).toEqual(["5"]);
      const exec = await grpcRefusal(client.unary(CommandService.method.execute, { machineId: machines[3], command: `touch ${dir}/refused-grpc-exec` }));
      expect(exec.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
    } finally {
      client.close();
    }

    const metrics = await (await fetch(svc.url + "/metrics")).text();
    expect(metric(metrics, "fleetrun_active_commands")).toBe(3);
    expect(metrics).toMatch(/fleetrun_admission_refused_total\{limit="active_commands"\} ([6-9]|\d\d)/);

    fs.writeFileSync(path.join(dir, "release"), "");
    for (const id of accepted) {
      await eventually(async () => (await svc.rest("GET", `/v1/commands/${id}`)).body.data.status === "completed", 20_000, `command ${id} to complete`);
    }
    for (let i = 0; i < 3; i++) expect(fs.existsSync(path.join(dir, `ok-${i}`))).toBe(true);

    // Nothing refused ran or was stored.
    expect(fs.readdirSync(dir).filter((f) => f.startsWith("refused"))).toEqual([]);
    expect(await historyCommands(svc, machines[3]!)).toEqual([]);
    expect(await svc.stores.commands.listActive()).toEqual([]);

    // Once they ended, starts are accepted again.
    await eventually(async () => metric(await (await fetch(svc.url + "/metrics")).text(), "fleetrun_active_commands") === 0, 5_000, "places to be free");
    const again = await svc.rest("POST", "/v1/commands", { machine_id: machines[3], command: "echo again" });
    expect(again.status, again.text).toBe(200);
    expect(again.body.data.stdout).toBe("again\n");
  };

  it("runs a batch whose max_concurrency exceeds the limit at most the limit at a time, every item to completion", async () => {
    await idle();
    const mark = `${dir}/batch-${Date.now()}`;
    fs.mkdirSync(mark);
    fs.chmodSync(mark, 0o777);
    // Each item records the concurrent items it saw; the limit is 3.
    const command = `touch ${mark}/$$; sleep 1; ls ${mark} | wc -l; sleep 0.2; rm ${mark}/$$`;
    const r = await svc.rest("POST", "/v1/commands/batch", { machine_ids: machines, command, max_concurrency: 4 });
    expect(r.status, r.text).toBe(200);
    expect(r.body.meta).toMatchObject({ succeeded: 4, failed: 0, skipped: 0 });
    const seen = Object.values(r.body.data as Record<string, { stdout: string }>).map((c) => Number(c.stdout.trim()));
    expect(Math.max(...seen)).toBe(3);
  }, 60_000);

  it("refuses a second follower with 429 / RESOURCE_EXHAUSTED, and ExecuteAsync without starting anything", async () => {
    const gate = `${dir}/gate`;
    await idle();
    const run = await svc.rest("POST", "/v1/commands/async", { machine_id: machines[0], command: `while [ ! -e ${gate} ]; do sleep 0.1; done; echo done` });
    expect(run.status).toBe(202);
    const id = run.body.data.id as string;

    // Its headers come with the first output: the request is pending meanwhile.
    const follower = fetch(`${svc.url}/v1/commands/${id}/stream`, { headers: { authorization: `Bearer ${svc.token}` } });
    await eventually(async () => metric(await (await fetch(svc.url + "/metrics")).text(), "fleetrun_stream_followers") === 1, 5_000, "the follower to count");

    const [second, ms] = await timed(() => restWithHeaders(svc, "GET", `/v1/commands/${id}/stream`));
    expect429(second, "FLEETRUN_MAX_FOLLOWERS", "5", second.headers);
    expect(ms).toBeLessThan(1_000);

    const client = new GrpcClient(svc.url, svc.token);
    try {
      await client.unary(CommandService.method.getCommand, { id });
      const watchErr = await new Promise<ServiceError>((resolve, reject) => {
        const s = client.stream(CommandService.method.watchCommand, { id });
        s.on("data", () => reject(new Error("a second follower got data")));
        s.on("error", (e: ServiceError) => resolve(e));
      });
      expect(watchErr.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
      expect(watchErr.metadata.get("retry-after")).toEqual(["5"]);

      const asyncErr = await new Promise<ServiceError>((resolve, reject) => {
        const s = client.stream(CommandService.method.executeAsync, { machineId: machines[1], command: `touch ${dir}/refused-follow` });
        s.on("data", () => reject(new Error("ExecuteAsync was accepted")));
        s.on("error", (e: ServiceError) => resolve(e));
      });
      expect(asyncErr.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
    } finally {
      client.close();
    }

    // The first follower still gets the end; then a new follower is admitted again.
    fs.writeFileSync(gate, "");
    const res = await follower;
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain('"end"');
    await eventually(async () => metric(await (await fetch(svc.url + "/metrics")).text(), "fleetrun_stream_followers") === 0, 5_000, "the follower to leave");
    const replay = await svc.rest("GET", `/v1/commands/${id}/stream`);
    expect(replay.status).toBe(200);
    expect(replay.text).toContain("done");
    expect(fs.existsSync(`${dir}/refused-follow`)).toBe(false);
    expect((await historyCommands(svc, machines[1]!)).some((c) => c.includes("refused-follow"))).toBe(false);
  }, 60_000);

  it("exposes the event loop lag histogram and the admission gauges", async () => {
    await eventually(async () => /fleetrun_event_loop_lag_seconds_count [1-9]/.test(await (await fetch(svc.url + "/metrics")).text()), 5_000, "lag samples");
    const text = await (await fetch(svc.url + "/metrics")).text();
    expect(text).toContain("# TYPE fleetrun_event_loop_lag_seconds histogram");
    for (const le of ["0.01", "0.05", "0.1"]) expect(text).toContain(`fleetrun_event_loop_lag_seconds_bucket{le="${le}"}`);
    for (const g of ["fleetrun_active_commands", "fleetrun_pending_starts", "fleetrun_ssh_handshakes_queued", "fleetrun_ssh_handshakes_active", "fleetrun_stream_followers"]) {
      expect(Number.isFinite(metric(text, g)), g).toBe(true);
    }
  });
});

describe("SSH handshake queue and pending starts at their limits", () => {
  let svc: TestService;
  let silent: net.Server;
  const sockets = new Set<net.Socket>();
  let silentPort = 0;
  let dir: string;

  beforeAll(async () => {
    // A peer that accepts TCP and never says a word: each handshake to it holds its slot.
    silent = net.createServer((s) => {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => sockets.delete(s));
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    silentPort = (silent.address() as net.AddressInfo).port;
    svc = await startService({
      db: "sqlite",
      env: {
        FLEETRUN_SSH_HANDSHAKES_PER_HOST: "1",
        FLEETRUN_SSH_HANDSHAKE_QUEUE: "1",
        FLEETRUN_MAX_PENDING_STARTS: "3",
        FLEETRUN_SSH_CONNECT_TIMEOUT_MS: "30000",
      },
    });
    dir = markerDir();
  }, 60_000);
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    silent?.close();
    await svc?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const silentMachine = async (name: string): Promise<string> => {
    const r = await svc.rest("POST", "/v1/machines", {
      name,
      host: "127.0.0.1",
      port: silentPort,
      username: "root",
      private_key: fleet.clientKey.privateKey,
    });
    expect(r.status, r.text).toBe(201);
    return r.body.data.id as string;
  };

  it("refuses a start whose handshake would wait beyond the queue, then one beyond the pending starts", async () => {
    const [a, b, c] = [await silentMachine("silent-a"), await silentMachine("silent-b"), await silentMachine("silent-c")];
    const metrics = async () => (await fetch(svc.url + "/metrics")).text();

    // a: its handshake holds the host's only slot.
    expect((await svc.rest("POST", "/v1/commands/async", { machine_id: a, command: `touch ${dir}/a1` })).status).toBe(202);
    await eventually(async () => metric(await metrics(), "fleetrun_ssh_handshakes_active") === 1, 10_000, "a's handshake");
    // b: waits in the queue (its one place).
    expect((await svc.rest("POST", "/v1/commands/async", { machine_id: b, command: `touch ${dir}/b1` })).status).toBe(202);
    await eventually(async () => metric(await metrics(), "fleetrun_ssh_handshakes_queued") === 1, 10_000, "b's handshake to queue");

    // c: would wait beyond the queue: refused at once, REST and gRPC.
    const [rc, ms] = await timed(() => restWithHeaders(svc, "POST", "/v1/commands/async", { machine_id: c, command: `touch ${dir}/refused-c` }));
    expect429(rc, "FLEETRUN_SSH_HANDSHAKE_QUEUE", "1", rc.headers);
    expect(ms).toBeLessThan(1_000);
    const client = new GrpcClient(svc.url, svc.token);
    try {
      const err = await grpcRefusal(client.unary(CommandService.method.execute, { machineId: c, command: `touch ${dir}/refused-c-grpc` }));
      expect(err.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
      expect(err.details).toContain("FLEETRUN_SSH_HANDSHAKE_QUEUE");
      expect(err.metadata.get("retry-after")).toEqual(["1"]);
    } finally {
      client.close();
    }
    expect(metric(await metrics(), "fleetrun_ssh_handshakes_queued")).toBe(1);

    // Another start on a: it rides a's connection being opened (no new handshake): accepted, pending.
    expect((await svc.rest("POST", "/v1/commands/async", { machine_id: a, command: `touch ${dir}/a2` })).status).toBe(202);
    expect(metric(await metrics(), "fleetrun_pending_starts")).toBe(3);
    // A fourth pending start is one too many, wherever it would run.
    const rp = await restWithHeaders(svc, "POST", "/v1/commands", { machine_id: a, command: `touch ${dir}/refused-pending` });
    expect429(rp, "FLEETRUN_MAX_PENDING_STARTS", "1", rp.headers);
    expect(await metrics()).toMatch(/fleetrun_admission_refused_total\{limit="ssh_handshake_queue"\} 2/);
    expect(await metrics()).toMatch(/fleetrun_admission_refused_total\{limit="pending_starts"\} 1/);

    expect(await historyCommands(svc, c)).toEqual([]);
    expect((await historyCommands(svc, a)).filter((x) => x.includes("refused"))).toEqual([]);

    // The silent peer goes away: the accepted starts fail as unreachable, places come back.
    silent.close();
    for (const s of sockets) s.destroy();
    await eventually(async () => metric(await metrics(), "fleetrun_pending_starts") === 0, 20_000, "pending starts to drain");
    expect(fs.readdirSync(dir)).toEqual([]);
    // Accepted again, now on a reachable machine.
    const real = await registerMachine(svc, fleet, { index: 5 });
    const ok = await svc.rest("POST", "/v1/commands", { machine_id: real, command: "echo ok" });
    expect(ok.status, ok.text).toBe(200);
    expect(ok.body.data.stdout).toBe("ok\n");
  }, 90_000);
});
