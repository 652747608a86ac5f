/**
 * Batches end to end against the real sshd fleet, on SQLite and PostgreSQL:
 * the unary REST and gRPC Batch, BatchStream over grpc-js, and the async
 * StartBatch / GetBatch / CancelBatch. Every per-machine run is an ordinary
 * command (history, follow, cancel).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { CommandService, CommandStatus, type BatchEvent } from "../../src/gen/fleetrun/v1/command_pb.js";
import { postgresSkipReason } from "../fixtures/postgres.ts";
import { GrpcClient, eventually, processesWith, registerMachine, startService, type DbKind, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");
const pgSkip = await postgresSkipReason();
if (process.env.CI === "true" && pgSkip) throw new Error(`PostgreSQL is required in CI: ${pgSkip}`);

const dbs: DbKind[] = pgSkip ? ["sqlite"] : ["sqlite", "postgres"];

function unique(): string {
  return `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
}

/** A shell test that is true on the fleet address `addr` (sshd puts the server address in SSH_CONNECTION). */
function onAddress(addr: string): string {
  return `case " $SSH_CONNECTION " in *" ${addr} "*) true;; *) false;; esac`;
}

/** The largest number of [start, end] intervals that overlap at one instant. */
function maxOverlap(intervals: [bigint, bigint][]): number {
  const events: [bigint, number][] = [];
  for (const [s, e] of intervals) events.push([s, 1], [e, -1]);
  // At equal times an end comes before a start: touching is not overlapping.
  events.sort((a, b) => (a[0] === b[0] ? a[1] - b[1] : a[0] < b[0] ? -1 : 1));
  let now = 0;
  let max = 0;
  for (const [, d] of events) {
    now += d;
    max = Math.max(max, now);
  }
  return max;
}

/** Reads the `s <ns>` / `e <ns>` lines the commands appended, as intervals per writer. */
function intervalsFrom(file: string): [bigint, bigint][] {
  const starts = new Map<string, bigint>();
  const out: [bigint, bigint][] = [];
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    const [kind, who, ns] = line.split(" ");
    if (!kind || !who || !ns) continue;
    if (kind === "s") starts.set(who, BigInt(ns));
    else out.push([starts.get(who)!, BigInt(ns)]);
  }
  return out;
}

const ms = (t: string) => Date.parse(t);

