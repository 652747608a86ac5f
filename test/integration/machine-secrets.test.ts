/**
 * Machine credentials at rest and the host key compare-and-set, on SQLite and
 * PostgreSQL: rows hold sealed values only, clear-text rows of an older
 * version are sealed at the next start (and leave no trace in the file), a
 * wrong or missing key or a moved ciphertext is a start-up error, rotation
 * re-seals under the newest key, and two first connections never pin two keys.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { openStores, type DbConfig } from "../../src/db/index.ts";
import { secretContext } from "../../src/db/machine-secrets.ts";
import { migrateTo } from "../../src/db/open-stores.ts";
import { FleetError } from "../../src/exec/errors.ts";
import type { MachineRecord } from "../../src/exec/ports.ts";
import { SecretBox, SecretKeyError, keyIdOf } from "../../src/secrets/index.ts";
import { createTestSchema, postgresSkipReason } from "../fixtures/postgres.ts";
import { databaseText, rawSql } from "../fixtures/raw-db.ts";

const pgSkip = await postgresSkipReason();

interface Target {
  config: DbConfig;
  cleanup(): Promise<void>;
}

async function sqliteTarget(): Promise<Target> {
  const dir = await mkdtemp(join(tmpdir(), "fleetrun-secrets-"));
  return { config: { dataDir: join(dir, "data") }, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

async function postgresTarget(): Promise<Target> {
  const { url, schema, drop } = await createTestSchema();
  const dir = await mkdtemp(join(tmpdir(), "fleetrun-secrets-"));
  return {
    config: { databaseUrl: url, schema, dataDir: dir },
    async cleanup() {
      await drop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const canary = (what: string) => `canary-${what}-${randomBytes(9).toString("hex")}`;
const newKey = () => randomBytes(32);

function machine(id: string, over: Partial<MachineRecord> = {}): MachineRecord {
  const at = new Date();
  return {
    id,
    name: `n-${id}`,
    host: "127.0.0.1",
    port: 22,
    username: "deploy",
    privateKey: null,
    passphrase: null,
    password: null,
    hostKeyFingerprint: null,
    hostKeyAlgorithm: null,
    hostKeyPolicy: "tofu",
    labels: {},
    createdAt: at,
    updatedAt: at,
    ...over,
  };
}

async function startError(p: Promise<unknown>): Promise<SecretKeyError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SecretKeyError);
  return err as SecretKeyError;
}

for (const [name, skip, target] of [
  ["SQLite", null, sqliteTarget],
  ["PostgreSQL", pgSkip, postgresTarget],
] as const) {
  describe.skipIf(skip !== null)(`credentials at rest on ${name}`, () => {
    it("stores sealed values bound to their row and column, never the clear text", async () => {
      const t = await target();
      try {
        const k1 = newKey();
        const password = canary("password");
        const passphrase = canary("passphrase");
        const privateKey = `-----BEGIN OPENSSH PRIVATE KEY-----\n${canary("key")}\n-----END OPENSSH PRIVATE KEY-----\n`;
        const stores = await openStores({ ...t.config, secrets: new SecretBox([k1], "FLEETRUN_SECRET_KEY") });
        const m = machine("mach_a", { password, passphrase, privateKey });
        await stores.machines.create(m);
        await stores.machines.create(machine("mach_b", { password: canary("other") }));
        expect(await stores.machines.get("mach_a")).toEqual(m);
        await stores.close();

        const [row] = await rawSql(t.config, "select private_key, passphrase, password from machines where id = ?", ["mach_a"]);
        for (const v of Object.values(row!)) expect(String(v)).toMatch(new RegExp(`^v1:${keyIdOf(k1)}:`));
        const text = await databaseText(t.config);
        for (const secret of [password, passphrase, privateKey.split("\n")[1]!]) expect(text).not.toContain(secret);

        // A ciphertext moved to another row does not open: the start says which row, not garbage.
        await rawSql(t.config, "update machines set password = ? where id = ?", [String(row!.password), "mach_b"]);
        const err = await startError(openStores({ ...t.config, secrets: new SecretBox([k1], "FLEETRUN_SECRET_KEY") }));
        expect(err.message).toMatch(/stored password of machine mach_b does not open under key/);
        expect(err.message).not.toContain(password);
      } finally {
        await t.cleanup();
      }
    });

    it("refuses to start with a wrong key or without the key, naming the setting and the key ids", async () => {
      const t = await target();
      try {
        const k1 = newKey();
        const stores = await openStores({ ...t.config, secrets: new SecretBox([k1], "FLEETRUN_SECRET_KEY") });
        await stores.machines.create(machine("mach_a", { password: canary("password") }));
        await stores.close();

        const wrong = await startError(openStores({ ...t.config, secrets: new SecretBox([newKey()], "FLEETRUN_SECRET_KEY") }));
        expect(wrong.message).toContain(`sealed under key ${keyIdOf(k1)} (1 value)`);
        expect(wrong.message).toMatch(/set FLEETRUN_SECRET_KEY or FLEETRUN_SECRET_KEY_FILE/);
        // No key configured: the generated data-dir key is not the one either.
        const missing = await startError(openStores(t.config));
        expect(missing.message).toContain("generated key file");
        // The right key still opens it: the failed starts changed nothing.
        const again = await openStores({ ...t.config, secrets: new SecretBox([k1], "FLEETRUN_SECRET_KEY") });
        expect((await again.machines.get("mach_a"))?.password).toMatch(/^canary-password-/);
        await again.close();
      } finally {
        await t.cleanup();
      }
    });

    it("a value sealed meanwhile under a key this process lacks fails the read by name, not with garbage or a bare 500", async () => {
      const t = await target();
      try {
        const [k1, k2] = [newKey(), newKey()];
        const stores = await openStores({ ...t.config, secrets: new SecretBox([k1], "FLEETRUN_SECRET_KEY") });
        await stores.machines.create(machine("mach_a", { password: canary("password") }));
        // Another replica, already on a newer key, rewrites the password.
        const other = new SecretBox([k2], "FLEETRUN_SECRET_KEY").seal("new password", secretContext("mach_a", "password"));
        await rawSql(t.config, "update machines set password = ? where id = ?", [other, "mach_a"]);
        const err = await stores.machines.get("mach_a").then(
          () => null,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(FleetError);
        expect(err).toMatchObject({ code: "failed_precondition" });
        expect((err as Error).message).toContain(`sealed under key ${keyIdOf(k2)}, which is not configured`);
        await stores.close();
      } finally {
        await t.cleanup();
      }
    });

    it("rotation: a new key first keeps old values readable; rotate-secrets re-seals them so the old key can go", async () => {
      const t = await target();
      try {
        const [k1, k2] = [newKey(), newKey()];
        const password = canary("password");
        const s1 = await openStores({ ...t.config, secrets: new SecretBox([k1], "FLEETRUN_SECRET_KEY") });
        await s1.machines.create(machine("mach_a", { password, passphrase: canary("pp"), privateKey: "key text" }));
        await s1.machines.create(machine("mach_b", { password: canary("pw") }));
        await s1.close();

        const s2 = await openStores({ ...t.config, secrets: new SecretBox([k2, k1], "FLEETRUN_SECRET_KEY") });
        expect(s2.secretsReport).toEqual({ sealed: 0, underOlderKeys: 4 });
        expect((await s2.machines.get("mach_a"))?.password).toBe(password);
        expect(await s2.rotateSecrets()).toEqual({ machines: 2, resealed: 4, keyId: keyIdOf(k2) });
        expect(await s2.rotateSecrets()).toEqual({ machines: 0, resealed: 0, keyId: keyIdOf(k2) });
        await s2.close();

        const rows = await rawSql(t.config, "select private_key, passphrase, password from machines");
        for (const v of rows.flatMap((r) => Object.values(r)).filter((v) => v !== null)) expect(String(v)).toMatch(new RegExp(`^v1:${keyIdOf(k2)}:`));
        const s3 = await openStores({ ...t.config, secrets: new SecretBox([k2], "FLEETRUN_SECRET_KEY") });
        expect((await s3.machines.get("mach_a"))?.password).toBe(password);
        await s3.close();
      } finally {
        await t.cleanup();
      }
    });

    it("migration 0002 and the first start after it: policies from fingerprints, clear-text credentials sealed and gone from the file", async () => {
      const t = await target();
      try {
        await migrateTo(t.config, "0001_initial_schema");
        const password = canary("legacy-password");
        const passphrase = canary("legacy-passphrase");
        const insert = `insert into machines (id, name, host, port, username, private_key, passphrase, password, host_key_fingerprint, host_key_algorithm, labels, created_at, updated_at)
          values (?, ?, '127.0.0.1', 22, 'root', ?, ?, ?, ?, null, '{}', 1, 1)`;
        const fp = `SHA256:${"A".repeat(43)}`;
        await rawSql(t.config, insert, ["mach_pinned", "pinned", "legacy key text", passphrase, null, fp]);
        await rawSql(t.config, insert, ["mach_open", "open", null, null, password, null]);
        await rawSql(t.config, insert, ["mach_empty", "empty", null, null, canary("pw"), ""]);

        const k1 = newKey();
        const stores = await openStores({ ...t.config, secrets: new SecretBox([k1], "FLEETRUN_SECRET_KEY") });
        expect(stores.secretsReport).toEqual({ sealed: 4, underOlderKeys: 0 });
        expect(await stores.machines.get("mach_pinned")).toMatchObject({ hostKeyPolicy: "pinned", hostKeyFingerprint: fp, passphrase, privateKey: "legacy key text" });
        expect(await stores.machines.get("mach_open")).toMatchObject({ hostKeyPolicy: "tofu", hostKeyFingerprint: null, password });
        expect(await stores.machines.get("mach_empty")).toMatchObject({ hostKeyPolicy: "tofu", hostKeyFingerprint: null });
        // While the service runs: the old clear text is not left in free pages or the WAL either.
        const text = await databaseText(t.config);
        expect(text).not.toContain(password);
        expect(text).not.toContain(passphrase);
        await stores.close();

        const rows = await rawSql(t.config, "select password, passphrase, private_key from machines");
        for (const v of rows.flatMap((r) => Object.values(r)).filter((v) => v !== null)) expect(String(v)).toMatch(/^v1:/);
        // A second start has nothing left to seal.
        const again = await openStores({ ...t.config, secrets: new SecretBox([k1], "FLEETRUN_SECRET_KEY") });
        expect(again.secretsReport).toEqual({ sealed: 0, underOlderKeys: 0 });
        await again.close();
      } finally {
        await t.cleanup();
      }
    });

    it("trust on first use is a compare-and-set: of many concurrent first keys exactly one is pinned", async () => {
      const t = await target();
      try {
        const stores = await openStores(t.config);
        await stores.machines.create(machine("mach_tofu", { password: "pw" }));
        const fps = Array.from({ length: 8 }, (_, i) => `SHA256:${String(i).repeat(43)}`);
        const results = await Promise.all(fps.map((fp) => stores.machines.pinHostKey("mach_tofu", fp, "ssh-ed25519")));
        const winners = results.filter((r) => r.pinned);
        expect(winners).toHaveLength(1);
        const pinned = (await stores.machines.get("mach_tofu"))!;
        expect(pinned).toMatchObject({ hostKeyPolicy: "pinned", hostKeyAlgorithm: "ssh-ed25519" });
        expect(fps).toContain(pinned.hostKeyFingerprint);
        // Everyone learns the one fingerprint that was pinned.
        for (const r of results) expect(r.fingerprint).toBe(pinned.hostKeyFingerprint);
        // A pinned machine is never re-pinned, nor is one that is not tofu.
        expect(await stores.machines.pinHostKey("mach_tofu", fps[0]!, "ssh-rsa")).toEqual({ pinned: false, fingerprint: pinned.hostKeyFingerprint });
        await stores.machines.create(machine("mach_insecure", { password: "pw", hostKeyPolicy: "insecure_accept_any" }));
        expect(await stores.machines.pinHostKey("mach_insecure", fps[0]!, "ssh-rsa")).toEqual({ pinned: false, fingerprint: null });
        await stores.close();
      } finally {
        await t.cleanup();
      }
    });
  });
}
