/**
 * Scoped tokens against the real sshd fleet, on SQLite and PostgreSQL, over
 * REST (HTTP/1.1) and gRPC (grpc-js over h2c): each attack is tried and must
 * fail with nothing run. Token CRUD (secret shown once, only a digest
 * stored), revocation and expiry at once, requested_by / cancelled_by, and
 * the per-token limits (429 / RESOURCE_EXHAUSTED with retry-after).
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { status as GrpcStatus, type ServiceError } from "@grpc/grpc-js";
import { createFleetrunClient } from "../../src/client/index.ts";
import { CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { MachineService } from "../../src/gen/fleetrun/v1/machine_pb.js";
import { postgresSkipReason } from "../fixtures/postgres.ts";
import {
  GrpcClient,
  eventually,
  freePort,
  registerMachine,
  restClient,
  spawnService,
  startService,
  type DbKind,
  type ServiceProcess,
  type TestService,
} from "../fixtures/service.ts";

const fleet = inject("sshFleet");
const pgSkip = await postgresSkipReason();
if (process.env.CI === "true" && pgSkip) throw new Error(`PostgreSQL is required in CI: ${pgSkip}`);
const dbs: DbKind[] = pgSkip ? ["sqlite"] : ["sqlite", "postgres"];

function unique(): string {
  return `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
}

/** A file the command would create on the target (the fleet runs on this host): its absence proves nothing ran. */
function marker(): { file: string; command: string } {
  const file = path.join(os.tmpdir(), `fr-tok-${unique()}`);
  return { file, command: `touch ${file}` };
}

async function grpcError(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (e) {
    return e as ServiceError;
  }
  throw new Error("expected the call to fail");
}

