/**
 * API edges on the real service (HTTP/1.1 on port 0, SQLite, the built-in
 * local machine): the error envelope everywhere, trailing slashes, and the
 * other corners a first-time caller runs into.
 */
import fs from "node:fs";
import { request as httpRequest } from "node:http";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { GrpcClient, eventually, startService, type TestService } from "../fixtures/service.ts";

/** A raw HTTP/1.1 request (no client-side URL normalisation). */
function rawRequest(url: string, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<{ status: number; headers: Record<string, unknown>; text: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function expectEnvelope(text: string, code: string): { code: string; message: string; field?: string } {
  const body = JSON.parse(text) as { error: { code: string; message: string; field?: string } };
  expect(Object.keys(body)).toEqual(["error"]);
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe("string");
  return body.error;
}

describe("API edges", () => {
  let svc: TestService;
  let auth: Record<string, string>;

  beforeAll(async () => {
    svc = await startService();
    auth = { authorization: `Bearer ${svc.token}`, "content-type": "application/json" };
  });
  afterAll(async () => {
    await svc?.close();
  });

  describe("error envelope", () => {
    it("answers 404 outside /v1 in the REST error envelope", async () => {
      for (const [method, path] of [
        ["GET", "/nope"],
        ["POST", "/healthz"],
        ["GET", "/"],
        ["DELETE", "/v2/commands/x"],
      ] as const) {
        const res = await rawRequest(svc.url, method, path, { authorization: auth.authorization ?? "" });
        expect(res.status, `${method} ${path}`).toBe(404);
        expect(res.headers["content-type"]).toMatch(/^application\/json/);
        const err = expectEnvelope(res.text, "not_found");
        expect(err.message).toContain(path);
      }
    });

    it("answers a malformed URL in the envelope", async () => {
      const res = await rawRequest(svc.url, "GET", "/v1/commands/%zz", auth);
      expect(res.status).toBe(400);
      expectEnvelope(res.text, "invalid_argument");
    });

    it("treats a trailing slash as the route without it", async () => {
      const body = JSON.stringify({ machine_id: "mach_local", command: "echo slash", timeout: 10000 });
      const res = await rawRequest(svc.url, "POST", "/v1/commands/", auth, body);
      expect(res.status, res.text).toBe(200);
      const cmd = (JSON.parse(res.text) as { data: { id: string; stdout: string } }).data;
      expect(cmd.stdout).toBe("slash\n");
      const got = await rawRequest(svc.url, "GET", `/v1/commands/${cmd.id}/`, auth);
      expect(got.status).toBe(200);
      expect((JSON.parse(got.text) as { data: { id: string } }).data.id).toBe(cmd.id);
      const list = await rawRequest(svc.url, "GET", "/v1/machines/", auth);
      expect(list.status).toBe(200);
      expect(JSON.parse(list.text)).toHaveProperty("data");
    });
  });

  describe("target-side errors", () => {
    const home = os.homedir();
    const rel = `fleetrun-cwd-${process.pid}-${Date.now()}`;
    beforeAll(() => fs.mkdirSync(path.join(home, rel, "inner"), { recursive: true }));
    afterAll(() => fs.rmSync(path.join(home, rel), { recursive: true, force: true }));

    it("resolves a relative cwd from the login user's home, on both paths", async () => {
      const sync = await svc.rest("POST", "/v1/commands", { machine_id: "mach_local", command: "pwd", cwd: `${rel}/inner`, timeout: 10000 });
      expect(sync.body.data.status, JSON.stringify(sync.body)).toBe("completed");
      expect(sync.body.data.stdout).toBe(`${path.join(home, rel, "inner")}\n`);
      const started = await svc.rest("POST", "/v1/commands/async", { machine_id: "mach_local", command: "pwd", cwd: rel, timeout: 10000 });
      expect(started.status).toBe(202);
      const done = await eventually(async () => {
        const g = await svc.rest("GET", `/v1/commands/${started.body.data.id}`);
        return g.body.data.finished_at !== null ? g.body.data : null;
      });
      expect(done.status, JSON.stringify(done)).toBe("completed");
      expect(done.stdout).toBe(`${path.join(home, rel)}\n`);
    });

    it("cwd_not_found names the directory, the user and where a relative one starts", async () => {
      const sync = await svc.rest("POST", "/v1/commands", { machine_id: "mach_local", command: "true", cwd: "no/such-dir", timeout: 10000 });
      expect(sync.body.data.status).toBe("failed");
      expect(sync.body.data.error.code).toBe("cwd_not_found");
      const msg = sync.body.data.error.message as string;
      expect(msg).toContain("cwd no/such-dir");
      expect(msg).toContain(os.userInfo().username);
      expect(msg).toContain(`relative to the home directory of the login user, ${home}`);
      const started = await svc.rest("POST", "/v1/commands/async", { machine_id: "mach_local", command: "true", cwd: "/no/such/dir", timeout: 10000 });
      const done = await eventually(async () => {
        const g = await svc.rest("GET", `/v1/commands/${started.body.data.id}`);
        return g.body.data.finished_at !== null ? g.body.data : null;
      });
      expect(done.status).toBe("failed");
      expect(done.error.code).toBe("cwd_not_found");
      expect(done.error.message).toContain("cwd /no/such/dir: no such directory");
    });
  });

  describe("cancel", () => {
    it("is 409 for a command that ended otherwise than cancelled, and 200 again for a cancelled one", async () => {
      const done = await svc.rest("POST", "/v1/commands", { machine_id: "mach_local", command: "exit 4", timeout: 10000 });
      expect(done.body.data.status).toBe("completed");
      const late = await svc.rest("DELETE", `/v1/commands/${done.body.data.id}`);
      expect(late.status).toBe(409);
      expect(late.body.error.code).toBe("failed_precondition");
      expect(late.body.error.message).toContain("completed");

      const started = await svc.rest("POST", "/v1/commands/async", { machine_id: "mach_local", command: "sleep 30", timeout: 60000 });
      const id = started.body.data.id as string;
      await eventually(async () => (await svc.rest("GET", `/v1/commands/${id}`)).body.data.status === "running");
      const answers: number[] = [];
      // Repeated while the group dies and after it is gone: always 200.
      for (;;) {
        const r = await svc.rest("DELETE", `/v1/commands/${id}`);
        answers.push(r.status);
        expect(r.body).toEqual({ data: { cancelled: true } });
        if ((await svc.rest("GET", `/v1/commands/${id}`)).body.data.status === "cancelled") break;
        expect(answers.length).toBeLessThan(200);
      }
      const after = await svc.rest("DELETE", `/v1/commands/${id}`);
      expect(after.status).toBe(200);
      expect(after.body).toEqual({ data: { cancelled: true } });
      expect(answers.every((s) => s === 200)).toBe(true);
    });
  });

  describe("recovery at start", () => {
    /** A detached command as a crashed process left it: `running`, its job not (or no longer) on the target. */
    async function leftRunning(runner: Record<string, unknown>): Promise<string> {
      const rec = svc.app.engine.newRecord("mach_local", { command: "echo never", cwd: null, env: {}, timeoutMs: 60_000, user: null }, "admin", false);
      const jobDir = `.fleetrun/jobs/${rec.id}`;
      await svc.stores.commands.insertMany([{ ...rec, status: "running", startedAt: new Date(), runner: { jobDir, user: null, ...runner } as never }]);
      return rec.id;
    }

    it("records a detached command accepted just before a crash that never started as failed (service_restarted), never lost", async () => {
      const neverStarted = await leftRunning({ starting: true });
      // Started, then its state on the target was deleted: its outcome is unknown.
      const stateGone = await leftRunning({});
      await svc.app.engine.recover();
      const a = await eventually(async () => {
        const g = await svc.rest("GET", `/v1/commands/${neverStarted}`);
        return g.body.data.finished_at !== null ? g.body.data : null;
      });
      expect(a.status).toBe("failed");
      expect(a.error.code).toBe("service_restarted");
      expect(a.error.message).toContain("never started");
      expect(a.started_at).toBeNull();
      expect(a.exit_code).toBeNull();
      const b = await eventually(async () => {
        const g = await svc.rest("GET", `/v1/commands/${stateGone}`);
        return g.body.data.finished_at !== null ? g.body.data : null;
      });
      expect(b.status).toBe("lost");
      expect(b.error.code).toBe("remote_state_lost");
    });

    it("a detached command that started is no longer `starting` in the store", async () => {
      const s = await svc.rest("POST", "/v1/commands/async", { machine_id: "mach_local", command: "sleep 2", timeout: 10000 });
      const id = s.body.data.id as string;
      const rec = await eventually(async () => {
        const r = await svc.stores.commands.get(id);
        return r?.runner && !r.runner.starting ? r : null;
      });
      expect(rec.status).toBe("running");
      await svc.rest("DELETE", `/v1/commands/${id}`);
    });
  });

  describe("request values", () => {
    it("passes an env variable named __proto__ byte-exact (REST and gRPC)", async () => {
      const body = '{"machine_id":"mach_local","command":"printf %s \\"$__proto__|$constructor|$A\\"","env":{"__proto__":"p r\'o","constructor":"c","A":"a"},"timeout":10000}';
      const r = await rawRequest(svc.url, "POST", "/v1/commands", auth, body);
      expect(r.status, r.text).toBe(200);
      const c = (JSON.parse(r.text) as { data: { stdout: string; env_keys: string[] } }).data;
      expect(c.stdout).toBe("p r'o|c|a");
      expect([...c.env_keys].sort()).toEqual(["A", "__proto__", "constructor"]);

      const client = new GrpcClient(svc.url, svc.token);
      try {
        const env: Record<string, string> = {};
        Object.defineProperty(env, "__proto__", { value: "via grpc", enumerable: true, writable: true, configurable: true });
        const g = await client.unary(CommandService.method.execute, { machineId: "mach_local", command: 'printf %s "$__proto__"', env });
        expect(Buffer.from(g.stdout).toString()).toBe("via grpc");
        expect(g.envKeys).toEqual(["__proto__"]);
      } finally {
        client.close();
      }
    });
  });

  describe("unpaired surrogates", () => {
    const lone = "\\ud800";
    const cases: [string, string, string, string][] = [
      ["POST", "/v1/commands", `{"machine_id":"mach_local","command":"echo ${lone}"}`, "command"],
      ["POST", "/v1/commands", `{"machine_id":"mach_local","command":"true","cwd":"/tmp/${lone}"}`, "cwd"],
      ["POST", "/v1/commands", `{"machine_id":"mach_local","command":"true","env":{"A":"${lone}"}}`, "env.A"],
      ["POST", "/v1/commands", `{"machine_id":"mach_${lone}","command":"true"}`, "machine_id"],
      ["POST", "/v1/commands/async", `{"machine_id":"mach_local","command":"true","user":"${lone}"}`, "user"],
      ["POST", "/v1/machines", `{"name":"x${lone}","host":"127.0.0.1","username":"root","password":"pw"}`, "name"],
      ["POST", "/v1/commands/batch", `{"machine_ids":["mach_local"],"command":"echo ${lone}"}`, "command"],
      ["POST", "/v1/commands/batch", `{"machine_ids":["mach_${lone}"],"command":"true"}`, "machine_ids[0]"],
      ["POST", "/v1/commands/batch", `{"machine_ids":["mach_local"],"command":"true","max_errors":"1${lone}"}`, "max_errors"],
      ["POST", "/v1/commands", `{"machine_id":"mach_local","command":"true","env":{"${lone}":"x"}}`, "env"],
    ];
    it("are 400 naming the field over REST", async () => {
      for (const [method, path, body, field] of cases) {
        const r = await rawRequest(svc.url, method, path, auth, body);
        expect(r.status, `${path} ${field}: ${r.text}`).toBe(400);
        const err = expectEnvelope(r.text, "invalid_argument");
        expect(err.field, body).toBe(field);
      }
      // A surrogate pair is fine.
      const pair = await rawRequest(svc.url, "POST", "/v1/commands", auth, '{"machine_id":"mach_local","command":"printf %s \\ud83d\\ude00"}');
      expect(pair.status).toBe(200);
      expect((JSON.parse(pair.text) as { data: { stdout: string } }).data.stdout).toBe("😀");
      // Connect JSON answers the same body the same way.
      const connect = await rawRequest(svc.url, "POST", "/fleetrun.v1.CommandService/Execute", auth, `{"machineId":"mach_local","command":"echo ${lone}"}`);
      expect(connect.status).toBe(400);
    });
  });
});
