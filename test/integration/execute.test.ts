/**
 * Execute end to end over REST (HTTP/1.1) and gRPC (grpc-js) against a real
 * OpenSSH sshd on loopback, on SQLite and on PostgreSQL.
 */
import fs from "node:fs";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { CommandService, CommandStatus } from "../../src/gen/fleetrun/v1/command_pb.js";
import { postgresSkipReason } from "../fixtures/postgres.ts";
import { GrpcClient, eventually, processesWith, registerMachine, startService, type DbKind, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");
const pgSkip = await postgresSkipReason();
if (process.env.CI === "true" && pgSkip) throw new Error(`PostgreSQL is required in CI: ${pgSkip}`);

const dbs: DbKind[] = pgSkip ? ["sqlite"] : ["sqlite", "postgres"];

function unique(): string {
  return `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
}

describe.each(dbs)("Execute on %s", (db) => {
  let svc: TestService;
  let rootMachine: string;
  let userMachine: string;

  beforeAll(async () => {
    svc = await startService({ db });
    rootMachine = await registerMachine(svc, fleet, { index: 0, user: "root" });
    userMachine = await registerMachine(svc, fleet, { index: 1, user: "frtest" });
  });
  afterAll(async () => {
    await svc?.close();
  });

  const exec = (body: Record<string, unknown>) => svc.rest("POST", "/v1/commands", body);

  it("runs on the built-in local machine and answers in the seed's shape", async () => {
    const r = await exec({ machine_id: "mach_local", command: "echo hi; echo err >&2; exit 3", timeout: 30000 });
    expect(r.status).toBe(200);
    const d = r.body.data;
    expect(d).toMatchObject({ machine_id: "mach_local", stdout: "hi\n", stderr: "err\n", exit_code: 3, status: "completed", signal: null, error: null });
    expect(d.id).toMatch(/^cmd_[0-9a-z]{26}$/);
    expect(typeof d.duration).toBe("number");
    expect(d.started_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    for (const f of ["cwd", "env_keys", "user", "timeout", "stdout_bytes", "stderr_bytes", "stdout_truncated", "stderr_truncated", "created_at", "finished_at", "batch_id", "requested_by"]) {
      expect(d).toHaveProperty(f);
    }
    const g = await svc.rest("GET", `/v1/commands/${d.id}`);
    expect(g.status).toBe(200);
    expect(g.body.data).toMatchObject({ id: d.id, stdout: "hi\n", exit_code: 3, status: "completed", requested_by: "admin" });
  });

  it("runs over SSH as root and as a normal login, with byte-exact env and cwd", async () => {
    const tricky = `it's "quoted" $(touch /tmp/nope) \`id\` $HOME\nline2 ünïcødé ✓ \\n`;
    for (const [machine, who] of [
      [rootMachine, "root"],
      [userMachine, "frtest"],
    ] as const) {
      const r = await exec({ machine_id: machine, command: 'id -un; pwd; printf %s "$TRICKY"', cwd: "/tmp", env: { TRICKY: tricky } });
      expect(r.status).toBe(200);
      expect(r.body.data.status).toBe("completed");
      expect(r.body.data.exit_code).toBe(0);
      expect(r.body.data.stdout).toBe(`${who}\n/tmp\n${tricky}`);
      expect(r.body.data.env_keys).toEqual(["TRICKY"]);
      expect(r.body.data).not.toHaveProperty("env"); // names only, never values
    }
  });

  it("defaults cwd to the login user's home", async () => {
    const r = await exec({ machine_id: userMachine, command: "pwd" });
    expect(r.body.data.stdout).toBe("/home/frtest\n");
  });

  it("fails clearly when cwd does not exist", async () => {
    const r = await exec({ machine_id: rootMachine, command: "echo should-not-run", cwd: "/no/such/dir" });
    expect(r.status).toBe(200);
    expect(r.body.data.status).toBe("failed");
    expect(r.body.data.error.code).toBe("cwd_not_found");
    expect(r.body.data.error.message).toMatch(/^cwd \/no\/such\/dir: no such directory, or root may not enter it/);
    expect(r.body.data.exit_code).toBeNull();
    expect(r.body.data.stdout).toBe("");
  });

  it("runs as another user through sudo, and a refusal fails fast", async () => {
    const ok = await exec({ machine_id: userMachine, command: "id -un; pwd", user: "frrunas" });
    expect(ok.body.data.status).toBe("completed");
    expect(ok.body.data.stdout).toBe("frrunas\n/home/frrunas\n");
    expect(ok.body.data.user).toBe("frrunas");
    const t0 = Date.now();
    const refused = await exec({ machine_id: userMachine, command: "id -un", user: "root", timeout: 60000 });
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(refused.body.data.status).toBe("failed");
    expect(refused.body.data.error.code).toBe("run_as_refused");
    expect(refused.body.data.error.message).toMatch(/^sudo -n -u root refused: .*(password|not allowed)/i);
  });

  it("a timeout ends the whole process tree with SIGTERM, keeps the output, and leaves nothing behind", async () => {
    for (const machine of [rootMachine, userMachine]) {
      const mark = `301.${unique()}`;
      const r = await exec({ machine_id: machine, command: `echo started; sh -c 'sleep ${mark} & sleep ${mark}; wait'`, timeout: 1500 });
      expect(r.body.data.status).toBe("timed_out");
      expect(r.body.data.exit_code).toBeNull();
      expect(r.body.data.signal).toBe("SIGTERM");
      expect(r.body.data.stdout).toBe("started\n");
      await eventually(() => processesWith(mark).length === 0, 10_000, `no process with ${mark}`);
    }
  });

  it("escalates to SIGKILL for a tree that ignores SIGTERM", async () => {
    const mark = `302.${unique()}`;
    const r = await exec({ machine_id: rootMachine, command: `trap '' TERM; sleep ${mark} & sleep ${mark}; wait`, timeout: 1000 });
    expect(r.body.data.status).toBe("timed_out");
    expect(r.body.data.signal).toBe("SIGKILL");
    await eventually(() => processesWith(mark).length === 0, 10_000, `no process with ${mark}`);
  });

  it("never authenticates against a machine whose host key does not match", async () => {
    const wrong = await registerMachine(svc, fleet, { index: 2, fingerprint: "SHA256:" + "A".repeat(43) });
    const r = await exec({ machine_id: wrong, command: "touch /tmp/should-not-exist-" + unique() });
    expect(r.body.data.status).toBe("failed");
    expect(r.body.data.error.code).toBe("host_key_mismatch");
    const t = await svc.rest("POST", `/v1/machines/${wrong}/test`, {});
    expect(t.body.data.ok).toBe(false);
    expect(t.body.data.error.code).toBe("host_key_mismatch");
  });

  it("reports an unreachable machine as failed/unreachable", async () => {
    const m = await registerMachine(svc, fleet, { host: fleet.refusedAddress });
    const r = await exec({ machine_id: m, command: "true" });
    expect(r.body.data.status).toBe("failed");
    expect(r.body.data.error.code).toBe("unreachable");
  });

  it("keeps env values and the command off every command line on the target", async () => {
    const secret = `s3cr3t-${unique()}`;
    const started = await svc.rest("POST", "/v1/commands/async", { machine_id: userMachine, command: `sleep 303.${secret.slice(7)}`, env: { API_KEY: secret } });
    expect(started.status).toBe(202);
    const id = started.body.data.id;
    await eventually(async () => (await svc.rest("GET", `/v1/commands/${id}`)).body.data.status === "running");
    await eventually(() => processesWith(`303.${secret.slice(7)}`).length > 0, 10_000, "the command to run");
    expect(processesWith(secret)).toEqual([]);
    await svc.rest("DELETE", `/v1/commands/${id}`);
    await eventually(async () => (await svc.rest("GET", `/v1/commands/${id}`)).body.data.status === "cancelled");
  });

  it("runs a command larger than the 128 KiB command-line limit", async () => {
    const big = `x=${"a".repeat(200 * 1024)}; echo \${#x}`;
    const r = await exec({ machine_id: rootMachine, command: big });
    expect(r.body.data.status).toBe("completed");
    expect(r.body.data.stdout).toBe(`${200 * 1024}\n`);
  });

  it("returns outputs above and below the in-memory hand-over size byte for byte", async () => {
    for (const n of [10, 65_536, 65_537, 300_000]) {
      const r = await exec({ machine_id: userMachine, command: `head -c ${n} /dev/zero | tr '\\0' x; printf E >&2` });
      expect(r.body.data.stdout).toBe("x".repeat(n));
      expect(r.body.data.stderr).toBe("E");
      expect(r.body.data.stdout_bytes).toBe(n);
      const g = await svc.rest("GET", `/v1/commands/${r.body.data.id}`);
      expect(g.body.data.stdout.length).toBe(n);
    }
  });

  it("does not interpret shell metacharacters in cwd, env or user", async () => {
    const marker = `/tmp/fleetrun-pwned-${unique()}`;
    const cwdAttack = await exec({ machine_id: rootMachine, command: "true", cwd: `/tmp/$(touch ${marker})` });
    expect(cwdAttack.body.data.status).toBe("failed");
    expect(cwdAttack.body.data.error.code).toBe("cwd_not_found");
    const envAttack = await exec({ machine_id: rootMachine, command: "true", env: { X: `'; touch ${marker}; '` } });
    expect(envAttack.body.data.status).toBe("completed");
    const userAttack = await exec({ machine_id: rootMachine, command: "true", user: `root; touch ${marker}` });
    expect(userAttack.status).toBe(400);
    expect(userAttack.body.error.field).toBe("user");
    expect(fs.existsSync(marker)).toBe(false);
  });

  it("rejects bad input with a 4xx naming the field, and keeps serving", async () => {
    const cases: [unknown, number, string | undefined][] = [
      ["{not json", 400, undefined],
      [{ machine_id: rootMachine, command: 42 }, 400, "command"],
      [{ machine_id: rootMachine, command: "" }, 400, "command"],
      [{ machine_id: rootMachine, command: "true", timeout: -1 }, 400, "timeout"],
      [{ machine_id: rootMachine, command: "true", timeout: 10 ** 13 }, 400, "timeout"],
      [{ machine_id: rootMachine, command: "true", timeout: "5s" }, 400, "timeout"],
      [{ machine_id: rootMachine, command: "true", env: { "A=B": "x" } }, 400, "env"],
      [{ machine_id: rootMachine, command: "true", env: { LD_PRELOAD: "/x.so" } }, 400, "env"],
      [{ machine_id: rootMachine, command: "true", env: { " BASH_ENV": "x" } }, 400, "env"],
      [{ machine_id: rootMachine, command: "true", env: { A: 1 } }, 400, "env"],
      [{ machine_id: rootMachine, command: "true", bogus: 1 }, 400, "bogus"],
      [{ machine_id: "mach_nope", command: "true" }, 404, "machine_id"],
      [{ command: "true" }, 400, "machine_id"],
    ];
    for (const [body, status, field] of cases) {
      const r = await exec(body as Record<string, unknown>);
      expect(r.status, JSON.stringify(body).slice(0, 80)).toBe(status);
      expect(r.body.error.code).toBe(status === 404 ? "not_found" : "invalid_argument");
      if (field) expect(r.body.error.field).toBe(field);
    }
    const huge = await exec({ machine_id: rootMachine, command: "x".repeat(5 * 1024 * 1024) });
    expect(huge.status).toBe(413);
    expect(huge.body.error).toBeTruthy();
    const still = await exec({ machine_id: "mach_local", command: "echo alive" });
    expect(still.body.data.stdout).toBe("alive\n");
  });

  it("requires a token everywhere except health", async () => {
    const r = await svc.rest("GET", "/v1/machines", undefined, { authorization: "" });
    expect(r.status).toBe(401);
    expect(r.body.error.code).toBe("unauthenticated");
    const bad = await svc.rest("GET", "/v1/machines", undefined, { authorization: "Bearer nope" });
    expect(bad.status).toBe(401);
    expect((await fetch(svc.url + "/healthz")).status).toBe(200);
    expect((await fetch(svc.url + "/readyz")).status).toBe(200);
  });

  it("serves Execute and GetCommand over gRPC (grpc-js, h2c) on the same port", async () => {
    const client = new GrpcClient(svc.url, svc.token);
    try {
      const cmd = await client.unary(CommandService.method.execute, { machineId: rootMachine, command: "printf 'a\\377b'; exit 7" });
      expect(cmd.status).toBe(CommandStatus.COMPLETED);
      expect(cmd.exitCode).toBe(7);
      expect(Buffer.from(cmd.stdout)).toEqual(Buffer.from([0x61, 0xff, 0x62]));
      const got = await client.unary(CommandService.method.getCommand, { id: cmd.id });
      expect(got.exitCode).toBe(7);
      await expect(client.unary(CommandService.method.getCommand, { id: cmd.id }, { token: null })).rejects.toMatchObject({ code: GrpcStatus.UNAUTHENTICATED });
      await expect(client.unary(CommandService.method.getCommand, { id: "cmd_nope" })).rejects.toMatchObject({ code: GrpcStatus.NOT_FOUND });
      await expect(client.unary(CommandService.method.execute, { machineId: rootMachine, command: "" })).rejects.toMatchObject({
        code: GrpcStatus.INVALID_ARGUMENT,
      });
    } finally {
      client.close();
    }
  });

  it("a cancelled gRPC Execute ends its remote process as cancelled", async () => {
    const client = new GrpcClient(svc.url, svc.token);
    const mark = `304.${unique()}`;
    try {
      let call: { cancel(): void } | undefined;
      const p = client.unary(CommandService.method.execute, { machineId: userMachine, command: `sleep ${mark}` }, { onCall: (c) => (call = c) });
      await eventually(() => processesWith(mark).length > 0, 10_000, "the command to start");
      call!.cancel();
      await expect(p).rejects.toMatchObject({ code: GrpcStatus.CANCELLED });
      await eventually(() => processesWith(mark).length === 0, 10_000, "the process to be gone");
      const hist = await svc.rest("GET", `/v1/machines/${userMachine}/commands?limit=50`);
      const item = hist.body.data.find((c: { command: string }) => c.command === `sleep ${mark}`);
      await eventually(async () => (await svc.rest("GET", `/v1/commands/${item.id}`)).body.data.status === "cancelled", 10_000, "status cancelled");
    } finally {
      client.close();
    }
  });

  it("a gRPC deadline cancels the command", async () => {
    const client = new GrpcClient(svc.url, svc.token);
    const mark = `305.${unique()}`;
    try {
      await expect(client.unary(CommandService.method.execute, { machineId: rootMachine, command: `sleep ${mark}` }, { deadline: 1500 })).rejects.toMatchObject({
        code: GrpcStatus.DEADLINE_EXCEEDED,
      });
      await eventually(() => processesWith(mark).length === 0, 10_000, "the process to be gone");
    } finally {
      client.close();
    }
  });

  it("exposes Prometheus metrics", async () => {
    const r = await fetch(svc.url + "/metrics");
    const text = await r.text();
    expect(r.status).toBe(200);
    expect(text).toMatch(/fleetrun_commands_total\{machine_id="mach_local",status="completed"\} \d+/);
    expect(text).toMatch(/fleetrun_ssh_connections \d+/);
    expect(text).toContain("fleetrun_command_duration_seconds_bucket");
  });
});
