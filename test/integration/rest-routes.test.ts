/**
 * The REST transcoder on a real fastify server (127.0.0.1, port 0) with real
 * HTTP/1.1 requests, in front of in-memory fake implementations of the
 * fleetrun services reached through a Connect router transport.
 */
import { request as httpRequest } from "node:http";
import type { AddressInfo } from "node:net";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import type { HandlerContext } from "@connectrpc/connect";
import Fastify from "fastify";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  BatchResponseSchema,
  CommandSchema,
  CommandService,
  CommandStatus,
  ListMachineCommandsResponseSchema,
} from "../../src/gen/fleetrun/v1/command_pb.js";
import type { BatchRequest, ExecuteRequest, ListMachineCommandsRequest } from "../../src/gen/fleetrun/v1/command_pb.js";
import { MachineSchema, MachineService } from "../../src/gen/fleetrun/v1/machine_pb.js";
import type { DeleteMachineRequest, UpdateMachineRequest } from "../../src/gen/fleetrun/v1/machine_pb.js";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import { registerRestRoutes } from "../../src/rest/rest-routes.ts";

const BODY_LIMIT = 4096;

/** What the fake services saw. */
const seen = {
  execute: [] as ExecuteRequest[],
  headers: [] as Headers[],
  batch: [] as BatchRequest[],
  list: [] as ListMachineCommandsRequest[],
  update: [] as UpdateMachineRequest[],
  del: [] as DeleteMachineRequest[],
  executeAborted: 0,
};

function fieldError(message: string, code: Code, field: string): ConnectError {
  return new ConnectError(message, code, { "x-error-field": field });
}

const sampleCommand = create(CommandSchema, {
  id: "cmd_xyz789",
  machineId: "mach_abc123",
  command: "ls -la /var/log",
  status: CommandStatus.COMPLETED,
  exitCode: 0,
  stdout: new TextEncoder().encode("total 48\n"),
  stdoutBytes: 9n,
  duration: 150n,
  timeout: 30000n,
  startedAt: timestampFromMs(Date.UTC(2024, 0, 20, 15, 45, 0, 0)),
  finishedAt: timestampFromMs(Date.UTC(2024, 0, 20, 15, 45, 0, 150)),
  requestedBy: "admin",
});

const transport = createRouterTransport(({ service }) => {
  service(CommandService, {
    async execute(req: ExecuteRequest, ctx: HandlerContext) {
      seen.execute.push(req);
      seen.headers.push(ctx.requestHeader);
      if (req.command === "hang") {
        // Wait for the caller to hang up.
        await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
        seen.executeAborted++;
        throw new ConnectError("cancelled", Code.Canceled);
      }
      if (req.command === "boom") throw new Error("database password is hunter2");
      return { ...sampleCommand, machineId: req.machineId, command: req.command };
    },
    startCommand() {
      return { id: "cmd_async", status: CommandStatus.QUEUED };
    },
    getCommand(req) {
      const m = /^code-(\d+)$/.exec(req.id);
      if (m !== null) {
        throw fieldError(`failure ${m[1]}`, Number(m[1]) as Code, "id");
      }
      if (req.id === "plain-error") throw new ConnectError("nope", Code.NotFound);
      return sampleCommand;
    },
    cancelCommand() {
      return { cancelled: true };
    },
    batch(req: BatchRequest) {
      seen.batch.push(req);
      return create(BatchResponseSchema, {
        data: { mach_1: { ...sampleCommand, machineId: "mach_1" }, mach_3: { ...sampleCommand, machineId: "mach_3", exitCode: 1 } },
        meta: { batchId: "batch_1", succeeded: 1, failed: 1, skipped: 0 },
      });
    },
    listMachineCommands(req: ListMachineCommandsRequest) {
      seen.list.push(req);
      return create(ListMachineCommandsResponseSchema, {
        data: [{ id: "cmd_xyz789", command: "ls -la", exitCode: 0, duration: 150n, status: CommandStatus.COMPLETED, executedAt: timestampFromMs(0) }],
        meta: { total: 100n, limit: req.limit ?? 20, offset: req.offset ?? 0 },
      });
    },
  });
  service(MachineService, {
    createMachine(req) {
      return create(MachineSchema, { id: "mach_new", name: req.name, host: req.host, port: req.port ?? 22, username: req.username, labels: req.labels, hasPrivateKey: req.privateKey !== undefined });
    },
    updateMachine(req: UpdateMachineRequest) {
      seen.update.push(req);
      return create(MachineSchema, { id: req.id, name: req.name ?? "old" });
    },
    deleteMachine(req: DeleteMachineRequest) {
      seen.del.push(req);
      return { deleted: true };
    },
  });
});

