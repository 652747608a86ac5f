/**
 * The audit trail against the real service, the real sshd fleet, REST and a
 * real grpc-js client, on SQLite and PostgreSQL: what a call records, what it
 * never records, listing with filters and a cursor, admin only, and that an
 * edited, deleted or truncated record is found by VerifyAuditChain and by
 * `npm run verify-audit`, also after retention.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { openStores } from "../../src/db/index.ts";
import type { AuditLog } from "../../src/exec/audit-port.ts";
import { AuditService } from "../../src/gen/fleetrun/v1/audit_pb.js";
import { CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { principalKey } from "../../src/rpc/auth.ts";
import { auditServiceImpl } from "../../src/rpc/audit-service.ts";
import { postgresSkipReason } from "../fixtures/postgres.ts";
import { GrpcClient, ROOT, TOKEN, eventually, freePort, registerMachine, spawnService, startService, type DbKind, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");
const pgSkip = await postgresSkipReason();
if (process.env.CI === "true" && pgSkip) throw new Error(`PostgreSQL is required in CI: ${pgSkip}`);
const dbs: DbKind[] = pgSkip ? ["sqlite"] : ["sqlite", "postgres"];

interface AuditJson {
  seq: number;
  time: string;
  actor: string;
  action: string;
  outcome: string;
  machine_id: string | null;
  command_id: string | null;
  batch_id: string | null;
  client_address: string | null;
  detail: string | null;
  command: string | null;
  prev_hash: string;
  hash: string;
}

/** Raw SQL on the service's database, as someone with access to it would run it. */
async function rawSql(svc: TestService, sql: string, params: unknown[] = []): Promise<any[]> {
  const db = svc.database;
  if (db.kind === "sqlite") {
    const driver = "better-sqlite3";
    const { default: Database } = (await import(driver)) as { default: new (file: string) => any };
    const conn = new Database(db.file);
    try {
      const stmt = conn.prepare(sql);
      return stmt.reader ? stmt.all(...params) : (stmt.run(...params), []);
    } finally {
      conn.close();
    }
  }
  const name = "pg";
  const pg = (await import(name)) as { default: { Client: new (o: object) => any } };
  const client = new pg.default.Client({ connectionString: db.url, options: `-c search_path=${db.schema}` });
  await client.connect();
  try {
    return (await client.query(sql, params)).rows;
  } finally {
    await client.end();
  }
}

/** `npm run verify-audit` against the service's database: exit code and output. */
function verifyCli(svc: TestService, args: string[] = []): Promise<{ code: number; out: string }> {
  const db = svc.database;
  const env: Record<string, string> = { ...(process.env as Record<string, string>), FLEETRUN_DATA_DIR: svc.dataDir };
  delete env.DATABASE_URL;
  if (db.kind === "postgres") {
    env.DATABASE_URL = db.url;
    // node-postgres reads PGOPTIONS: the test's own schema.
    env.PGOPTIONS = `-c search_path=${db.schema}`;
  }
  return new Promise((resolve) => {
    execFile("npm", ["run", "--silent", "verify-audit", "--", ...args], { cwd: ROOT, env, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === "number" ? ((err as { code: number }).code) : -1;
      resolve({ code, out: stdout + stderr });
    });
  });
}

