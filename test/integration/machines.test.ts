/**
 * The machine registry over REST and gRPC-Web, health and reflection of the
 * real app, and secrets kept out of responses and logs.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import path from "node:path";
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { CommandService, CommandStatus } from "../../src/gen/fleetrun/v1/command_pb.js";
import { MachineService } from "../../src/gen/fleetrun/v1/machine_pb.js";
import { HealthCheckResponse_ServingStatus, Health } from "../../src/gen/grpc/health/v1/health_pb.js";
import { GrpcClient, ROOT, eventually, processesWith, registerMachine, startService, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");

describe("machines", () => {
  let svc: TestService;
  let logs = "";

  beforeAll(async () => {
    const sink = new Writable({
      write(chunk, _enc, cb) {
        logs += chunk.toString();
        cb();
      },
    });
    svc = await startService({ db: "sqlite", logStream: sink });
  });
  afterAll(async () => {
    await svc?.close();
  });

  it("registers, lists, gets, updates and deletes machines without ever returning credentials", async () => {
    const ed = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519")!;
    const created = await svc.rest("POST", "/v1/machines", {
      name: "reg-1",
      host: fleet.addresses[5],
      port: fleet.port,
      username: "frtest",
      password: fleet.loginPassword,
      host_key_fingerprint: ed.fingerprint,
      labels: { env: "test", role: "db" },
    });
    expect(created.status).toBe(201);
    const m = created.body.data;
    expect(m).toMatchObject({ name: "reg-1", port: fleet.port, username: "frtest", has_password: true, has_private_key: false, labels: { env: "test", role: "db" } });
    expect(m.id).toMatch(/^mach_/);
    expect(created.text).not.toContain(fleet.loginPassword);
    for (const f of ["password", "private_key", "passphrase"]) expect(m).not.toHaveProperty(f);

    const dup = await svc.rest("POST", "/v1/machines", { name: "reg-1", host: "127.0.0.1", username: "root", password: "x" });
    expect(dup.status).toBe(409);
    expect(dup.body.error.field).toBe("name");

    const list = await svc.rest("GET", "/v1/machines?label_selector=role=db");
    expect(list.body.data.map((x: { id: string }) => x.id)).toEqual([m.id]);
    expect(list.body.meta).toMatchObject({ total: 1 });
    expect(list.text).not.toContain(fleet.loginPassword);

    const test = await svc.rest("POST", `/v1/machines/${m.id}/test`, {});
    expect(test.body.data.ok).toBe(true);
    expect(test.body.data.latency).toBeGreaterThanOrEqual(0);
    expect(test.body.data.error).toBeNull();

    const patched = await svc.rest("PATCH", `/v1/machines/${m.id}`, { labels: { env: "prod" }, private_key: fleet.clientKey.privateKey });
    expect(patched.status).toBe(200);
    expect(patched.body.data).toMatchObject({ labels: { env: "prod" }, has_private_key: true, has_password: true });
    expect(patched.text).not.toContain("PRIVATE KEY");

    const run = await svc.rest("POST", "/v1/commands", { machine_id: m.id, command: "id -un" });
    expect(run.body.data.stdout).toBe("frtest\n");

    const del = await svc.rest("DELETE", `/v1/machines/${m.id}`);
    expect(del.status).toBe(200);
    expect((await svc.rest("GET", `/v1/machines/${m.id}`)).status).toBe(404);
    // Its history stays readable.
    const hist = await svc.rest("GET", `/v1/machines/${m.id}/commands`);
    expect(hist.status).toBe(200);
    expect(hist.body.data.map((c: { id: string }) => c.id)).toEqual([run.body.data.id]);
  });

  it("PATCH labels: a plain JSON body replaces them all; a merge patch changes or removes single labels; gRPC does the same with merge_labels/remove_labels", async () => {
    const id = await registerMachine(svc, fleet, { index: 7, user: "frtest", labels: { env: "test", role: "db", zone: "a" } });
    const mergePatch = (body: unknown) => svc.rest("PATCH", `/v1/machines/${id}`, body, { "content-type": "application/merge-patch+json" });

    const one = await mergePatch({ labels: { env: "prod" } });
    expect(one.status, one.text).toBe(200);
    expect(one.body.data.labels).toEqual({ env: "prod", role: "db", zone: "a" });

    const mixed = await mergePatch({ labels: { zone: null, tier: "gold" }, name: "renamed-7" });
    expect(mixed.status, mixed.text).toBe(200);
    expect(mixed.body.data.labels).toEqual({ env: "prod", role: "db", tier: "gold" });
    expect(mixed.body.data.name).toBe("renamed-7");

    // A null for a field that cannot be removed is refused, naming it.
    const badNull = await mergePatch({ port: null });
    expect(badNull.status).toBe(400);
    expect(badNull.body.error.field).toBe("port");

    // Plain JSON: `labels` replaces the whole map (as documented).
    const replaced = await svc.rest("PATCH", `/v1/machines/${id}`, { labels: { only: "this" } });
    expect(replaced.body.data.labels).toEqual({ only: "this" });

    const client = new GrpcClient(svc.url, svc.token);
    try {
      const m = await client.unary(MachineService.method.updateMachine, { id, mergeLabels: { a: "1", b: "2" }, removeLabels: ["only"] });
      expect(m.labels).toEqual({ a: "1", b: "2" });
      const m2 = await client.unary(MachineService.method.updateMachine, { id, removeLabels: ["a", "missing"] });
      expect(m2.labels).toEqual({ b: "2" });
      await expect(client.unary(MachineService.method.updateMachine, { id, labels: { x: "y" }, mergeLabels: { a: "1" } })).rejects.toMatchObject({
        code: 3,
        details: expect.stringContaining("merge_labels"),
      });
      await expect(client.unary(MachineService.method.updateMachine, { id, mergeLabels: { a: "1" }, removeLabels: ["a"] })).rejects.toMatchObject({ code: 3 });
    } finally {
      client.close();
    }

    // Merge patch `"labels": null` removes them all.
    const cleared = await mergePatch({ labels: null });
    expect(cleared.status, cleared.text).toBe(200);
    expect(cleared.body.data.labels).toEqual({});
    expect((await svc.rest("GET", `/v1/machines/${id}`)).body.data.labels).toEqual({});
  });

  it("rejects bad machine input naming the field", async () => {
    const base = { name: "bad", host: "127.0.0.1", username: "root", password: "pw" };
    const cases: [Record<string, unknown>, string][] = [
      [{ ...base, host: "bad host; rm -rf /" }, "host"],
      [{ ...base, port: 70000 }, "port"],
      [{ ...base, username: "root; id" }, "username"],
      [{ ...base, host_key_fingerprint: "MD5:aa:bb" }, "host_key_fingerprint"],
      [{ ...base, private_key: "not a key", password: undefined }, "private_key"],
      [{ name: "x", host: "127.0.0.1", username: "root" }, "private_key"],
      [{ ...base, labels: { "bad key!": "v" } }, "labels"],
    ];
    for (const [body, field] of cases) {
      const r = await svc.rest("POST", "/v1/machines", body);
      expect(r.status, field).toBe(400);
      expect(r.body.error.field).toBe(field);
      expect(r.text).not.toContain("pw");
    }
  });

  it("refuses to delete a machine with a running command unless forced; force cancels its commands first", async () => {
    const id = await registerMachine(svc, fleet, { index: 6, user: "frtest" });
    const mark = `30.${process.pid}${Date.now() % 100000}`;
    const started = await svc.rest("POST", "/v1/commands/async", { machine_id: id, command: `sleep ${mark}` });
    // A command with a waiting caller too (the light path).
    const waiting = svc.rest("POST", "/v1/commands", { machine_id: id, command: `sleep ${mark}1` });
    await eventually(async () => (await svc.rest("GET", `/v1/commands/${started.body.data.id}`)).body.data.status === "running");
    await eventually(() => processesWith(mark).length >= 2, 10_000, "both sleeps running");
    const refused = await svc.rest("DELETE", `/v1/machines/${id}`);
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe("failed_precondition");
    const forced = await svc.rest("DELETE", `/v1/machines/${id}?force=true`);
    expect(forced.status).toBe(200);
    // By the time the delete answers, its commands were cancelled and are gone from the target.
    const after = await svc.rest("GET", `/v1/commands/${started.body.data.id}`);
    expect(after.body.data.status).toBe("cancelled");
    expect((await waiting).body.data.status).toBe("cancelled");
    expect(processesWith(mark)).toEqual([]);
    expect((await svc.rest("GET", `/v1/machines/${id}`)).status).toBe(404);
  });

  it("a cancelled queued command never starts", async () => {
    const id = await registerMachine(svc, fleet, { index: 7, user: "frtest" });
    const id2 = await registerMachine(svc, fleet, { index: 8, user: "frtest" });
    // max_concurrency 1 keeps the second machine's command queued behind the first.
    const b2 = await svc.rest("POST", "/v1/batches", { machine_ids: [id, id2], command: "sleep 2", max_concurrency: 1 });
    expect(b2.status).toBe(202);
    const progress = await svc.rest("GET", `/v1/batches/${b2.body.data.id}`);
    const queued = Object.values(progress.body.data.machines as Record<string, { id: string; status: string; machine_id: string }>).find((c) => c.machine_id === id2)!;
    expect(queued.status).toBe("queued");
    expect((await svc.rest("DELETE", `/v1/commands/${queued.id}`)).status).toBe(200);
    await eventually(async () => (await svc.rest("GET", `/v1/batches/${b2.body.data.id}`)).body.data.status !== "running", 20_000, "batch end");
    const after = await svc.rest("GET", `/v1/commands/${queued.id}`);
    expect(after.body.data.status).toBe("cancelled");
    expect(after.body.data.started_at).toBeNull();
  });

  it("answers gRPC health and reflection without a token, and serves gRPC-Web", async () => {
    const client = new GrpcClient(svc.url, svc.token);
    try {
      const h = await client.unary(Health.method.check, { service: "" }, { token: null });
      expect(h.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      const hs = await client.unary(Health.method.check, { service: "fleetrun.v1.CommandService" }, { token: null });
      expect(hs.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    } finally {
      client.close();
    }
    // Asynchronously: the service answers from this very process.
    const { stdout: out } = await promisify(execFile)(
      path.join(ROOT, "node_modules/.bin/buf"),
      ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", svc.url],
      { encoding: "utf8" },
    );
    expect(out).toContain("fleetrun.v1.CommandService");
    expect(out).toContain("fleetrun.v1.MachineService");
    expect(out).toContain("grpc.health.v1.Health");

    const web = createClient(MachineService, createGrpcWebTransport({ baseUrl: svc.url, httpVersion: "1.1" }));
    const list = await web.listMachines({}, { headers: { authorization: `Bearer ${svc.token}` } });
    expect(list.data.some((m) => m.id === "mach_local")).toBe(true);
    const cmds = createClient(CommandService, createGrpcWebTransport({ baseUrl: svc.url, httpVersion: "1.1" }));
    const c = await cmds.execute({ machineId: "mach_local", command: "echo web" }, { headers: { authorization: `Bearer ${svc.token}` } });
    expect(c.status).toBe(CommandStatus.COMPLETED);
    expect(Buffer.from(c.stdout).toString()).toBe("web\n");
  });

  it("keeps credentials, tokens and env values out of the logs", async () => {
    const secretEnv = `envsecret-${Date.now()}`;
    await svc.rest("POST", "/v1/commands", { machine_id: "mach_local", command: "true", env: { SECRET: secretEnv } });
    await svc.rest("GET", `/v1/commands/cmd_x/stream?access_token=${svc.token}`);
    expect(logs).toContain("command ended");
    expect(logs).not.toContain(secretEnv);
    expect(logs).not.toContain(svc.token);
    expect(logs).not.toContain(fleet.loginPassword);
    expect(logs).not.toContain("PRIVATE KEY");
  });
});