const logs: string[] = [];
let app: FastifyInstance;
let base: string;

beforeAll(async () => {
  app = Fastify({ logger: { level: "info", stream: { write: (line: string) => void logs.push(line) } } });
  registerRestRoutes(app, { services: [CommandService, MachineService], transport, bodyLimit: BODY_LIMIT });
  await app.listen({ host: "127.0.0.1", port: 0 });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await app.close();
});

beforeEach(() => {
  seen.execute.length = 0;
  seen.headers.length = 0;
  seen.batch.length = 0;
  seen.list.length = 0;
  seen.update.length = 0;
  seen.del.length = 0;
});

async function call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any; headers: Headers; text: string }> {
  const init: RequestInit = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)["content-type"] ??= "application/json";
  }
  const res = await fetch(base + path, init);
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, headers: res.headers, text };
}

/** The server still answers a good request. */
async function stillServing(): Promise<void> {
  const r = await call("GET", "/v1/commands/cmd_xyz789");
  expect(r.status).toBe(200);
  expect(r.json.data.id).toBe("cmd_xyz789");
}

describe("success responses", () => {
  it("POST /v1/commands decodes the body and wraps the command in data", async () => {
    const r = await call("POST", "/v1/commands", { machine_id: "mach_abc123", command: "ls -la /var/log", timeout: 30000, env: { A: "1" }, cwd: null });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
    const req = seen.execute[0];
    expect(req?.machineId).toBe("mach_abc123");
    expect(req?.timeout).toBe(30000n);
    expect(req?.env).toEqual({ A: "1" });
    expect(req?.cwd).toBeUndefined();
    expect(Object.keys(r.json)).toEqual(["data"]);
    expect(r.json.data).toMatchObject({
      id: "cmd_xyz789",
      machine_id: "mach_abc123",
      command: "ls -la /var/log",
      stdout: "total 48\n",
      stderr: "",
      exit_code: 0,
      duration: 150,
      status: "completed",
      started_at: "2024-01-20T15:45:00.000Z",
      finished_at: "2024-01-20T15:45:00.150Z",
      created_at: null,
      error: null,
      batch_id: null,
      cwd: null,
      signal: null,
      env_keys: [],
      timeout: 30000,
    });
    expect(Object.keys(r.json.data).length).toBe(CommandSchema.fields.length);
  });

  it("an empty body on a body:* route is {}", async () => {
    const r = await fetch(`${base}/v1/commands`, { method: "POST" });
    expect(r.status).toBe(200);
    expect(seen.execute[0]).toMatchObject({ machineId: "", command: "" });
    const r2 = await fetch(`${base}/v1/commands`, { method: "POST", headers: { "content-type": "application/json" }, body: "" });
    expect(r2.status).toBe(200);
  });

  it("POST /v1/commands/async answers 202 from the http_success_code option", async () => {
    const r = await call("POST", "/v1/commands/async", { machine_id: "m", command: "npm run build" });
    expect(r.status).toBe(202);
    expect(r.json).toEqual({ data: { id: "cmd_async", status: "queued" } });
  });

  it("POST /v1/machines answers 201 and never a credential", async () => {
    const r = await call("POST", "/v1/machines", { name: "web1", host: "10.0.0.1", username: "deploy", private_key: "-----BEGIN KEY-----", labels: { env: "prod" } });
    expect(r.status).toBe(201);
    expect(r.json.data).toMatchObject({ id: "mach_new", name: "web1", port: 22, labels: { env: "prod" }, has_private_key: true, host_key_fingerprint: null, created_at: null });
    expect(r.text).not.toContain("BEGIN KEY");
  });

  it("GET /v1/machines/{machine_id}/commands takes typed query parameters and renders {data, meta} unwrapped", async () => {
    const r = await call("GET", "/v1/machines/mach_abc123/commands?limit=5&offset=10&since=2024-01-01T00%3A00%3A00Z&status=completed");
    expect(r.status).toBe(200);
    expect(seen.list[0]).toMatchObject({ machineId: "mach_abc123", limit: 5, offset: 10, since: "2024-01-01T00:00:00Z", status: "completed" });
    expect(r.json).toEqual({
      data: [
        {
          id: "cmd_xyz789",
          command: "ls -la",
          exit_code: 0,
          duration: 150,
          executed_at: "1970-01-01T00:00:00.000Z",
          status: "completed",
          user: null,
          requested_by: "",
          batch_id: null,
        },
      ],
      meta: { total: 100, limit: 5, offset: 10, next_cursor: null },
    });
  });

  it("POST /v1/commands/batch decodes selector, Value fields and renders the data map unwrapped", async () => {
    const r = await call("POST", "/v1/commands/batch", {
      machine_ids: ["mach_1", "mach_3"],
      selector: { labels: { env: "prod" } },
      command: "apt update",
      max_concurrency: "10%",
      max_errors: 2,
    });
    expect(r.status).toBe(200);
    const req = seen.batch[0];
    expect(req?.machineIds).toEqual(["mach_1", "mach_3"]);
    expect(req?.selector?.labels).toEqual({ env: "prod" });
    expect(req?.maxConcurrency?.kind).toEqual({ case: "stringValue", value: "10%" });
    expect(req?.maxErrors?.kind).toEqual({ case: "numberValue", value: 2 });
    expect(Object.keys(r.json).sort()).toEqual(["data", "meta"]);
    expect(Object.keys(r.json.data).sort()).toEqual(["mach_1", "mach_3"]);
    expect(r.json.data.mach_3).toMatchObject({ machine_id: "mach_3", exit_code: 1, stdout: "total 48\n" });
    // The seed's three counters, then what failed is made of (all zero when the stub leaves them unset).
    expect(r.json.meta).toEqual({ batch_id: "batch_1", succeeded: 1, failed: 1, skipped: 0, timed_out: 0, cancelled: 0, lost: 0, errors: 0 });
  });

  it("DELETE /v1/commands/{id} and DELETE /v1/machines/{id}?force=true", async () => {
    expect((await call("DELETE", "/v1/commands/cmd_1")).json).toEqual({ data: { cancelled: true } });
    const r = await call("DELETE", "/v1/machines/mach_1?force=true");
    expect(r.json).toEqual({ data: { deleted: true } });
    expect(seen.del[0]).toMatchObject({ id: "mach_1", force: true });
  });

  it("PATCH binds the path id and accepts the same id in the body", async () => {
    const r = await call("PATCH", "/v1/machines/mach_1", { id: "mach_1", name: "renamed", clear_labels: true });
    expect(r.status).toBe(200);
    expect(seen.update[0]).toMatchObject({ id: "mach_1", name: "renamed", clearLabels: true });
    expect(r.json.data).toMatchObject({ id: "mach_1", name: "renamed" });
  });

  it("forwards Authorization, x-request-id and user-agent to the service", async () => {
    await call("POST", "/v1/commands", { machine_id: "m", command: "c" }, { authorization: "Bearer tok_1", "x-request-id": "req-42", "user-agent": "fleetctl/1" });
    const h = seen.headers[0];
    expect(h?.get("authorization")).toBe("Bearer tok_1");
    expect(h?.get("x-request-id")).toBe("req-42");
    expect(h?.get("user-agent")).toContain("fleetctl/1");
  });

  it("path variables are URL-decoded", async () => {
    const r = await call("DELETE", "/v1/machines/a%2Fb%20c");
    expect(r.status).toBe(200);
    expect(seen.del[0]?.id).toBe("a/b c");
  });
});