describe.each(dbs)("Audit trail on %s", (db) => {
  let svc: TestService;
  let audit: AuditLog;
  let machineId: string;
  const canary = `canary-${randomBytes(8).toString("hex")}`;

  beforeAll(async () => {
    svc = await startService({ db });
    audit = svc.stores.audit!;
    machineId = await registerMachine(svc, fleet, { name: `audit-${db}` });
  });
  afterAll(async () => {
    await svc?.close();
  });

  async function list(query = ""): Promise<{ data: AuditJson[]; meta: { limit: number; next_cursor: string | null } }> {
    await audit.drain();
    const r = await svc.rest("GET", `/v1/audit${query}`);
    expect(r.status, r.text).toBe(200);
    return r.body;
  }

  async function verifyRest(): Promise<any> {
    await audit.drain();
    const r = await svc.rest("GET", "/v1/audit/verify");
    expect(r.status, r.text).toBe(200);
    return r.body.data;
  }

  it("records an executed command over REST: who, what, which machine, command id, client address, outcome", async () => {
    const r = await svc.rest("POST", "/v1/commands", { machine_id: machineId, command: "echo audited-rest", env: { AUDIT_SECRET: canary } });
    expect(r.status, r.text).toBe(200);
    const commandId = r.body.data.id as string;
    const page = await list(`?command_id=${commandId}`);
    const call = page.data.find((e) => e.action === "CommandService.Execute");
    expect(call).toMatchObject({
      actor: "admin",
      outcome: "ok",
      machine_id: machineId,
      command_id: commandId,
      client_address: "127.0.0.1",
      command: "echo audited-rest",
      detail: "status=completed exit_code=0",
    });
    // The start is recorded too (a long Execute would otherwise be recorded only when it answers).
    expect(page.data.find((e) => e.action === "command.started")).toMatchObject({ actor: "admin", machine_id: machineId, command_id: commandId, command: "echo audited-rest" });
    expect(call!.hash).toMatch(/^[0-9a-f]{64}$/);
    // Registering the machine was recorded, without its private key.
    const reg = await list(`?action=MachineService.CreateMachine&machine_id=${machineId}`);
    expect(reg.data).toHaveLength(1);
    expect(JSON.stringify(reg.data)).not.toContain("PRIVATE KEY");
  });

  it("records gRPC calls with the caller's address, and ExecuteAsync with the new command's id", async () => {
    const client = new GrpcClient(svc.url, svc.token);
    try {
      const cmd = await client.unary(CommandService.method.execute, { machineId, command: "echo audited-grpc", env: { AUDIT_SECRET: canary } });
      const [call] = (await list(`?command_id=${cmd.id}&action=CommandService.Execute`)).data;
      expect(call).toMatchObject({ actor: "admin", outcome: "ok", machine_id: machineId, client_address: "127.0.0.1", command: "echo audited-grpc" });

      const events: any[] = [];
      await new Promise<void>((resolve, reject) => {
        const s = client.stream(CommandService.method.executeAsync, { machineId, command: "echo audited-async", env: { AUDIT_SECRET: canary } });
        s.on("data", (e) => events.push(e));
        s.on("error", reject);
        s.on("end", () => resolve());
      });
      const id = events[0].event.value.id as string;
      expect(id).toMatch(/^cmd_/);
      const [asyncCall] = (await list(`?command_id=${id}&action=CommandService.ExecuteAsync`)).data;
      expect(asyncCall).toMatchObject({ outcome: "ok", machine_id: machineId, client_address: "127.0.0.1", command: "echo audited-async" });
    } finally {
      client.close();
    }
  });

  it("records a batch with its id, and a REST stream once", async () => {
    const b = await svc.rest("POST", "/v1/commands/batch", { machine_ids: [machineId], command: "echo audited-batch" });
    expect(b.status, b.text).toBe(200);
    const batchId = b.body.meta.batch_id as string;
    const commandId = b.body.data[machineId].id as string;
    const batch = (await list("?action=CommandService.Batch&limit=10")).data.filter((e) => e.batch_id === batchId);
    expect(batch).toHaveLength(1);
    expect(batch[0]).toMatchObject({ actor: "admin", outcome: "ok", command: "echo audited-batch", client_address: "127.0.0.1" });
    expect((await list(`?command_id=${commandId}&action=command.started`)).data[0]).toMatchObject({ batch_id: batchId, machine_id: machineId });

    const res = await fetch(`${svc.url}/v1/commands/${commandId}/stream`, { headers: { authorization: `Bearer ${svc.token}` } });
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('"end"');
    const watched = (await list(`?command_id=${commandId}&action=CommandService.WatchCommand`)).data;
    expect(watched).toHaveLength(1);
    expect(watched[0]).toMatchObject({ outcome: "ok", client_address: "127.0.0.1" });
  });

  it("takes the client address from the connection, never from a header the caller sends", async () => {
    const spoof = { "fleetrun-client-address": "203.0.113.66", "x-forwarded-for": "203.0.113.67" };
    expect((await svc.rest("GET", `/v1/machines/${machineId}`, undefined, spoof)).status).toBe(200);
    const connect = await fetch(`${svc.url}/fleetrun.v1.MachineService/GetMachine`, {
      method: "POST",
      headers: { authorization: `Bearer ${svc.token}`, "content-type": "application/json", ...spoof },
      body: JSON.stringify({ id: machineId }),
    });
    expect(connect.status).toBe(200);
    const recent = (await list(`?action=MachineService.GetMachine&machine_id=${machineId}&limit=2`)).data;
    expect(recent).toHaveLength(2);
    for (const e of recent) expect(e.client_address).toBe("127.0.0.1");
  });

  it("records refusals: a bad or missing token (REST and gRPC) and an unknown id", async () => {
    const bad = await svc.rest("GET", `/v1/machines/${machineId}`, undefined, { authorization: "Bearer not-a-valid-token-at-all" });
    expect(bad.status).toBe(401);
    const client = new GrpcClient(svc.url, svc.token);
    try {
      await expect(client.unary(CommandService.method.execute, { machineId, command: "echo never" }, { token: "wrong-token-0123456789" })).rejects.toMatchObject({
        code: grpc.status.UNAUTHENTICATED,
      });
    } finally {
      client.close();
    }
    const none = await svc.rest("GET", "/v1/audit", undefined, { authorization: "" });
    expect(none.status).toBe(401);
    expect(none.text).not.toContain("seq");
    expect((await svc.rest("GET", "/v1/commands/cmd_doesnotexist")).status).toBe(404);

    const denied = (await list("?outcome=denied&limit=100")).data;
    expect(denied.find((e) => e.action === "MachineService.GetMachine" && e.machine_id === machineId)).toMatchObject({
      actor: "anonymous",
      client_address: "127.0.0.1",
      detail: "unauthenticated: invalid, revoked or expired token",
    });
    const grpcDenied = denied.find((e) => e.action === "CommandService.Execute" && e.command === "echo never");
    expect(grpcDenied).toMatchObject({ actor: "anonymous", machine_id: machineId, detail: "unauthenticated: invalid, revoked or expired token" });
    expect(denied.find((e) => e.action === "AuditService.ListAuditEvents")).toMatchObject({ actor: "anonymous", detail: expect.stringContaining("missing bearer token") });
    expect(denied.find((e) => e.action === "CommandService.GetCommand")).toMatchObject({ actor: "admin", command_id: "cmd_doesnotexist", detail: expect.stringMatching(/^not_found: /) });
    // No token text anywhere in the trail.
    const all = JSON.stringify((await list("?limit=1000")).data);
    expect(all).not.toContain("wrong-token-0123456789");
    expect(all).not.toContain("not-a-valid-token-at-all");
    expect(all).not.toContain(svc.token);
  });

  it("never stores env values: the canary is nowhere in the database", async () => {
    await audit.drain();
    await svc.stores.commands.listActive(); // a read after the writes: everything is committed
    if (svc.database.kind === "sqlite") {
      for (const file of [svc.database.file, `${svc.database.file}-wal`]) {
        if (fs.existsSync(file)) expect(fs.readFileSync(file).includes(canary), path.basename(file)).toBe(false);
      }
    } else {
      const rows = await rawSql(svc, "select * from audit_events");
      expect(rows.length).toBeGreaterThan(5);
      expect(JSON.stringify(rows)).not.toContain(canary);
      const commands = await rawSql(svc, "select * from commands");
      expect(JSON.stringify(commands)).not.toContain(canary);
    }
    expect(JSON.stringify((await list("?limit=1000")).data)).not.toContain(canary);
  });

  it("lists newest first with filters and a cursor; bad parameters are 400 naming the field", async () => {
    const before = new Date(Date.now() - 1);
    for (let i = 0; i < 5; i++) expect((await svc.rest("GET", `/v1/machines/${machineId}`)).status).toBe(200);
    const filter = `?action=MachineService.GetMachine&machine_id=${machineId}&outcome=ok&actor=admin&since=${encodeURIComponent(before.toISOString())}`;
    const whole = (await list(`${filter}&limit=100`)).data;
    expect(whole).toHaveLength(5);
    expect(whole.map((e) => e.seq)).toEqual([...whole.map((e) => e.seq)].sort((a, b) => b - a));

    const seen: number[] = [];
    let cursor: string | null = null;
    do {
      const page: Awaited<ReturnType<typeof list>> = await list(`${filter}&limit=2${cursor ? `&cursor=${cursor}` : ""}`);
      expect(page.data.length).toBeLessThanOrEqual(2);
      seen.push(...page.data.map((e) => e.seq));
      cursor = page.meta.next_cursor;
    } while (cursor);
    expect(seen).toEqual(whole.map((e) => e.seq));

    const until = (await list(`${filter}&until=${encodeURIComponent(whole[2]!.time)}`)).data;
    expect(until.every((e) => e.time < whole[2]!.time)).toBe(true);
    expect((await list("?actor=nobody-at-all")).data).toEqual([]);

    for (const [query, field] of [
      ["?limit=0", "limit"],
      ["?limit=1001", "limit"],
      ["?outcome=maybe", "outcome"],
      ["?since=yesterday", "since"],
      ["?cursor=bogus", "cursor"],
      ["?actor=", "actor"],
    ] as const) {
      const r = await svc.rest("GET", `/v1/audit${query}`);
      expect(r.status, query).toBe(400);
      expect(r.body.error.field, query).toBe(field);
    }
    // Still serving.
    expect((await svc.rest("GET", "/v1/audit?limit=1")).status).toBe(200);
  });

  it("is for admins whose scope covers every machine: read-only and machine-scoped admin tokens are refused", async () => {
    const mint = async (name: string, scope: object): Promise<string> => {
      const r = await svc.rest("POST", "/v1/tokens", { name, scope });
      expect(r.status).toBe(201);
      return (r.body as { data: { token: string } }).data.token;
    };
    const suffix = randomBytes(4).toString("hex");
    const reader = await mint(`audit-reader-${suffix}`, { actions: ["read", "execute", "cancel"] });
    const scopedAdmin = await mint(`audit-scoped-admin-${suffix}`, { actions: ["admin"], machine_selector: { labels: { env: "staging" } } });
    for (const token of [reader, scopedAdmin]) {
      for (const route of ["/v1/audit", "/v1/audit/verify"]) {
        const r = await svc.rest("GET", route, undefined, { authorization: `Bearer ${token}` });
        expect(r.status).toBe(403);
        expect((r.body as { error: { code: string } }).error.code).toBe("permission_denied");
      }
    }
    // Over the network without a token: 401 / UNAUTHENTICATED; with the admin token it answers.
    expect((await svc.rest("GET", "/v1/audit/verify", undefined, { authorization: "" })).status).toBe(401);
    const client = new GrpcClient(svc.url, svc.token);
    try {
      await expect(client.unary(AuditService.method.listAuditEvents, {}, { token: null })).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      await expect(client.unary(AuditService.method.listAuditEvents, {}, { token: scopedAdmin })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
      const ok = await client.unary(AuditService.method.listAuditEvents, { limit: 1 });
      expect(ok.data).toHaveLength(1);
    } finally {
      client.close();
    }
  });

  it.runIf(db === "postgres")("keeps one gap-free chain when two processes append at once (PostgreSQL replicas)", async () => {
    if (svc.database.kind !== "postgres") return;
    const other = await openStores({ dataDir: svc.dataDir, databaseUrl: svc.database.url, schema: svc.database.schema });
    try {
      const before = await audit.head();
      for (let i = 0; i < 400; i++) {
        audit.record({ actor: "replica-a", action: "test.append", outcome: "ok", detail: String(i) });
        other.audit!.record({ actor: "replica-b", action: "test.append", outcome: "ok", detail: String(i) });
        if (i % 50 === 49) await new Promise((r) => setImmediate(r));
      }
      await Promise.all([audit.drain(), other.audit!.drain()]);
      const head = await audit.head();
      expect(head.seq - before.seq).toBeGreaterThanOrEqual(800);
      const rows = await rawSql(svc, "select actor, count(*) as n from audit_events where action = 'test.append' group by actor order by actor");
      expect(rows.map((r) => [r.actor, Number(r.n)])).toEqual([["replica-a", 400], ["replica-b", 400]]);
      expect(await audit.verify()).toMatchObject({ ok: true, firstSeq: 1, lastSeq: head.seq });
    } finally {
      await other.close();
    }
  });

  it("detects an edited row, a deleted row and a deleted tail (VerifyAuditChain and npm run verify-audit)", async () => {
    expect((await svc.rest("POST", "/v1/commands", { machine_id: machineId, command: "echo to-tamper-with" })).status).toBe(200);
    for (let i = 0; i < 3; i++) await svc.rest("GET", `/v1/machines/${machineId}`);
    const intact = await verifyRest();
    expect(intact).toMatchObject({ ok: true, first_seq: 1 });
    expect(intact.records).toBeGreaterThan(5);
    const cli = await verifyCli(svc);
    expect(cli.code, cli.out).toBe(0);
    expect(cli.out).toMatch(/audit chain ok: \d+ records checked/);
    const head = /head (\d+):([0-9a-f]{64})/.exec(cli.out);
    expect(head).not.toBeNull();

    const [target] = (await list(`?command_id=${(await list("?action=CommandService.Execute&outcome=ok&limit=1")).data[0]!.command_id}&action=CommandService.Execute`)).data;
    const seq = target!.seq;

    // The schema refuses an UPDATE outright...
    await expect(rawSql(svc, "update audit_events set actor = 'mallory' where seq = " + seq)).rejects.toThrow(/append-only/);
    // ...so an intruder drops the trigger first, then edits the row.
    await rawSql(svc, "drop trigger audit_events_append_only" + (svc.database.kind === "postgres" ? " on audit_events" : ""));
    await rawSql(svc, `update audit_events set actor = 'mallory' where seq = ${seq}`);
    const edited = await verifyRest();
    expect(edited).toMatchObject({ ok: false, broken_seq: seq, reason: expect.stringContaining("altered") });
    const cliEdited = await verifyCli(svc);
    expect(cliEdited.code, cliEdited.out).toBe(1);
    expect(cliEdited.out).toContain(`BROKEN at record ${seq}`);

    // Undo the edit; then delete the row.
    await rawSql(svc, `update audit_events set actor = 'admin' where seq = ${seq}`);
    expect((await verifyRest()).ok).toBe(true);
    const [row] = await rawSql(svc, `select * from audit_events where seq = ${seq}`);
    await rawSql(svc, `delete from audit_events where seq = ${seq}`);
    expect(await verifyRest()).toMatchObject({ ok: false, broken_seq: seq, reason: expect.stringContaining(`record ${seq} is missing`) });
    await reinsert(row);
    expect((await verifyRest()).ok).toBe(true);

    // Delete the newest records (the tail): the head kept beside the table says they existed.
    await audit.drain();
    const tail = await rawSql(svc, "select * from audit_events order by seq desc limit 3");
    await rawSql(svc, `delete from audit_events where seq >= ${Number(tail.at(-1).seq)}`);
    expect(await audit.verify()).toMatchObject({ ok: false, brokenSeq: Number(tail.at(-1).seq), reason: expect.stringContaining("tail was deleted") });
    for (const r of tail.reverse()) await reinsert(r);

    // A head kept outside the database (from the earlier run) is still held.
    const held = await verifyCli(svc, ["--head", `${head![1]}:${head![2]}`]);
    expect(held.code, held.out).toBe(0);
    const forged = await verifyCli(svc, ["--head", `${head![1]}:${"0".repeat(64)}`]);
    expect(forged.code, forged.out).toBe(1);
    // The same over the API.
    expect((await svc.rest("GET", `/v1/audit/verify?head_seq=${head![1]}&head_hash=${head![2]}`)).body.data).toMatchObject({ ok: true });
    expect((await svc.rest("GET", `/v1/audit/verify?head_seq=${head![1]}&head_hash=${"0".repeat(64)}`)).body.data).toMatchObject({
      ok: false,
      broken_seq: Number(head![1]),
    });
    const half = await svc.rest("GET", `/v1/audit/verify?head_seq=${head![1]}`);
    expect(half.status).toBe(400);
    expect(half.body.error.field).toBe("head_hash");
  }, 180_000);

  async function reinsert(row: Record<string, unknown>): Promise<void> {
    const cols = Object.keys(row);
    const marks = cols.map((_, i) => (svc.database.kind === "postgres" ? `$${i + 1}` : "?")).join(", ");
    await rawSql(svc, `insert into audit_events (${cols.join(", ")}) values (${marks})`, cols.map((c) => row[c]));
  }

  it("retention deletes the oldest records and the chain still verifies from its anchor", async () => {
    for (let i = 0; i < 12; i++) await svc.rest("GET", `/v1/machines/${machineId}`);
    expect((await verifyRest()).ok).toBe(true);
    const cut = new Date();
    await new Promise((r) => setTimeout(r, 5)); // the next records are strictly after `cut`
    for (let i = 0; i < 3; i++) await svc.rest("GET", `/v1/machines/${machineId}`);
    await audit.drain();
    const deleted = await audit.prune(cut);
    expect(deleted).toBeGreaterThan(10);
    const after = await verifyRest();
    expect(after).toMatchObject({ ok: true });
    expect(Number(after.first_seq)).toBe(deleted + 1);
    const [state] = await rawSql(svc, "select * from audit_chain_state");
    expect(Number(state.pruned_seq)).toBe(deleted);
    const oldest = (await list("?limit=1000")).data.at(-1)!;
    expect(oldest.seq).toBe(deleted + 1);
    expect(oldest.prev_hash).toBe(state.pruned_hash);
    // Deleting the first record left after retention is still detected.
    await rawSql(svc, `delete from audit_events where seq = ${deleted + 1}`);
    expect(await verifyRest()).toMatchObject({ ok: false, broken_seq: deleted + 1 });
    const cli = await verifyCli(svc);
    expect(cli.code, cli.out).toBe(1);
  }, 60_000);
});

describe("Audit trail in the service process", () => {
  it("logs the chain's head every retention interval (to keep outside the database) and refuses a bad retention setting", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-audit-"));
    const badHead = await verifyCli({ dataDir, database: { kind: "sqlite", file: path.join(dataDir, "fleetrun.db") } } as TestService, ["--head", "nonsense"]);
    expect(badHead.code, badHead.out).toBe(2);
    expect(badHead.out).toContain("--head must be SEQ:HASH");
    const bad = await runBadSetting(dataDir);
    expect(bad.code).toBe(2);
    expect(bad.out).toContain("FLEETRUN_AUDIT_RETENTION_DAYS");
    const svc = await spawnService(
      { FLEETRUN_DATA_DIR: dataDir, FLEETRUN_LOG_LEVEL: "info", FLEETRUN_RETENTION_INTERVAL_MS: "1000", FLEETRUN_AUDIT_RETENTION_DAYS: "30" },
      await freePort(),
    );
    try {
      const r = await fetch(`${svc.url}/v1/machines`, { headers: { authorization: `Bearer ${TOKEN}` } });
      expect(r.status).toBe(200);
      const seq = await eventually(() => {
        const heads = [...svc.output().matchAll(/"audit_head_seq":(\d+),"audit_head_hash":"([0-9a-f]{64})"/g)];
        const last = heads.at(-1);
        return last && Number(last[1]) >= 1 ? Number(last[1]) : null;
      }, 15_000, "the audit head in the log");
      expect(seq).toBeGreaterThanOrEqual(1);
    } finally {
      svc.child.kill("SIGTERM");
      await svc.exited;
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  }, 180_000);
});

function runBadSetting(dataDir: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(
      path.join(ROOT, "node_modules/.bin/node"),
      [path.join(ROOT, "src/main.ts")],
      { env: { ...process.env, FLEETRUN_DATA_DIR: dataDir, PORT: "0", FLEETRUN_AUDIT_RETENTION_DAYS: "0" }, timeout: 30_000 },
      (err, stdout, stderr) => resolve({ code: err === null ? 0 : Number((err as { code?: unknown }).code ?? -1), out: stdout + stderr }),
    );
  });
}