describe.each(dbs)("Batch on %s", (db) => {
  let svc: TestService;
  /** 20 fleet machines, root login, fleet.addresses[0..19]. */
  let machines: string[] = [];
  const group = `g${unique()}`;

  beforeAll(async () => {
    svc = await startService({ db });
    machines = [];
    for (let i = 0; i < 20; i++) {
      machines.push(await registerMachine(svc, fleet, { index: i, labels: { group, parity: i % 2 === 0 ? "even" : "odd" } }));
    }
  });
  afterAll(async () => {
    await svc?.close();
  });

  const batch = (body: Record<string, unknown>) => svc.rest("POST", "/v1/commands/batch", body);

  it("runs on 20 machines plus an unreachable and a wrong-key one, each result in the seed's shape", async () => {
    const refused = await registerMachine(svc, fleet, { host: fleet.refusedAddress });
    const wrongKey = await registerMachine(svc, fleet, { index: 20, fingerprint: "SHA256:" + "A".repeat(43) });
    const exits3 = fleet.addresses[1]!;
    const slow = fleet.addresses[2]!;
    const timeout = 10_000;
    const command = `if ${onAddress(exits3)}; then echo three; exit 3; fi; if ${onAddress(slow)}; then echo slow; exec sleep 30; fi; echo "ok $(id -un)"`;
    const t0 = Date.now();
    const r = await batch({ machine_ids: [...machines, refused, wrongKey], command, timeout });
    expect(r.status).toBe(200);
    expect(Object.keys(r.body).sort()).toEqual(["data", "meta"]);
    const data = r.body.data as Record<string, any>;
    expect(Object.keys(data).sort()).toEqual([...machines, refused, wrongKey].sort());
    // Counters name what they count: the exit-3 machine and the two that never started
    // are `failed`, the slow one `timed_out`; `errors` is what max_errors counts.
    expect(r.body.meta).toEqual({
      batch_id: expect.stringMatching(/^batch_/),
      succeeded: 18,
      failed: 3,
      skipped: 0,
      timed_out: 1,
      cancelled: 0,
      lost: 0,
      errors: 4,
    });
    const batchId = r.body.meta.batch_id;
    for (const [machineId, c] of Object.entries(data)) {
      expect(c.id).toMatch(/^cmd_/);
      expect(c.machine_id).toBe(machineId);
      expect(c.batch_id).toBe(batchId);
      expect(c.command).toBe(command);
      for (const f of ["status", "exit_code", "stdout", "stderr", "error", "started_at", "finished_at", "duration"]) expect(c).toHaveProperty(f);
    }
    const byIndex = (i: number) => data[machines[i]!];
    for (let i = 0; i < 20; i++) {
      if (i === 1 || i === 2) continue;
      expect(byIndex(i)).toMatchObject({ status: "completed", exit_code: 0, stdout: "ok root\n", error: null });
    }
    expect(byIndex(1)).toMatchObject({ status: "completed", exit_code: 3, stdout: "three\n" });
    expect(byIndex(2)).toMatchObject({ status: "timed_out", exit_code: null, stdout: "slow\n" });
    expect(data[refused]).toMatchObject({ status: "failed", exit_code: null, error: { code: "unreachable" } });
    expect(data[wrongKey]).toMatchObject({ status: "failed", exit_code: null, error: { code: "host_key_mismatch" } });

    // Nobody waited for the slow one: every other machine ended before its timeout fired.
    const slowEnd = ms(byIndex(2).finished_at);
    expect(slowEnd - ms(byIndex(2).started_at)).toBeGreaterThanOrEqual(timeout);
    for (const [machineId, c] of Object.entries(data)) {
      if (machineId === machines[2]) continue;
      expect(ms(c.finished_at), `${machineId} ${c.status} ${c.started_at}`).toBeLessThan(ms(byIndex(2).started_at) + timeout);
    }
    expect(Date.now() - t0).toBeLessThan(timeout + 15_000);
  }, 60_000);

  it("a label selector picks exactly the machines that carry all the labels", async () => {
    const r = await batch({ selector: { labels: { group, parity: "odd" } }, command: "echo hi" });
    expect(r.status).toBe(200);
    const odd = machines.filter((_, i) => i % 2 === 1).sort();
    expect(Object.keys(r.body.data).sort()).toEqual(odd);
    expect(r.body.meta).toMatchObject({ succeeded: 10, failed: 0, skipped: 0 });
    const none = await batch({ selector: { labels: { group, parity: "none" } }, command: "echo hi" });
    expect(none.status).toBe(400);
    expect(none.body.error.field).toBe("selector");
  });

  it("unknown machine ids reject the whole batch with 404 naming them, and nothing runs", async () => {
    const fresh = await registerMachine(svc, fleet, { index: 21 });
    const marker = path.join(os.tmpdir(), `fleetrun-batch-nothing-${unique()}`);
    const r = await batch({ machine_ids: [fresh, "mach_nope1", machines[0], "mach_nope2"], command: `touch ${marker}` });
    expect(r.status).toBe(404);
    expect(r.body.error.code).toBe("not_found");
    expect(r.body.error.message).toContain("mach_nope1");
    expect(r.body.error.message).toContain("mach_nope2");
    expect(r.body.error.message).not.toContain(fresh);
    expect(r.body.error.field).toBe("machine_ids");
    const hist = await svc.rest("GET", `/v1/machines/${fresh}/commands`);
    expect(hist.status).toBe(200);
    expect(hist.body.meta.total).toBe(0);
    expect(hist.body.data).toEqual([]);
    expect(fs.existsSync(marker)).toBe(false);
  });

  for (const [limit, expected, count] of [
    [3, 3, 9],
    ["25%", 2, 8],
  ] as const) {
    it(`max_concurrency ${JSON.stringify(limit)} bounds how many run at once, and is reached`, async () => {
      const file = path.join(os.tmpdir(), `fleetrun-overlap-${unique()}`);
      fs.writeFileSync(file, "");
      try {
        const command = `w=$(date +%s%N)$$; echo "s $w $(date +%s%N)" >> ${file}; sleep 0.8; echo "e $w $(date +%s%N)" >> ${file}`;
        const r = await batch({ machine_ids: machines.slice(0, count), command, max_concurrency: limit });
        expect(r.status).toBe(200);
        expect(r.body.meta).toMatchObject({ succeeded: count, failed: 0, skipped: 0 });
        const intervals = intervalsFrom(file);
        expect(intervals).toHaveLength(count);
        expect(maxOverlap(intervals)).toBe(expected);
      } finally {
        fs.rmSync(file, { force: true });
      }
    }, 60_000);
  }

  it("max_errors: once more than max_errors failed, the rest are skipped and still reported", async () => {
    for (const maxErrors of [1, "20%"]) {
      const targets = machines.slice(0, 6);
      const r = await batch({ machine_ids: targets, command: "echo failing; exit 1", max_concurrency: 1, max_errors: maxErrors });
      expect(r.status).toBe(200);
      expect(r.body.meta).toMatchObject({ succeeded: 0, failed: 2, skipped: 4, errors: 2 });
      expect(Object.keys(r.body.data).sort()).toEqual([...targets].sort());
      for (const id of targets.slice(0, 2)) expect(r.body.data[id]).toMatchObject({ status: "completed", exit_code: 1, stdout: "failing\n" });
      for (const id of targets.slice(2)) {
        expect(r.body.data[id]).toMatchObject({ status: "skipped", exit_code: null, started_at: null, stdout: "", error: { code: "error_budget_exhausted" } });
        expect(r.body.data[id].finished_at).not.toBeNull();
      }
    }
  });

  it("caps each machine's output in the unary response; the full output stays at GET /v1/commands/{id}", async () => {
    const capped = await startService({ db, env: { FLEETRUN_BATCH_OUTPUT_CAP_BYTES: "1024" } });
    try {
      const ids = [await registerMachine(capped, fleet, { index: 3 }), await registerMachine(capped, fleet, { index: 4 })];
      const r = await capped.rest("POST", "/v1/commands/batch", { machine_ids: ids, command: "seq 1 2000; echo small >&2" });
      expect(r.status).toBe(200);
      const full = Array.from({ length: 2000 }, (_, i) => `${i + 1}\n`).join("");
      for (const id of ids) {
        const c = r.body.data[id];
        expect(c.stdout_truncated).toBe(true);
        expect(c.stdout.length).toBe(1024);
        expect(full.endsWith(c.stdout)).toBe(true);
        expect(c.stdout_bytes).toBe(full.length);
        expect(c.stderr).toBe("small\n");
        expect(c.stderr_truncated).toBe(false);
        const g = await capped.rest("GET", `/v1/commands/${c.id}`);
        expect(g.body.data.stdout).toBe(full);
        expect(g.body.data.stdout_truncated).toBe(false);
      }
    } finally {
      await capped.close();
    }
  });

  it("BatchStream over grpc-js yields each result as it ends, then the summary", async () => {
    const gate = path.join(os.tmpdir(), `fleetrun-gate-${unique()}`);
    const slowAddr = fleet.addresses[6]!;
    const client = new GrpcClient(svc.url, svc.token);
    try {
      const call = client.stream(CommandService.method.batchStream, {
        machineIds: [machines[5]!, machines[6]!, machines[7]!],
        command: `if ${onAddress(slowAddr)}; then while [ ! -e ${gate} ]; do sleep 0.05; done; echo slow; else echo fast; fi`,
      });
      const events: BatchEvent[] = [];
      let ended = false;
      call.on("data", (e: BatchEvent) => events.push(e));
      const done = new Promise<void>((resolve, reject) => {
        call.on("end", () => {
          ended = true;
          resolve();
        });
        call.on("error", reject);
      });
      // Both fast results arrive while the slow machine is still blocked on the gate.
      await eventually(() => events.length >= 2, 20_000, "the fast results");
      expect(fs.existsSync(gate)).toBe(false);
      expect(ended).toBe(false);
      const first = events.slice(0, 2).map((e) => (e.event.case === "result" ? e.event.value : null));
      expect(first.map((c) => c?.machineId).sort()).toEqual([machines[5], machines[7]].sort());
      for (const c of first) {
        expect(c?.status).toBe(CommandStatus.COMPLETED);
        expect(Buffer.from(c!.stdout).toString()).toBe("fast\n");
      }
      fs.writeFileSync(gate, "");
      await done;
      expect(events).toHaveLength(4);
      const third = events[2]!.event;
      expect(third.case).toBe("result");
      if (third.case === "result") {
        expect(third.value.machineId).toBe(machines[6]);
        expect(Buffer.from(third.value.stdout).toString()).toBe("slow\n");
      }
      const last = events[3]!.event;
      expect(last.case).toBe("summary");
      if (last.case === "summary") expect(last.value).toMatchObject({ batchId: first[0]!.batchId, succeeded: 3, failed: 0, skipped: 0 });
    } finally {
      client.close();
      fs.rmSync(gate, { force: true });
    }
  });

  it("a gRPC caller that hangs up on Batch cancels it: running commands end cancelled, the rest skipped", async () => {
    const mark = `403.${unique()}`;
    const targets = machines.slice(14, 17);
    const client = new GrpcClient(svc.url, svc.token);
    try {
      let call: { cancel(): void } | undefined;
      const p = client.unary(CommandService.method.batch, { machineIds: targets, command: `sleep ${mark}`, maxConcurrency: { kind: { case: "numberValue", value: 2 } } }, { onCall: (c) => (call = c) });
      await eventually(() => processesWith(mark).length === 2, 20_000, "two commands to run");
      call!.cancel();
      await expect(p).rejects.toMatchObject({ code: GrpcStatus.CANCELLED });
      await eventually(() => processesWith(mark).length === 0, 15_000, `no process with ${mark}`);
      const latest = await eventually(async () => {
        const items = await Promise.all(targets.map(async (m) => (await svc.rest("GET", `/v1/machines/${m}/commands?limit=1`)).body.data[0]));
        return items.every((i) => i.status !== "running" && i.status !== "queued") ? items : null;
      }, 15_000, "all ended");
      // A cancelled command is `cancelled`, never `completed` with the 143 of its SIGTERM.
      expect(latest.map((i) => `${i.status} ${i.exit_code}`)).toEqual(["cancelled null", "cancelled null", "skipped null"]);
      const batch = await eventually(async () => {
        const g = await svc.rest("GET", `/v1/batches/${latest[0].batch_id}`);
        return g.body.data.status === "cancelled" ? g.body.data : null;
      }, 10_000, "batch cancelled");
      expect(batch.machines[targets[2]!].error.code).toBe("batch_cancelled");
    } finally {
      client.close();
    }
  }, 60_000);

  it("StartBatch answers 202 at once; GetBatch shows progress; CancelBatch cancels the running and skips the rest", async () => {
    const mark = `401.${unique()}`;
    const targets = machines.slice(8, 12);
    const t0 = Date.now();
    const r = await svc.rest("POST", "/v1/batches", { machine_ids: targets, command: `sleep ${mark}`, max_concurrency: 2 });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(r.status).toBe(202);
    expect(r.body).toEqual({ data: { id: expect.stringMatching(/^batch_/), status: "running" } });
    const id = r.body.data.id;
    const progress = await eventually(
      async () => {
        const g = await svc.rest("GET", `/v1/batches/${id}`);
        return g.body.data.running === 2 && processesWith(mark).length >= 2 ? g.body.data : null;
      },
      20_000,
      "two running",
    );
    expect(progress).toMatchObject({ id, status: "running", total: 4, running: 2, pending: 2, succeeded: 0, failed: 0, skipped: 0, requested_by: "admin" });
    expect(Object.keys(progress.machines).sort()).toEqual([...targets].sort());
    const runningIds = targets.filter((m) => progress.machines[m].status === "running");
    expect(runningIds).toHaveLength(2);

    const del = await svc.rest("DELETE", `/v1/batches/${id}`);
    expect(del.status).toBe(200);
    expect(del.body).toEqual({ data: { cancelled: true } });
    const end = await eventually(
      async () => {
        const g = await svc.rest("GET", `/v1/batches/${id}`);
        return g.body.data.status !== "running" ? g.body.data : null;
      },
      20_000,
      "the batch to end",
    );
    expect(end.status).toBe("cancelled");
    expect(end.finished_at).not.toBeNull();
    for (const m of targets) {
      const c = end.machines[m];
      if (runningIds.includes(m)) expect(c.status).toBe("cancelled");
      else expect(c).toMatchObject({ status: "skipped", started_at: null, error: { code: "batch_cancelled" } });
    }
    expect(end).toMatchObject({ running: 0, pending: 0, skipped: 2 });
    await eventually(() => processesWith(mark).length === 0, 10_000, `no process with ${mark}`);
    const again = await svc.rest("DELETE", `/v1/batches/${id}`);
    expect(again.status).toBe(409);
    expect((await svc.rest("GET", "/v1/batches/batch_nope")).status).toBe(404);
  }, 60_000);

  it("each per-machine command is a normal command: in history with its batch_id, followable and cancellable", async () => {
    const gate = path.join(os.tmpdir(), `fleetrun-gate-${unique()}`);
    const mark = `402.${unique()}`;
    const [a, b] = [machines[12]!, machines[13]!];
    const r = await svc.rest("POST", "/v1/batches", {
      machine_ids: [a, b],
      // The marker names the waiting shell ($0), so its process is visible on the target.
      command: `echo before; sh -c 'while [ ! -e "$1" ]; do sleep 0.05; done' ${mark} ${gate}; echo after`,
    });
    expect(r.status).toBe(202);
    const batchId = r.body.data.id;
    const progress = await eventually(async () => {
      const g = await svc.rest("GET", `/v1/batches/${batchId}`);
      return g.body.data.running === 2 ? g.body.data : null;
    }, 20_000);
    const idA = progress.machines[a].id;
    const idB = progress.machines[b].id;

    for (const [m, id] of [
      [a, idA],
      [b, idB],
    ]) {
      const h = await svc.rest("GET", `/v1/machines/${m}/commands`);
      expect(h.body.data[0]).toMatchObject({ id, status: "running", batch_id: batchId, requested_by: "admin" });
    }

    // Follow A live: the stream has "before" while the command still waits.
    const res = await fetch(`${svc.url}/v1/commands/${idA}/stream`, { headers: { authorization: `Bearer ${svc.token}` } });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    let text = "";
    const dec = new TextDecoder();
    while (!text.includes("before")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
    }
    expect(text).toContain("before");

    // Cancel B on its own: it ends cancelled, A runs on.
    const del = await svc.rest("DELETE", `/v1/commands/${idB}`);
    expect(del.status).toBe(200);
    await eventually(async () => (await svc.rest("GET", `/v1/commands/${idB}`)).body.data.status === "cancelled", 15_000, "B cancelled");
    expect((await svc.rest("GET", `/v1/commands/${idA}`)).body.data.status).toBe("running");

    fs.writeFileSync(gate, "");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
    }
    const lines = text.trim().split("\n").map((l) => JSON.parse(l));
    const out = lines
      .filter((l) => l.data.output)
      .map((l) => l.data.output.data)
      .join("");
    expect(out).toBe("before\nafter\n");
    expect(lines.at(-1).data.end).toMatchObject({ id: idA, status: "completed", exit_code: 0, batch_id: batchId });

    const end = await eventually(async () => {
      const g = await svc.rest("GET", `/v1/batches/${batchId}`);
      return g.body.data.status === "completed" ? g.body.data : null;
    }, 15_000);
    expect(end).toMatchObject({ succeeded: 1, failed: 0, cancelled: 1, skipped: 0, errors: 1 });
    expect(end.machines[b].status).toBe("cancelled");
    fs.rmSync(gate, { force: true });
    await eventually(() => processesWith(mark).length === 0, 10_000, `no process with ${mark}`);
  }, 60_000);

  it("rejects bad input with 400 naming the field", async () => {
    const m = machines.slice(0, 2);
    const cases: [Record<string, unknown>, string][] = [
      [{ command: "true" }, "machine_ids"],
      [{ machine_ids: [], command: "true" }, "machine_ids"],
      [{ machine_ids: m, selector: { labels: { group } }, command: "true" }, "selector"],
      [{ machine_ids: m, command: "true", max_concurrency: "abc" }, "max_concurrency"],
      [{ machine_ids: m, command: "true", max_concurrency: -1 }, "max_concurrency"],
      [{ machine_ids: m, command: "true", max_concurrency: "150%" }, "max_concurrency"],
      [{ machine_ids: m, command: "true", max_concurrency: 1.5 }, "max_concurrency"],
      [{ machine_ids: m, command: "true", max_errors: "x" }, "max_errors"],
      [{ machine_ids: m, command: "" }, "command"],
      [{ machine_ids: m, command: "true", timeout: 0 }, "timeout"],
    ];
    for (const [body, field] of cases) {
      for (const p of ["/v1/commands/batch", "/v1/batches"]) {
        const r = await svc.rest("POST", p, body);
        expect(r.status, `${p} ${JSON.stringify(body)}`).toBe(400);
        expect(r.body.error.code).toBe("invalid_argument");
        expect(r.body.error.field, JSON.stringify(body)).toBe(field);
      }
    }
    // Nothing was recorded for the rejected batches.
    const h = await svc.rest("GET", `/v1/machines/${m[1]}/commands?limit=1000`);
    expect(h.body.data.filter((c: { command: string }) => c.command === "true")).toEqual([]);
  });

  it("a 200-machine batch over grpc-js fits the client's default 4 MiB message limit", async () => {
    const many: string[] = [];
    for (let i = 0; i < 200; i += 20) {
      const ids = await Promise.all(Array.from({ length: 20 }, (_, j) => registerMachine(svc, fleet, { index: (i + j) % fleet.addresses.length })));
      many.push(...ids);
    }
    const client = new GrpcClient(svc.url, svc.token);
    try {
      const t0 = Date.now();
      // About 30 KiB of stdout per machine: 6 MiB in all, more than grpc-js accepts in one message by default.
      const res = await client.unary(CommandService.method.batch, { machineIds: many, command: "head -c 30720 /dev/zero | tr '\\0' x; echo" });
      expect(Date.now() - t0).toBeLessThan(60_000);
      expect(res.meta).toMatchObject({ succeeded: 200, failed: 0, skipped: 0 });
      expect(Object.keys(res.data).sort()).toEqual([...many].sort());
      let total = 0;
      for (const c of Object.values(res.data)) {
        expect(c.status).toBe(CommandStatus.COMPLETED);
        expect(c.stdoutBytes).toBe(30721n);
        total += c.stdout.length;
        if (c.stdout.length < 30721) expect(c.stdoutTruncated).toBe(true);
        expect(Buffer.from(c.stdout).toString()).toMatch(/^x*\n$/);
      }
      expect(total).toBeLessThan(4 * 1024 * 1024);
      // The full output of any of them is one GetCommand away.
      const one = Object.values(res.data)[0]!;
      const full = await client.unary(CommandService.method.getCommand, { id: one.id });
      expect(full.stdout.length).toBe(30721);
    } finally {
      client.close();
    }
  }, 120_000);
});