describe.each(dbs)("tokens on %s", (db) => {
  let svc: TestService;
  let stg1: string;
  let stg2: string;
  let prod: string;
  let prodCommand: string;
  let prodBatch: string;
  const clients: GrpcClient[] = [];
  let logs = "";

  /** Creates a token as admin; returns its id and secret. */
  async function token(body: Record<string, unknown>): Promise<{ id: string; secret: string; body: any }> {
    const r = await svc.rest("POST", "/v1/tokens", body);
    expect(r.status, r.text).toBe(201);
    return { id: r.body.data.id, secret: r.body.data.token, body: r.body };
  }

  function grpc(secret: string): GrpcClient {
    const c = new GrpcClient(svc.url, secret);
    clients.push(c);
    return c;
  }

  /** How many commands the machine's history holds (as admin). */
  async function historyTotal(machineId: string): Promise<number> {
    const r = await svc.rest("GET", `/v1/machines/${machineId}/commands?limit=1`);
    expect(r.status, r.text).toBe(200);
    return r.body.meta.total;
  }

  beforeAll(async () => {
    const sink = new Writable({
      write(chunk, _enc, cb) {
        logs += chunk.toString();
        cb();
      },
    });
    svc = await startService({ db, logStream: sink });
    const g = unique();
    stg1 = await registerMachine(svc, fleet, { index: 21, labels: { env: "staging", group: g } });
    stg2 = await registerMachine(svc, fleet, { index: 22, labels: { env: "staging", group: g } });
    prod = await registerMachine(svc, fleet, { index: 23, labels: { env: "prod", group: g } });
    const r = await svc.rest("POST", "/v1/commands", { machine_id: prod, command: "echo prod-secret" });
    expect(r.status, r.text).toBe(200);
    prodCommand = r.body.data.id;
    const b = await svc.rest("POST", "/v1/commands/batch", { selector: { labels: { group: g } }, command: "true" });
    expect(b.status, b.text).toBe(200);
    prodBatch = b.body.meta.batch_id;
  });
  afterAll(async () => {
    for (const c of clients) c.close();
    await svc?.close();
  });

  it("creates a token whose secret is shown once and stored only as a digest; lists, gets and revokes it", async () => {
    const name = `ci-${unique()}`;
    const created = await svc.rest("POST", "/v1/tokens", {
      name,
      scope: { actions: ["read", "execute"], machine_ids: [stg1], machine_selector: { labels: { env: "staging" } }, run_as: ["", "deploy"] },
      expires_at: "2099-01-01T00:00:00Z",
    });
    expect(created.status, created.text).toBe(201);
    const t = created.body.data;
    expect(t).toMatchObject({
      id: expect.stringMatching(/^tok_[0-9a-z]{26}$/),
      name,
      scope: { actions: ["read", "execute"], machine_ids: [stg1], machine_selector: { labels: { env: "staging" } }, run_as: ["", "deploy"] },
      expires_at: "2099-01-01T00:00:00.000Z",
      last_used_at: null,
      revoked_at: null,
      created_by: "admin",
      token: expect.stringMatching(/^frt_[0-9a-z]{26}_[A-Za-z0-9_-]{43}$/),
    });
    expect(t.created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    const secret: string = t.token;

    // Get and list never carry the secret, or any field for it.
    const got = await svc.rest("GET", `/v1/tokens/${t.id}`);
    expect(got.status).toBe(200);
    expect(got.body.data).not.toHaveProperty("token");
    expect(got.text).not.toContain(secret);
    expect(got.body.data.scope).toEqual(t.scope);
    const list = await svc.rest("GET", "/v1/tokens?limit=1000");
    expect(list.status).toBe(200);
    expect(list.text).not.toContain(secret);
    expect(list.body.data.map((x: any) => x.name)).toEqual(expect.arrayContaining(["admin", name]));
    expect(list.body.meta.total).toBe(list.body.data.length);
    expect(list.body.data.find((x: any) => x.name === "admin")).toMatchObject({ created_by: null, scope: { actions: ["read", "execute", "cancel", "admin"], run_as: null } });

    // Only the SHA-256 digest is stored; the bootstrap admin token too.
    const stored = await svc.stores.tokens.get(t.id);
    expect(stored!.secretHash).toBe(createHash("sha256").update(secret).digest("hex"));
    expect(JSON.stringify(stored)).not.toContain(secret.slice(-43));
    const boot = await svc.stores.tokens.getBootstrap();
    expect(boot!.secretHash).toBe(createHash("sha256").update(svc.token).digest("hex"));
    if (db === "sqlite") {
      const bytes = Buffer.concat(
        ["fleetrun.db", "fleetrun.db-wal"].map((f) => path.join(svc.dataDir, f)).filter((f) => fs.existsSync(f)).map((f) => fs.readFileSync(f)),
      );
      expect(bytes.includes(Buffer.from(secret.slice(-43)))).toBe(false);
      expect(bytes.includes(Buffer.from(svc.token))).toBe(false);
      expect(bytes.includes(Buffer.from(stored!.secretHash))).toBe(true);
    }

    // It works, and its use is recorded.
    const as = restClient(svc.url, secret);
    expect((await as("GET", `/v1/machines/${stg1}`)).status).toBe(200);
    await eventually(async () => (await svc.rest("GET", `/v1/tokens/${t.id}`)).body.data.last_used_at !== null, 5000, "last_used_at");

    // Revoked: refused at once, over REST, gRPC and the SSE access_token path.
    const revoke = await svc.rest("DELETE", `/v1/tokens/${t.id}`);
    expect(revoke.status).toBe(200);
    expect(revoke.body).toEqual({ data: { revoked: true } });
    const after = await as("GET", `/v1/machines/${stg1}`);
    expect(after.status).toBe(401);
    expect(after.body.error).toEqual({ code: "unauthenticated", message: "invalid, revoked or expired token" });
    const g = await grpcError(grpc(secret).unary(MachineService.method.getMachine, { id: stg1 }));
    expect(g.code).toBe(GrpcStatus.UNAUTHENTICATED);
    const sse = await fetch(`${svc.url}/v1/commands/${prodCommand}/stream?access_token=${encodeURIComponent(secret)}`, { headers: { accept: "text/event-stream" } });
    expect(sse.status).toBe(401);
    await sse.text();
    expect((await svc.rest("DELETE", `/v1/tokens/${t.id}`)).status).toBe(200);
    expect((await svc.rest("GET", `/v1/tokens/${t.id}`)).body.data.revoked_at).not.toBeNull();
    // A revoked name may be reused by a new token; an active one may not.
    expect((await svc.rest("POST", "/v1/tokens", { name, scope: { actions: ["read"] } })).status).toBe(201);
    const dup = await svc.rest("POST", "/v1/tokens", { name, scope: { actions: ["read"] } });
    expect(dup.status).toBe(409);
    expect(dup.body.error.field).toBe("name");
    // Used in a header, a query parameter and after revocation: never in a log line.
    expect(logs).toContain(t.id);
    expect(logs).not.toContain(secret.slice(-43));
    expect(logs).not.toContain(svc.token);
  });

  it("the typed client manages tokens over gRPC, and a new token is refused what its scope lacks", async () => {
    const admin = createFleetrunClient({ baseUrl: svc.url, token: svc.token, protocol: "grpc" });
    try {
      const name = `typed-${unique()}`;
      const created = await admin.tokens.createToken({ name, scope: { actions: ["read"], machineIds: [stg1] } });
      expect(created.token).toMatch(/^frt_/);
      expect((await admin.tokens.getToken({ id: created.id })).name).toBe(name);
      const reader = createFleetrunClient({ baseUrl: svc.url, token: created.token, protocol: "grpc" });
      try {
        expect((await reader.machines.listMachines({})).data.map((m) => m.id)).toEqual([stg1]);
        await expect(reader.commands.execute({ machineId: stg1, command: "true" })).rejects.toMatchObject({ code: 7 });
        await expect(reader.tokens.listTokens({})).rejects.toMatchObject({ code: 7 });
        await admin.tokens.revokeToken({ id: created.id });
        await expect(reader.machines.listMachines({})).rejects.toMatchObject({ code: 16 });
      } finally {
        reader.close();
      }
    } finally {
      admin.close();
    }
  });

  it("refuses malformed token requests naming the field, and the bootstrap token's revocation", async () => {
    const bad = async (body: unknown, field: string) => {
      const r = await svc.rest("POST", "/v1/tokens", body);
      expect(r.status, r.text).toBe(400);
      expect(r.body.error.field).toBe(field);
    };
    await bad({ name: "x", scope: { actions: [] } }, "scope.actions");
    await bad({ name: "x", scope: { actions: ["write"] } }, "scope.actions");
    await bad({ name: "x" }, "scope");
    await bad({ name: "", scope: { actions: ["read"] } }, "name");
    await bad({ name: "x", scope: { actions: ["read"], run_as: ["root;id"] } }, "scope.run_as");
    await bad({ name: "x", scope: { actions: ["read"] }, expires_at: "2001-01-01T00:00:00Z" }, "expires_at");
    await bad({ name: "x", scope: { actions: ["read"] }, limits: { burst: -1 } }, "limits.burst");
    const boot = await svc.stores.tokens.getBootstrap();
    const r = await svc.rest("DELETE", `/v1/tokens/${boot!.id}`);
    expect(r.status).toBe(409);
    expect((await svc.rest("GET", "/v1/machines")).status).toBe(200);
  });

  it("a read-only token reads, but cannot execute, start, batch, cancel, or manage machines and tokens; nothing runs", async () => {
    const { secret } = await token({ name: `reader-${unique()}`, scope: { actions: ["read"] } });
    const as = restClient(svc.url, secret);
    expect((await as("GET", `/v1/commands/${prodCommand}`)).status).toBe(200);
    expect((await as("GET", `/v1/machines/${prod}/commands`)).status).toBe(200);
    expect((await as("GET", "/v1/machines")).body.meta.total).toBeGreaterThanOrEqual(3);
    const before = await historyTotal(stg1);
    const m = marker();
    for (const [method, url, body] of [
      ["POST", "/v1/commands", { machine_id: stg1, command: m.command }],
      ["POST", "/v1/commands/async", { machine_id: stg1, command: m.command }],
      ["POST", "/v1/commands/batch", { machine_ids: [stg1], command: m.command }],
      ["POST", "/v1/batches", { machine_ids: [stg1], command: m.command }],
      ["DELETE", `/v1/commands/${prodCommand}`, undefined],
      ["POST", "/v1/machines", { name: "x", host: "127.0.0.1", username: "root", password: "x" }],
      ["DELETE", `/v1/machines/${stg1}`, undefined],
      ["POST", `/v1/machines/${stg1}/test`, {}],
      ["POST", "/v1/tokens", { name: "escalate", scope: { actions: ["admin"] } }],
      ["GET", "/v1/tokens", undefined],
    ] as const) {
      const r = await as(method, url, body);
      expect(r.status, `${method} ${url}: ${r.text}`).toBe(403);
      expect(r.body.error.code).toBe("permission_denied");
    }
    const c = grpc(secret);
    const e = await grpcError(c.unary(CommandService.method.execute, { machineId: stg1, command: m.command }));
    expect(e.code).toBe(GrpcStatus.PERMISSION_DENIED);
    expect(e.details).toMatch(/does not allow execute/);
    const s = await grpcError(c.unary(CommandService.method.startCommand, { machineId: stg1, command: m.command }));
    expect(s.code).toBe(GrpcStatus.PERMISSION_DENIED);
    expect(await historyTotal(stg1)).toBe(before);
    expect(fs.existsSync(m.file)).toBe(false);
  });

  it("a token scoped to env=staging cannot reach a prod machine by id, by selector or in a batch, nor learn that it exists", async () => {
    const name = `staging-${unique()}`;
    const { secret } = await token({ name, scope: { actions: ["read", "execute", "cancel"], machine_selector: { labels: { env: "staging" } } } });
    const as = restClient(svc.url, secret);
    const unknownId = "mach_00000000000000000000000000";
    const notFound = async (method: string, url: string, body: unknown, id: string) => {
      const r = await as(method, url, body);
      const u = await as(method, url.replace(id, unknownId), typeof body === "object" && body ? JSON.parse(JSON.stringify(body).replaceAll(id, unknownId)) : body);
      expect(r.status, `${method} ${url}: ${r.text}`).toBe(404);
      // Exactly what an id that does not exist gets.
      expect(r.text.replaceAll(id, unknownId)).toBe(u.text);
      return r;
    };
    const before = await historyTotal(prod);
    const m = marker();

    // By id, over REST and gRPC.
    await notFound("POST", "/v1/commands", { machine_id: prod, command: m.command }, prod);
    await notFound("POST", "/v1/commands/async", { machine_id: prod, command: m.command }, prod);
    await notFound("GET", `/v1/machines/${prod}`, undefined, prod);
    await notFound("GET", `/v1/machines/${prod}/commands`, undefined, prod);
    const c = grpc(secret);
    const e = await grpcError(c.unary(CommandService.method.execute, { machineId: prod, command: m.command }));
    expect(e.code).toBe(GrpcStatus.NOT_FOUND);
    expect(e.details).toBe(`machine "${prod}" not found`);
    expect((await grpcError(c.unary(MachineService.method.getMachine, { id: prod }))).code).toBe(GrpcStatus.NOT_FOUND);

    // Its commands and batches are unknown too: get, stream (header and access_token), cancel.
    await notFound("GET", `/v1/commands/${prodCommand}`, undefined, prodCommand);
    await notFound("DELETE", `/v1/commands/${prodCommand}`, undefined, prodCommand);
    await notFound("GET", `/v1/commands/${prodCommand}/stream`, undefined, prodCommand);
    const sse = await fetch(`${svc.url}/v1/commands/${prodCommand}/stream?access_token=${encodeURIComponent(secret)}`, { headers: { accept: "text/event-stream" } });
    expect(sse.status).toBe(404);
    expect(await sse.text()).not.toContain("prod-secret");
    expect((await grpcError(c.unary(CommandService.method.getCommand, { id: prodCommand }))).code).toBe(GrpcStatus.NOT_FOUND);
    const watch = c.stream(CommandService.method.watchCommand, { id: prodCommand });
    const watched: unknown[] = [];
    watch.on("data", (d) => watched.push(d));
    const watchErr = await new Promise<ServiceError>((resolve) => watch.on("error", resolve));
    expect(watchErr.code).toBe(GrpcStatus.NOT_FOUND);
    expect(watched).toEqual([]);
    await notFound("GET", `/v1/batches/${prodBatch}`, undefined, prodBatch);
    await notFound("DELETE", `/v1/batches/${prodBatch}`, undefined, prodBatch);

    // Listings leave it out, totals included.
    const list = await as("GET", "/v1/machines?limit=1000");
    expect(list.body.data.map((x: any) => x.id).sort()).toEqual([stg1, stg2].sort());
    expect(list.body.meta.total).toBe(2);
    expect(list.text).not.toContain(prod);
    expect((await as("GET", "/v1/machines?label_selector=env=prod")).body).toMatchObject({ data: [], meta: { total: 0 } });

    // In a batch by ids: the prod id is unknown, and the staging one does not run either.
    const stgBefore = await historyTotal(stg1);
    const byIds = await as("POST", "/v1/commands/batch", { machine_ids: [stg1, prod], command: m.command });
    expect(byIds.status).toBe(404);
    expect(byIds.body.error.message).toBe(`unknown machine id(s): ${prod}`);
    // By a selector that reaches prod: 403 naming the count, not the ids; runs on none.
    for (const labels of [{ env: "prod" }, { group: (await as("GET", `/v1/machines/${stg1}`)).body.data.labels.group }]) {
      for (const url of ["/v1/commands/batch", "/v1/batches"]) {
        const r = await as("POST", url, { selector: { labels }, command: m.command });
        expect(r.status, r.text).toBe(403);
        expect(r.body.error.message).toMatch(/matches 1 machine\(s\) outside this token's scope/);
        expect(r.text).not.toContain(prod);
      }
    }
    expect(await historyTotal(stg1)).toBe(stgBefore);
    expect(await historyTotal(prod)).toBe(before);
    expect(fs.existsSync(m.file)).toBe(false);

    // Within its scope it works, recorded under its name.
    const ok = await as("POST", "/v1/commands/batch", { selector: { labels: { env: "staging" } }, command: "echo in-scope" });
    expect(ok.status, ok.text).toBe(200);
    expect(Object.keys(ok.body.data).sort()).toEqual([stg1, stg2].sort());
    for (const r of Object.values(ok.body.data) as any[]) expect(r).toMatchObject({ status: "completed", exit_code: 0, requested_by: name, cancelled_by: null });
    const one = await c.unary(CommandService.method.execute, { machineId: stg2, command: "echo grpc" });
    expect(one.requestedBy).toBe(name);
    const progress = await as("GET", `/v1/batches/${ok.body.meta.batch_id}`);
    expect(progress.status).toBe(200);
  });

  it("run-as outside the scope is refused before anything runs", async () => {
    const { secret } = await token({
      name: `login-only-${unique()}`,
      scope: { actions: ["read", "execute"], machine_selector: { labels: { env: "staging" } }, run_as: [""] },
    });
    const as = restClient(svc.url, secret);
    const before = await historyTotal(stg1);
    const m = marker();
    for (const url of ["/v1/commands", "/v1/commands/async"]) {
      const r = await as("POST", url, { machine_id: stg1, command: m.command, user: fleet.users.runAs });
      expect(r.status, r.text).toBe(403);
      expect(r.body.error).toMatchObject({ code: "permission_denied", message: expect.stringMatching(/^user: .*"frrunas".*scope\.run_as/) });
    }
    const b = await as("POST", "/v1/commands/batch", { machine_ids: [stg1, stg2], command: m.command, user: "root" });
    expect(b.status).toBe(403);
    const e = await grpcError(grpc(secret).unary(CommandService.method.execute, { machineId: stg1, command: m.command, user: "root" }));
    expect(e.code).toBe(GrpcStatus.PERMISSION_DENIED);
    expect(await historyTotal(stg1)).toBe(before);
    expect(fs.existsSync(m.file)).toBe(false);
    // The login user itself is allowed.
    const ok = await as("POST", "/v1/commands", { machine_id: stg1, command: "id -un" });
    expect(ok.body.data).toMatchObject({ status: "completed", stdout: "root\n" });
    // A token limited to one run-as user cannot run as the login user.
    const { secret: onlyRunAs } = await token({ name: `runas-${unique()}`, scope: { actions: ["execute"], run_as: [fleet.users.runAs] } });
    const r = await restClient(svc.url, onlyRunAs)("POST", "/v1/commands", { machine_id: stg1, command: m.command });
    expect(r.status).toBe(403);
    expect(r.body.error.message).toMatch(/login user/);
  });

  it("an expired token fails at once; expiry in the past is refused", async () => {
    const expires = new Date(Date.now() + 3000);
    const { secret } = await token({ name: `short-${unique()}`, scope: { actions: ["read"] }, expires_at: expires.toISOString() });
    const as = restClient(svc.url, secret);
    expect((await as("GET", "/v1/machines")).status).toBe(200);
    await eventually(async () => (await as("GET", "/v1/machines")).status === 401, 10_000, "expiry");
    // Not before it was due.
    expect(Date.now()).toBeGreaterThanOrEqual(expires.getTime());
    const e = await grpcError(grpc(secret).unary(MachineService.method.listMachines, {}));
    expect(e.code).toBe(GrpcStatus.UNAUTHENTICATED);
  });

  it("records requested_by and who cancelled a command (cancelled_by), over REST and gRPC", async () => {
    const runner = `runner-${unique()}`;
    const canceller = `canceller-${unique()}`;
    const { secret: run } = await token({ name: runner, scope: { actions: ["read", "execute"], machine_ids: [stg1] } });
    const { secret: cancel } = await token({ name: canceller, scope: { actions: ["read", "cancel"], machine_selector: { labels: { env: "staging" } } } });
    const started = await restClient(svc.url, run)("POST", "/v1/commands/async", { machine_id: stg1, command: "sleep 30" });
    expect(started.status, started.text).toBe(202);
    const id = started.body.data.id;
    await eventually(async () => (await svc.rest("GET", `/v1/commands/${id}`)).body.data.status === "running", 15_000, "running");
    // The runner may not cancel (no cancel action).
    expect((await restClient(svc.url, run)("DELETE", `/v1/commands/${id}`)).status).toBe(403);
    const r = await restClient(svc.url, cancel)("DELETE", `/v1/commands/${id}`);
    expect(r.status, r.text).toBe(200);
    const done = await eventually(async () => {
      const g = await svc.rest("GET", `/v1/commands/${id}`);
      return g.body.data.status === "cancelled" ? g.body.data : null;
    }, 15_000, "cancelled");
    expect(done).toMatchObject({ requested_by: runner, cancelled_by: canceller });
    const viaGrpc = await grpc(svc.token).unary(CommandService.method.getCommand, { id });
    expect(viaGrpc.cancelledBy).toBe(canceller);
    expect(viaGrpc.requestedBy).toBe(runner);
    const history = await svc.rest("GET", `/v1/machines/${stg1}/commands?requested_by=${runner}`);
    expect(history.body.data.map((x: any) => x.id)).toContain(id);

    // A waiting caller that hangs up (here: its deadline) cancels in its own name.
    const tag = `hangup-${unique()}`;
    const e = await grpcError(grpc(run).unary(CommandService.method.execute, { machineId: stg1, command: `echo ${tag}; sleep 30` }, { deadline: 1500 }));
    expect(e.code).toBe(GrpcStatus.DEADLINE_EXCEEDED);
    const hung = await eventually(async () => {
      const h = await svc.rest("GET", `/v1/machines/${stg1}/commands?requested_by=${runner}&limit=100`);
      const item = h.body.data.find((x: any) => x.command.includes(tag));
      if (!item || item.status !== "cancelled") return null;
      return (await svc.rest("GET", `/v1/commands/${item.id}`)).body.data;
    }, 15_000, "the hung-up command cancelled");
    expect(hung).toMatchObject({ status: "cancelled", requested_by: runner, cancelled_by: runner });
  });

  it("token management needs admin, and a scoped admin cannot create a broader token", async () => {
    const { secret } = await token({ name: `stg-admin-${unique()}`, scope: { actions: ["read", "admin"], machine_selector: { labels: { env: "staging" } }, run_as: [""] } });
    const as = restClient(svc.url, secret);
    const wider = await as("POST", "/v1/tokens", { name: `w-${unique()}`, scope: { actions: ["read"] } });
    expect(wider.status).toBe(403);
    const more = await as("POST", "/v1/tokens", { name: `w-${unique()}`, scope: { actions: ["execute"], machine_selector: { labels: { env: "staging" } }, run_as: [""] } });
    expect(more.status).toBe(403);
    const narrower = await as("POST", "/v1/tokens", { name: `n-${unique()}`, scope: { actions: ["read"], machine_selector: { labels: { env: "staging", group: "x" } }, run_as: [""] } });
    expect(narrower.status, narrower.text).toBe(201);
    // It does not see the bootstrap admin token, and cannot move a machine out of its scope or register one outside.
    const list = await as("GET", "/v1/tokens");
    expect(list.body.data.map((t: any) => t.name)).not.toContain("admin");
    const move = await as("PATCH", `/v1/machines/${stg2}`, { labels: { env: "prod" } });
    expect(move.status).toBe(403);
    expect((await svc.rest("GET", `/v1/machines/${stg2}`)).body.data.labels.env).toBe("staging");
    const outside = await as("POST", "/v1/machines", { name: `o-${unique()}`, host: "127.0.0.1", username: "root", password: "x", labels: { env: "prod" } });
    expect(outside.status).toBe(403);
    expect((await as("DELETE", `/v1/machines/${prod}`)).status).toBe(404);
  });

  it("limits a token's request rate, concurrent commands and streams (429 / RESOURCE_EXHAUSTED with retry-after)", async () => {
    // Rate: a burst of 2, then refused.
    const { secret: slow } = await token({ name: `slow-${unique()}`, scope: { actions: ["read"] }, limits: { requests_per_second: 0.2, burst: 2 } });
    const as = restClient(svc.url, slow);
    expect((await as("GET", "/v1/machines")).status).toBe(200);
    expect((await as("GET", "/v1/machines")).status).toBe(200);
    const res = await fetch(`${svc.url}/v1/machines`, { headers: { authorization: `Bearer ${slow}` } });
    expect(res.status).toBe(429);
    expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(((await res.json()) as any).error).toMatchObject({ code: "resource_exhausted", message: expect.stringMatching(/too many requests from token/) });
    const e = await grpcError(grpc(slow).unary(MachineService.method.listMachines, {}));
    expect(e.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
    expect(Number(e.metadata.get("retry-after")[0])).toBeGreaterThanOrEqual(1);
    // Other tokens are not affected.
    expect((await svc.rest("GET", "/v1/machines")).status).toBe(200);

    // Concurrent commands: one at a time.
    const { secret: one } = await token({
      name: `one-${unique()}`,
      scope: { actions: ["read", "execute", "cancel"], machine_ids: [stg1] },
      limits: { max_concurrent_commands: 1, max_streams: 1 },
    });
    const o = restClient(svc.url, one);
    const first = await o("POST", "/v1/commands/async", { machine_id: stg1, command: "echo go; sleep 30" });
    expect(first.status, first.text).toBe(202);
    const before = await historyTotal(stg1);
    const second = await o("POST", "/v1/commands/async", { machine_id: stg1, command: "true" });
    expect(second.status).toBe(429);
    expect(second.body.error.message).toMatch(/too many commands of token .*at most 1/);
    expect(await historyTotal(stg1)).toBe(before);
    const batch = await o("POST", "/v1/commands/batch", { machine_ids: [stg1], command: "true" });
    expect(batch.status).toBe(429);

    // Streams: one open follower, the second refused.
    const id = first.body.data.id;
    const ac = new AbortController();
    const stream = await fetch(`${svc.url}/v1/commands/${id}/stream`, { headers: { authorization: `Bearer ${one}` }, signal: ac.signal });
    expect(stream.status).toBe(200);
    const second2 = await fetch(`${svc.url}/v1/commands/${id}/stream?access_token=${encodeURIComponent(one)}`);
    expect(second2.status).toBe(429);
    expect(second2.headers.get("retry-after")).toBe("5");
    await second2.text();
    ac.abort();
    await stream.body?.cancel().catch(() => {});
    // Places come back when the stream and the command end.
    expect((await o("DELETE", `/v1/commands/${id}`)).status).toBe(200);
    await eventually(async () => (await svc.rest("GET", `/v1/commands/${id}`)).body.data.status === "cancelled", 15_000, "cancelled");
    await eventually(async () => (await o("POST", "/v1/commands", { machine_id: stg1, command: "true" })).status === 200, 10_000, "a command place back");
    await eventually(async () => {
      const r = await fetch(`${svc.url}/v1/commands/${id}/stream`, { headers: { authorization: `Bearer ${one}` } });
      await r.text();
      return r.status === 200;
    }, 10_000, "a stream place back");
  });
});

describe("tokens across restarts of the service process (SQLite)", () => {
  let dataDir: string;
  let svc: ServiceProcess | null = null;

  async function start(adminToken: string): Promise<ServiceProcess> {
    svc = await spawnService({ FLEETRUN_DATA_DIR: dataDir, FLEETRUN_ADMIN_TOKEN: adminToken }, await freePort());
    return svc;
  }
  async function stop(): Promise<void> {
    if (svc && svc.child.exitCode === null) {
      svc.child.kill("SIGTERM");
      await svc.exited;
    }
    svc = null;
  }

  beforeAll(() => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-tokens-"));
  });
  afterAll(async () => {
    if (svc && svc.child.exitCode === null) {
      svc.child.kill("SIGKILL");
      await svc.exited;
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it("keeps created tokens; the bootstrap token is the one configured at the last start, stored as a digest", { timeout: 180_000 }, async () => {
    const first = "first-admin-token-0123456789";
    const second = "second-admin-token-0123456789";
    let s = await start(first);
    const created = await restClient(s.url, first)("POST", "/v1/tokens", { name: "kept", scope: { actions: ["read"] } });
    expect(created.status, created.text).toBe(201);
    const kept: string = created.body.data.token;
    expect((await restClient(s.url, kept)("GET", "/v1/machines")).status).toBe(200);
    await stop();

    s = await start(second);
    expect((await restClient(s.url, first)("GET", "/v1/machines")).status).toBe(401);
    expect((await restClient(s.url, kept)("GET", "/v1/machines")).status).toBe(200);
    const list = await restClient(s.url, second)("GET", "/v1/tokens");
    expect(list.status).toBe(200);
    expect(list.body.data.filter((t: any) => t.name === "admin")).toHaveLength(1);
    await stop();

    // Unset: generated into the data dir (0600), and stored the same way.
    s = await start("");
    const file = path.join(dataDir, "admin-token");
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const generated = fs.readFileSync(file, "utf8").trim();
    expect(generated).toMatch(/^frt_/);
    expect((await restClient(s.url, generated)("GET", "/v1/tokens")).status).toBe(200);
    expect((await restClient(s.url, second)("GET", "/v1/machines")).status).toBe(401);
    expect((await restClient(s.url, kept)("GET", "/v1/machines")).status).toBe(200);
    await stop();
    const bytes = Buffer.concat(
      ["fleetrun.db", "fleetrun.db-wal"].map((f) => path.join(dataDir, f)).filter((f) => fs.existsSync(f)).map((f) => fs.readFileSync(f)),
    );
    for (const secret of [first, second, generated, kept]) expect(bytes.includes(Buffer.from(secret))).toBe(false);
  });
});