describe("errors from the services", () => {
  it.each([
    [Code.InvalidArgument, 400, "invalid_argument"],
    [Code.Unauthenticated, 401, "unauthenticated"],
    [Code.PermissionDenied, 403, "permission_denied"],
    [Code.NotFound, 404, "not_found"],
    [Code.AlreadyExists, 409, "already_exists"],
    [Code.Aborted, 409, "aborted"],
    [Code.FailedPrecondition, 409, "failed_precondition"],
    [Code.ResourceExhausted, 429, "resource_exhausted"],
    [Code.Canceled, 499, "cancelled"],
    [Code.Unavailable, 503, "unavailable"],
    [Code.DeadlineExceeded, 504, "deadline_exceeded"],
    [Code.Unimplemented, 501, "unimplemented"],
    [Code.Internal, 500, "internal"],
    [Code.Unknown, 500, "unknown"],
  ])("gRPC code %i -> HTTP %i %s, with the field from x-error-field", async (code, status, name) => {
    const r = await call("GET", `/v1/commands/code-${code}`);
    expect(r.status).toBe(status);
    expect(r.json).toEqual({ error: { code: name, message: `failure ${code}`, field: "id" } });
  });

  it("omits field when the error names none", async () => {
    const r = await call("GET", "/v1/commands/plain-error");
    expect(r.status).toBe(404);
    expect(r.json).toEqual({ error: { code: "not_found", message: "nope" } });
  });

  it("an unimplemented method is 501", async () => {
    const r = await call("GET", "/v1/batches/batch_1");
    expect(r.status).toBe(501);
    expect(r.json.error.code).toBe("unimplemented");
  });
});

