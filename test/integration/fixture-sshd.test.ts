/**
 * Proves the sshd fixture: real OpenSSH on loopback, reachable with the system ssh
 * client and with ssh2, the advertised keys, fingerprints, users and sudo rules.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "ssh2";
import type { ConnectConfig } from "ssh2";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { probe, startSshFleet } from "../fixtures/sshd.ts";

const fleet = inject("sshFleet");

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the system OpenSSH client non-interactively with the fixture's client key. */
function systemSsh(keyFile: string, user: string, host: string, command: string): Promise<RunResult> {
  const args = [
    "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "IdentitiesOnly=yes",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10",
    "-i", keyFile,
    "-p", String(fleet.port),
    `${user}@${host}`,
    command,
  ];
  return new Promise((resolve) => {
    execFile("ssh", args, { timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : null;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Connects with ssh2, runs one command, disconnects. */
function ssh2Exec(config: ConnectConfig, command: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const client = new Client();
    let stdout = "";
    let stderr = "";
    client.on("error", (err) => reject(err));
    client.on("ready", () => {
      client.exec(command, (err, channel) => {
        if (err) {
          client.end();
          reject(err);
          return;
        }
        channel.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
        channel.stderr.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
        channel.on("close", (code: number | null) => {
          client.end();
          resolve({ code, stdout, stderr });
        });
      });
    });
    client.connect({ port: fleet.port, readyTimeout: 15_000, ...config });
  });
}

/** Connects with ssh2 and returns the host key blob it was shown (then disconnects). */
function seenHostKey(host: string, serverHostKey: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const client = new Client();
    let key: Buffer | undefined;
    client.on("error", reject);
    client.on("ready", () => {
      client.end();
      if (key === undefined) reject(new Error("hostVerifier was not called"));
      else resolve(key);
    });
    client.connect({
      host,
      port: fleet.port,
      username: fleet.users.root,
      privateKey: fleet.clientKey.privateKey,
      readyTimeout: 15_000,
      algorithms: { serverHostKey: [serverHostKey as never] },
      hostVerifier: (k: Buffer) => {
        key = Buffer.from(k);
        return true;
      },
    });
  });
}

function fingerprintOf(blob: Buffer): string {
  return "SHA256:" + createHash("sha256").update(blob).digest("base64").replace(/=+$/, "");
}

/** The key type name at the start of an SSH public key blob (uint32 length + string). */
function keyTypeOf(blob: Buffer): string {
  const len = blob.readUInt32BE(0);
  return blob.subarray(4, 4 + len).toString("ascii");
}

describe("sshd fixture", () => {
  let dir: string;
  let keyFile: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "fixture-sshd-test-"));
    keyFile = join(dir, "id_ed25519");
    await writeFile(keyFile, fleet.clientKey.privateKey, { mode: 0o600 });
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("describes 24 distinct loopback machines on one port", () => {
    expect(fleet.addresses).toHaveLength(24);
    expect(new Set(fleet.addresses).size).toBe(24);
    expect(fleet.addresses[0]).toBe("127.0.0.10");
    expect(fleet.addresses[23]).toBe("127.0.0.33");
    expect(fleet.refusedAddress).toBe("127.0.0.250");
    expect(fleet.users).toEqual({ root: "root", login: "frtest", runAs: "frrunas" });
    expect(fleet.hostKeys.map((k) => k.algorithm).sort()).toEqual(
      ["ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"],
    );
    expect(fleet.clientKey.privateKey).toContain("BEGIN OPENSSH PRIVATE KEY");
    expect(fleet.clientKey.publicKey).toMatch(/^ssh-ed25519 /);
  });

  const first = () => fleet.addresses[0] as string;
  // An address served by the second sshd process (addresses past the first 16).
  const last = () => fleet.addresses[fleet.addresses.length - 1] as string;

  it.each(["root", "frtest"] as const)("the system ssh client logs in as %s on two addresses", async (user) => {
    for (const host of [first(), last()]) {
      const r = await systemSsh(keyFile, user, host, "id -un");
      expect(r, `ssh ${user}@${host}`).toMatchObject({ code: 0 });
      expect(r.stdout.trim()).toBe(user);
    }
  });

  it.each(["root", "frtest"] as const)("the encrypted PEM key works with its passphrase for %s (ssh2)", async (user) => {
    expect(fleet.encryptedKey.privateKey).toContain("BEGIN RSA PRIVATE KEY");
    expect(fleet.encryptedKey.privateKey).toContain("ENCRYPTED");
    const r = await ssh2Exec(
      {
        host: first(),
        username: user,
        privateKey: fleet.encryptedKey.privateKey,
        passphrase: fleet.encryptedKey.passphrase,
      },
      "whoami",
    );
    expect(r).toMatchObject({ code: 0 });
    expect(r.stdout.trim()).toBe(user);
    // Without the right passphrase the key cannot even be parsed.
    expect(() =>
      new Client().connect({
        host: first(),
        port: fleet.port,
        username: user,
        privateKey: fleet.encryptedKey.privateKey,
        passphrase: "wrong",
      }),
    ).toThrow(/passphrase|decrypt|parse/i);
  });

  it.each([
    ["ssh-ed25519", "ssh-ed25519"],
    ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"],
    ["rsa-sha2-256", "ssh-rsa"],
  ])("the host key fingerprint seen with %s equals the fixture's value", async (negotiate, keyType) => {
    const blob = await seenHostKey(last(), negotiate);
    expect(keyTypeOf(blob)).toBe(keyType);
    const expected = fleet.hostKeys.find((k) => k.algorithm === keyType);
    expect(expected).toBeDefined();
    expect(fingerprintOf(blob)).toBe(expected?.fingerprint);
  });

  it("frtest logs in with its password, and a wrong password is refused", async () => {
    const ok = await ssh2Exec(
      { host: first(), username: fleet.users.login, password: fleet.loginPassword },
      "whoami",
    );
    expect(ok).toMatchObject({ code: 0 });
    expect(ok.stdout.trim()).toBe("frtest");

    const bad = ssh2Exec({ host: first(), username: fleet.users.login, password: fleet.loginPassword + "x" }, "whoami");
    await expect(bad).rejects.toMatchObject({ level: "client-authentication" });
  });

  it("frtest may sudo -n to frrunas but never to root", async () => {
    const asLogin = { host: last(), username: fleet.users.login, privateKey: fleet.clientKey.privateKey };
    const runAs = await ssh2Exec(asLogin, "sudo -n -u frrunas id -un");
    expect(runAs).toMatchObject({ code: 0 });
    expect(runAs.stdout.trim()).toBe("frrunas");

    const started = Date.now();
    const toRoot = await ssh2Exec(asLogin, "sudo -n -u root true");
    expect(toRoot.code).not.toBe(0);
    expect(toRoot.code).not.toBeNull();
    expect(toRoot.stderr).toMatch(/password is required|not allowed|may not run/i);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it("nothing listens on the refused address", async () => {
    expect(await probe(fleet.refusedAddress, fleet.port)).toBe("refused");
    const r = ssh2Exec({ host: fleet.refusedAddress, username: "root", privateKey: fleet.clientKey.privateKey }, "true");
    await expect(r).rejects.toMatchObject({ code: "ECONNREFUSED" });
  });

  it("a fleet of its own starts with defaults and stop() closes its port", async () => {
    const own = await startSshFleet();
    try {
      expect(own.addresses).toEqual(["127.0.0.10", "127.0.0.11"]);
      expect(own.port).not.toBe(fleet.port);
      const r = await ssh2Exec(
        { host: own.addresses[1], port: own.port, username: "root", privateKey: own.clientKey.privateKey },
        "id -un",
      );
      expect(r.stdout.trim()).toBe("root");
      // Keys are fresh per fleet: the shared fleet's key is not authorized here.
      const foreign = ssh2Exec(
        { host: own.addresses[0], port: own.port, username: "root", privateKey: fleet.clientKey.privateKey },
        "true",
      );
      await expect(foreign).rejects.toMatchObject({ level: "client-authentication" });
    } finally {
      await own.stop();
    }
    for (const host of own.addresses) expect(await probe(host, own.port)).toBe("refused");
  });
});
