/**
 * Host key policies and credentials at rest through the real service, the
 * real OpenSSH fleet and both databases: policy defaults and the 400s, trust
 * on first use through TestMachine and concurrent first commands, a swapped
 * host key refused before authentication (an impostor sshd on loopback gets
 * no password and no key offer), canary credentials absent from responses,
 * logs, metrics, audit records and the database, a restart that still runs
 * commands, and a hostile corpus for machine fields.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { promisify } from "node:util";
import { toJsonString } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { DbConfig } from "../../src/db/index.ts";
import type { AuditEvent } from "../../src/exec/audit-port.ts";
import { HostKeyPolicy, MachineSchema, MachineService } from "../../src/gen/fleetrun/v1/machine_pb.js";
import { FakeSshd } from "../fixtures/fake-sshd.ts";
import { createTestSchema, postgresSkipReason } from "../fixtures/postgres.ts";
import { databaseText } from "../fixtures/raw-db.ts";
import { GrpcClient, startService, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");
const pgSkip = await postgresSkipReason();
const fleetFingerprints = fleet.hostKeys.map((k) => k.fingerprint);
const ed25519 = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519")!.fingerprint;
const rsa = fleet.hostKeys.find((k) => k.algorithm === "ssh-rsa")!.fingerprint;

/** The fleet's client key, re-encrypted under a canary passphrase (2 KDF rounds: ssh2's bcrypt is slow JS). */
async function encryptedClientKey(passphrase: string): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-key-"));
  try {
    const file = path.join(dir, "id");
    fs.writeFileSync(file, fleet.clientKey.privateKey, { mode: 0o600 });
    await promisify(execFile)("ssh-keygen", ["-q", "-p", "-a", "2", "-f", file, "-P", "", "-N", passphrase]);
    return fs.readFileSync(file, "utf8");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const unique = () => randomBytes(4).toString("hex");

for (const [db, skip] of [
  ["sqlite", null],
  ["postgres", pgSkip],
] as const) {
  describe.skipIf(skip !== null)(`host keys and credentials on ${db}`, () => {
    let svc: TestService;
    let logs = "";
    const audit: AuditEvent[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        logs += chunk.toString();
        cb();
      },
    });
    let dataDir: string;
    let schema: { url: string; schema: string; drop(): Promise<void> } | null = null;

    const start = async () =>
      startService({ db, logStream: sink, audit: { record: (e) => audit.push(e) }, dataDir, ...(schema ? { postgres: { url: schema.url, schema: schema.schema } } : {}) });
    const dbConfig = (): DbConfig => (schema ? { dataDir, databaseUrl: schema.url, schema: schema.schema } : { dataDir });

    beforeAll(async () => {
      dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-hk-"));
      if (db === "postgres") schema = await createTestSchema();
      svc = await start();
    });
    afterAll(async () => {
      await svc?.close();
      await schema?.drop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    });

    const create = (body: Record<string, unknown>) => svc.rest("POST", "/v1/machines", { name: `hk-${unique()}`, port: fleet.port, ...body });
    const run = async (machineId: string, command = "id -un") => (await svc.rest("POST", "/v1/commands", { machine_id: machineId, command })).body.data;

    it("defaults to pinned with a fingerprint and tofu without; refuses empty, missing and contradictory settings naming the field", async () => {
      const base = { host: fleet.addresses[1], username: "root", private_key: fleet.clientKey.privateKey };
      const pinned = await create({ ...base, host_key_fingerprint: ed25519 });
      expect(pinned.body.data).toMatchObject({ host_key_policy: "pinned", host_key_fingerprint: ed25519 });
      const tofu = await create(base);
      expect(tofu.body.data).toMatchObject({ host_key_policy: "tofu", host_key_fingerprint: null });
      const insecure = await create({ ...base, host_key_policy: "insecure_accept_any" });
      expect(insecure.body.data.host_key_policy).toBe("insecure_accept_any");
      expect((await svc.rest("GET", `/v1/machines/${insecure.body.data.id}`)).body.data.host_key_policy).toBe("insecure_accept_any");
      const listed = (await svc.rest("GET", "/v1/machines?limit=1000")).body.data as { id: string; host_key_policy: string | null }[];
      expect(listed.find((m) => m.id === insecure.body.data.id)?.host_key_policy).toBe("insecure_accept_any");
      expect(listed.find((m) => m.id === "mach_local")?.host_key_policy).toBeNull();

      const cases: [Record<string, unknown>, string][] = [
        [{ ...base, host_key_fingerprint: "" }, "host_key_fingerprint"],
        [{ ...base, host_key_policy: "pinned" }, "host_key_fingerprint"],
        [{ ...base, host_key_policy: "tofu", host_key_fingerprint: ed25519 }, "host_key_policy"],
        [{ ...base, host_key_policy: "insecure_accept_any", host_key_fingerprint: ed25519 }, "host_key_policy"],
        [{ ...base, host_key_policy: "" }, "host_key_policy"],
        [{ ...base, host_key_policy: "accept" }, "host_key_policy"],
        [{ ...base, host_key_policy: 2 }, "host_key_policy"],
        [{ ...base, host_key_fingerprint: `SHA256:${"A".repeat(42)}` }, "host_key_fingerprint"],
      ];
      for (const [body, field] of cases) {
        const r = await create(body);
        expect(r.status, JSON.stringify(body.host_key_policy ?? body.host_key_fingerprint)).toBe(400);
        expect(r.body.error.field).toBe(field);
        expect(r.text).not.toContain("PRIVATE KEY");
      }

      // Updates follow the same rules.
      const id = pinned.body.data.id;
      const patch = (body: unknown, headers: Record<string, string> = {}) => svc.rest("PATCH", `/v1/machines/${id}`, body, headers);
      expect((await patch({ host_key_fingerprint: "" })).body.error.field).toBe("host_key_fingerprint");
      const nulled = await patch({ host_key_fingerprint: null }, { "content-type": "application/merge-patch+json" });
      expect([nulled.status, nulled.body.error.field]).toEqual([400, "host_key_fingerprint"]);
      expect((await patch({ host_key_policy: "tofu", host_key_fingerprint: rsa })).body.error.field).toBe("host_key_policy");
      const relearn = await patch({ host_key_policy: "tofu" });
      expect(relearn.body.data).toMatchObject({ host_key_policy: "tofu", host_key_fingerprint: null, host_key_algorithm: null });
      expect((await patch({ host_key_policy: "pinned" })).body.error.field).toBe("host_key_fingerprint");
      const repinned = await patch({ host_key_fingerprint: ed25519 });
      expect(repinned.body.data).toMatchObject({ host_key_policy: "pinned", host_key_fingerprint: ed25519 });

      const client = new GrpcClient(svc.url, svc.token);
      try {
        const m = await client.unary(MachineService.method.getMachine, { id });
        expect(m.hostKeyPolicy).toBe(HostKeyPolicy.PINNED);
        await expect(
          client.unary(MachineService.method.createMachine, { name: `hk-${unique()}`, host: "127.0.0.1", username: "root", password: "pw", hostKeyPolicy: HostKeyPolicy.UNSPECIFIED }),
        ).rejects.toMatchObject({ code: 3, details: expect.stringContaining("host_key_policy") });
      } finally {
        client.close();
      }
    });

    it("tofu: TestMachine shows the key it saw and pins it; concurrent first commands agree on one pin, audited once", async () => {
      const base = { host: fleet.addresses[2], username: "root", private_key: fleet.clientKey.privateKey };
      const viaTest = (await create(base)).body.data.id as string;
      const first = await svc.rest("POST", `/v1/machines/${viaTest}/test`, {});
      expect(first.body.data).toMatchObject({ ok: true, host_key_pinned: true, host_key_policy: "pinned" });
      expect(fleetFingerprints).toContain(first.body.data.host_key_fingerprint);
      const got = (await svc.rest("GET", `/v1/machines/${viaTest}`)).body.data;
      expect(got).toMatchObject({ host_key_policy: "pinned", host_key_fingerprint: first.body.data.host_key_fingerprint, host_key_algorithm: first.body.data.host_key_algorithm });
      const second = await svc.rest("POST", `/v1/machines/${viaTest}/test`, {});
      expect(second.body.data).toMatchObject({ ok: true, host_key_pinned: false, host_key_policy: "pinned" });

      const viaCommands = (await create(base)).body.data.id as string;
      const results = await Promise.all(Array.from({ length: 6 }, () => run(viaCommands, "true")));
      expect(results.map((c) => c.status)).toEqual(Array(6).fill("completed"));
      const m = (await svc.rest("GET", `/v1/machines/${viaCommands}`)).body.data;
      expect(m.host_key_policy).toBe("pinned");
      expect(fleetFingerprints).toContain(m.host_key_fingerprint);
      const pins = audit.filter((e) => e.action === "machine.host_key_pinned" && e.machineId === viaCommands);
      expect(pins).toHaveLength(1);
      expect(pins[0]).toMatchObject({ actor: "system", outcome: "ok" });
      expect(pins[0]!.detail).toContain(m.host_key_fingerprint);
    });

    it("a swapped host key is refused before authentication, pinned or tofu: the impostor gets no password and no key offer", async () => {
      const impostor = await new FakeSshd({ user: "frtest", password: fleet.loginPassword }).listen();
      try {
        const creds = { username: "frtest", password: fleet.loginPassword, private_key: fleet.clientKey.privateKey };
        const pinned = (await create({ host: fleet.addresses[3], ...creds, host_key_fingerprint: ed25519 })).body.data.id as string;
        const tofu = (await create({ host: fleet.addresses[3], ...creds })).body.data.id as string;
        expect((await svc.rest("POST", `/v1/machines/${tofu}/test`, {})).body.data.host_key_pinned).toBe(true);
        for (const id of [pinned, tofu]) {
          expect((await run(id)).stdout).toBe("frtest\n");
          // The host now answers with another key (the impostor on loopback).
          const moved = await svc.rest("PATCH", `/v1/machines/${id}`, { host: "127.0.0.1", port: impostor.port });
          expect(moved.body.data.host_key_policy).toBe("pinned");
          const c = await run(id);
          expect(c.status).toBe("failed");
          expect(c.error.code).toBe("host_key_mismatch");
          expect(c.error.message).toContain(impostor.hostKey.fingerprint);
          const t = (await svc.rest("POST", `/v1/machines/${id}/test`, {})).body.data;
          expect(t).toMatchObject({ ok: false, error: { code: "host_key_mismatch" }, host_key_fingerprint: impostor.hostKey.fingerprint, host_key_policy: "pinned" });
          const refused = audit.filter((e) => e.action === "machine.host_key_mismatch" && e.machineId === id);
          expect(refused.length).toBeGreaterThanOrEqual(2);
          expect(refused[0]).toMatchObject({ actor: "system", outcome: "denied" });
          expect(refused[0]!.detail).toContain(impostor.hostKey.fingerprint);
        }
        expect(impostor.connections).toBeGreaterThanOrEqual(4);
        expect(impostor.attempts).toEqual([]);
      } finally {
        await impostor.close();
      }
    });

    it("insecure_accept_any connects to any key and audits every connection", async () => {
      const id = (await create({ host: fleet.addresses[4], username: "root", private_key: fleet.clientKey.privateKey, host_key_policy: "insecure_accept_any" })).body.data.id;
      expect((await run(id)).stdout).toBe("root\n");
      const events = audit.filter((e) => e.action === "machine.host_key_accepted_insecure" && e.machineId === id);
      expect(events.length).toBeGreaterThanOrEqual(1);
      expect(fleetFingerprints.some((fp) => events[0]!.detail?.includes(fp))).toBe(true);
    });

    it("canary credentials never appear in responses, logs, metrics, audit records or the database, and still work after a restart", async () => {
      const passphrase = `canary-passphrase-${unique()}${unique()}`;
      const privateKey = await encryptedClientKey(passphrase);
      const keyLine = privateKey.split("\n")[2]!;
      expect(keyLine.length).toBeGreaterThan(40);
      const badPassword = `canary-bad-password-${unique()}${unique()}`;
      const canaries = [passphrase, keyLine, fleet.loginPassword, badPassword];
      const texts: string[] = [];
      const keep = <T extends { text: string }>(r: T): T => (texts.push(r.text), r);

      const withKey = keep(await create({ host: fleet.addresses[5], username: "root", private_key: privateKey, passphrase })).body.data.id as string;
      const withPassword = keep(await create({ host: fleet.addresses[5], username: "frtest", password: fleet.loginPassword })).body.data.id as string;
      const wrong = keep(await create({ host: fleet.addresses[5], username: "frtest", password: badPassword, host_key_fingerprint: ed25519 })).body.data.id as string;
      for (const id of [withKey, withPassword, wrong]) {
        keep(await svc.rest("GET", `/v1/machines/${id}`));
        keep(await svc.rest("POST", `/v1/machines/${id}/test`, {}));
        keep(await svc.rest("PATCH", `/v1/machines/${id}`, { labels: { canary: "yes" } }));
      }
      keep(await svc.rest("GET", "/v1/machines?limit=1000"));
      const ran = keep(await svc.rest("POST", "/v1/commands", { machine_id: withKey, command: "id -un" }));
      expect(ran.body.data.stdout).toBe("root\n");
      const failed = keep(await svc.rest("POST", "/v1/commands", { machine_id: wrong, command: "true" }));
      expect(failed.body.data.error.code).toBe("auth_failed");
      const badKey = keep(await svc.rest("PATCH", `/v1/machines/${withKey}`, { private_key: privateKey, passphrase: `${passphrase}x` }));
      expect([badKey.status, badKey.body.error.field]).toEqual([400, "private_key"]);
      const client = new GrpcClient(svc.url, svc.token);
      try {
        texts.push(toJsonString(MachineSchema, await client.unary(MachineService.method.getMachine, { id: withKey })));
      } finally {
        client.close();
      }
      texts.push((await fetch(`${svc.url}/metrics`)).status === 200 ? await (await fetch(`${svc.url}/metrics`)).text() : "");
      texts.push(logs, JSON.stringify(audit));
      const stored = await databaseText(dbConfig());
      expect(stored).toContain(withKey);
      for (const canary of canaries) {
        for (const text of texts) expect(text.includes(canary), `canary in ${text.slice(0, 80)}`).toBe(false);
        expect(stored.includes(canary), "canary in the database").toBe(false);
      }

      // A restart on the same database and key: the credentials still open.
      await svc.close();
      svc = await start();
      expect((await run(withKey)).stdout).toBe("root\n");
      expect((await run(withPassword)).stdout).toBe("frtest\n");
      expect((await svc.rest("GET", `/v1/machines/${withPassword}`)).body.data).toMatchObject({ has_password: true, host_key_policy: "pinned" });
      expect(logs).not.toContain(fleet.loginPassword);
    }, 90_000);

    it("hostile machine field values are refused naming the field, or kept verbatim and never interpreted", async () => {
      const marker = path.join(os.tmpdir(), `fleetrun-hostile-${unique()}`);
      const hostile = [`$(touch ${marker})`, `\`touch ${marker}\``, `'; touch ${marker}; '`, `"; touch ${marker}; "`, `a\ntouch ${marker}`, `-oProxyCommand=touch ${marker}`, "x\u0000y", "../../etc/passwd", "☃".repeat(300)];
      const base = { host: fleet.addresses[6], username: "root", private_key: fleet.clientKey.privateKey, host_key_fingerprint: ed25519 };
      for (const v of hostile) {
        for (const field of ["host", "username", "host_key_fingerprint", "host_key_algorithm", "host_key_policy"]) {
          const r = await create({ ...base, [field]: v });
          expect(r.status, `${field}=${JSON.stringify(v).slice(0, 40)}`).toBe(400);
          expect(r.body.error.field).toBe(field);
        }
        const label = await create({ ...base, labels: { [v.slice(0, 60)]: "v" } });
        expect(label.status).toBe(400);
        // Free text is kept as given (or refused), and never reaches a shell.
        const named = await create({ ...base, name: v, labels: { k: v.slice(0, 255) } });
        if (named.status === 201) {
          const got = (await svc.rest("GET", `/v1/machines/${named.body.data.id}`)).body.data;
          expect(got.name).toBe(v);
          expect(got.labels.k).toBe(v.slice(0, 255));
          expect((await run(named.body.data.id, "true")).status).toBe("completed");
        } else {
          expect([named.status, named.body.error.field]).toEqual([400, "name"]);
        }
        const pw = await create({ ...base, name: `hk-${unique()}`, password: v, private_key: undefined });
        expect(pw.text.includes(v) && v.length > 3 ? "echoed" : "ok").toBe("ok");
      }
      expect(fs.existsSync(marker)).toBe(false);
    });
  });
}