describe("bad requests", () => {
  const secret = "s3cr3t-passphrase";
  it.each([
    ["malformed JSON", `{"machine_id": "m", "passphrase": "${secret}"`, undefined],
    ["an array body", `["${secret}"]`, undefined],
    ["a string body", `"${secret}"`, undefined],
    ["null body", "null", undefined],
    ["an unknown field", { machine_id: "m", machineId: "x" }, "machineId"],
    ["a number for a string", { machine_id: 12 }, "machine_id"],
    ["a string for an integer", { timeout: "30000" }, "timeout"],
    ["a fractional integer", { timeout: 1.5 }, "timeout"],
    ["an out of range integer", { timeout: 1e300 }, "timeout"],
    ["a non-string map value", { env: { A: 1 } }, "env"],
    ["a map that is not an object", { env: [secret] }, "env"],
  ])("POST /v1/commands with %s is 400 naming the field", async (_what, body, field) => {
    const r = await call("POST", "/v1/commands", body);
    expect(r.status).toBe(400);
    expect(r.json.error.code).toBe("invalid_argument");
    expect(r.json.error.field).toBe(field);
    expect(r.text).not.toContain(secret);
    expect(seen.execute).toHaveLength(0);
    await stillServing();
  });

  it.each([
    ["/v1/machines/m1/commands?limit=abc", "limit"],
    ["/v1/machines/m1/commands?limit=1.5", "limit"],
    ["/v1/machines/m1/commands?limit=99999999999", "limit"],
    ["/v1/machines/m1/commands?limit=1&limit=2", "limit"],
    ["/v1/machines/m1/commands?bogus=1", "bogus"],
    ["/v1/machines/m1/commands?machine_id=m2", "machine_id"],
  ])("GET %s is 400 naming %s", async (path, field) => {
    const r = await call("GET", path);
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ code: "invalid_argument", field });
    expect(seen.list).toHaveLength(0);
    await stillServing();
  });

  it("a bool query parameter must be true or false", async () => {
    const r = await call("DELETE", "/v1/machines/m1?force=yes");
    expect(r.status).toBe(400);
    expect(r.json.error.field).toBe("force");
    expect(seen.del).toHaveLength(0);
  });

  it("a bool body field must be a JSON boolean", async () => {
    const r = await call("PATCH", "/v1/machines/m1", { clear_labels: "true" });
    expect(r.status).toBe(400);
    expect(r.json.error.field).toBe("clear_labels");
  });

  it("query parameters on a body:* route are unknown", async () => {
    const r = await call("POST", "/v1/commands?command=ls", { machine_id: "m" });
    expect(r.status).toBe(400);
    expect(r.json.error.field).toBe("command");
  });

  it("a body id that differs from the path is 400", async () => {
    const r = await call("PATCH", "/v1/machines/m1", { id: "m2" });
    expect(r.status).toBe(400);
    expect(r.json.error.field).toBe("id");
    expect(seen.update).toHaveLength(0);
  });

  it("a nested unknown field names its path", async () => {
    const r = await call("POST", "/v1/commands/batch", { selector: { labels: {}, names: [] } });
    expect(r.status).toBe(400);
    expect(r.json.error.field).toBe("selector.names");
  });

  it("a non-JSON content type is 415 with the envelope", async () => {
    const r = await call("POST", "/v1/commands", "machine_id=m", { "content-type": "application/x-www-form-urlencoded" });
    expect(r.status).toBe(415);
    expect(r.json.error.code).toBe("invalid_argument");
    await stillServing();
  });

  it("a body over the limit is 413 with the envelope", async () => {
    const r = await call("POST", "/v1/commands", { machine_id: "m", command: "x".repeat(BODY_LIMIT) });
    expect(r.status).toBe(413);
    expect(r.json).toEqual({ error: { code: "resource_exhausted", message: `request body is larger than ${BODY_LIMIT} bytes` } });
    expect(seen.execute).toHaveLength(0);
    await stillServing();
  });

  it("an unknown route is 404 with the envelope", async () => {
    const r = await call("GET", "/v1/nothing/here?access_token=zzz-404-token");
    expect(r.status).toBe(404);
    expect(r.json).toEqual({ error: { code: "not_found", message: "no route for GET /v1/nothing/here" } });
    await stillServing();
  });

  it("a known path with a wrong method is 405 with the envelope and Allow", async () => {
    const r = await call("PUT", "/v1/commands/cmd_1", {});
    expect(r.status).toBe(405);
    expect(r.json.error.code).toBe("unimplemented");
    expect(r.headers.get("allow")).toBe("GET, HEAD, DELETE");
    const r2 = await call("DELETE", "/v1/commands");
    expect(r2.status).toBe(405);
    expect(r2.headers.get("allow")).toBe("POST");
    await stillServing();
  });

  it("an unexpected failure is 500 without its message", async () => {
    const r = await call("POST", "/v1/commands", { machine_id: "m", command: "boom" });
    expect(r.status).toBe(500);
    expect(r.text).not.toContain("hunter2");
    await stillServing();
  });
});

describe("lifecycle", () => {
  it("a client that closes the connection aborts the call (ctx.signal fires)", async () => {
    const before = seen.executeAborted;
    const req = httpRequest(`${base}/v1/commands`, { method: "POST", headers: { "content-type": "application/json" } });
    req.on("error", () => {});
    req.end(JSON.stringify({ machine_id: "m", command: "hang" }));
    await waitFor(() => seen.execute.some((e) => e.command === "hang"));
    req.destroy();
    await waitFor(() => seen.executeAborted > before);
    await stillServing();
  });

  it("request logs never contain an access_token value", async () => {
    await call("GET", "/v1/commands/cmd_1?access_token=zzz-unary-token");
    expect(logs.some((l) => l.includes("incoming request"))).toBe(true);
    expect(logs.join("\n")).not.toContain("zzz-");
    expect(logs.some((l) => l.includes("access_token=[REDACTED]"))).toBe(true);
  });
});

describe("next to other routes", () => {
  it("leaves the Connect plugin, root routes and the app's 404 alone", async () => {
    const other = Fastify();
    await other.register(fastifyConnectPlugin, {
      routes: (router) => router.service(CommandService, { getCommand: (req) => ({ id: req.id, command: "via connect" }) }),
    });
    other.get("/healthz", async () => ({ ok: true }));
    registerRestRoutes(other, { services: [CommandService], transport });
    await other.listen({ host: "127.0.0.1", port: 0 });
    const url = `http://127.0.0.1:${(other.server.address() as AddressInfo).port}`;
    try {
      const connect = await fetch(`${url}/fleetrun.v1.CommandService/GetCommand`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ id: "c1" }),
      });
      expect(connect.status).toBe(200);
      expect(await connect.json()).toMatchObject({ id: "c1", command: "via connect" });
      expect(await (await fetch(`${url}/healthz`)).json()).toEqual({ ok: true });
      const rest = await fetch(`${url}/v1/commands/cmd_xyz789`);
      expect(((await rest.json()) as { data: { id: string } }).data.id).toBe("cmd_xyz789");
      const outside = await fetch(`${url}/elsewhere`);
      expect(outside.status).toBe(404);
      expect(await outside.json()).not.toHaveProperty("error.code");
    } finally {
      await other.close();
    }
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("condition not met before the deadline");
    await new Promise((r) => setTimeout(r, 10));
  }
}
