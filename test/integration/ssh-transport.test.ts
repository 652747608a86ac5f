/**
 * The SSH transport against real OpenSSH (the shared sshd fleet on loopback).
 */
import net from "node:net";
import { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { afterAll, describe, expect, inject, it, vi } from "vitest";
import { TargetError } from "../../src/exec/errors.ts";
import type { MachineTarget, RemoteProcess, Transport } from "../../src/exec/ports.ts";
import { createSshTransport } from "../../src/ssh/ssh-transport.ts";
import { newHostKey } from "../fixtures/fake-sshd.ts";

const fleet = inject("sshFleet");

function machine(index: number, over: Partial<MachineTarget> = {}): MachineTarget {
  const host = fleet.addresses[index];
  if (host === undefined) throw new Error(`the fleet has no address #${index}`);
  return {
    id: `mach_sshit_${index}`,
    host,
    port: fleet.port,
    username: fleet.users.root,
    privateKey: fleet.clientKey.privateKey,
    passphrase: null,
    password: null,
    hostKeyFingerprint: null,
    hostKeyAlgorithm: null,
    hostKeyPolicy: over.hostKeyFingerprint ? "pinned" : "insecure_accept_any",
    ...over,
  };
}

async function readAll(proc: RemoteProcess): Promise<{ stdout: string; stderr: string }> {
  const collect = async (s: NodeJS.ReadableStream): Promise<string> => {
    const parts: Buffer[] = [];
    for await (const chunk of s) parts.push(Buffer.from(chunk as Buffer));
    return Buffer.concat(parts).toString("utf8");
  };
  const [stdout, stderr] = await Promise.all([collect(proc.stdout), collect(proc.stderr)]);
  return { stdout, stderr };
}

async function run(
  transport: Transport,
  target: MachineTarget,
  command: string,
  stdin?: string,
): Promise<{ stdout: string; stderr: string; code: number | null; signal: string | null }> {
  const proc = await transport.exec(target, command, stdin === undefined ? {} : { stdin });
  const out = await readAll(proc);
  const exit = await proc.done;
  return { ...out, ...exit };
}

async function rejection(p: Promise<unknown>): Promise<TargetError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof TargetError) return err;
    throw err;
  }
  throw new Error("expected a rejection");
}

function hostKey(algorithm: string): { algorithm: string; fingerprint: string } {
  const k = fleet.hostKeys.find((h) => h.algorithm === algorithm);
  if (!k) throw new Error(`the fleet has no ${algorithm} host key`);
  return k;
}

const transports: Transport[] = [];
function newTransport(options?: Parameters<typeof createSshTransport>[0]): Transport {
  const t = createSshTransport(options);
  transports.push(t);
  return t;
}
afterAll(async () => {
  for (const t of transports) {
    // Every test reads its processes to the end: nothing may stay open.
    expect(t.stats().channels).toBe(0);
    await t.close();
    expect(t.stats().connections).toBe(0);
  }
});

describe("ssh transport against OpenSSH", () => {
  const transport = newTransport();

  it("runs a command: stdout, stderr and the exit code; stdin is delivered", async () => {
    expect(await run(transport, machine(0), "echo out; echo err >&2; exit 3")).toEqual({
      stdout: "out\n",
      stderr: "err\n",
      code: 3,
      signal: null,
    });
    expect(await run(transport, machine(0), "cat; echo done", "line one\nline two\n")).toMatchObject({
      stdout: "line one\nline two\ndone\n",
      code: 0,
    });
    // A process killed by a signal: reported without SIG, no made-up exit code.
    expect(await run(transport, machine(0), "kill -s KILL $$")).toMatchObject({ code: null, signal: "KILL" });
    expect(transport.stats().channels).toBe(0);
  });

  it("logs in as root and as a normal user, by key, encrypted key and password", async () => {
    expect((await run(transport, machine(1), "id -un")).stdout).toBe("root\n");
    const login = fleet.users.login;
    expect((await run(transport, machine(1, { id: "mach_sshit_key", username: login }), "id -un")).stdout).toBe(
      `${login}\n`,
    );
    const encrypted = machine(1, {
      id: "mach_sshit_enc",
      username: login,
      privateKey: fleet.encryptedKey.privateKey,
      passphrase: fleet.encryptedKey.passphrase,
    });
    expect((await run(transport, encrypted, "id -un")).stdout).toBe(`${login}\n`);
    const byPassword = machine(1, {
      id: "mach_sshit_pw",
      username: login,
      privateKey: null,
      password: fleet.loginPassword,
    });
    expect((await run(transport, byPassword, "id -un")).stdout).toBe(`${login}\n`);
  });

  it("a wrong key, passphrase or password is auth_failed without the secret in the message", async () => {
    const otherKey = newHostKey().pem;
    const wrongKey = await rejection(transport.exec(machine(2, { id: "mach_sshit_wrongkey", privateKey: otherKey }), "true"));
    expect(wrongKey.reason).toBe("auth_failed");
    expect(wrongKey.message).toContain(`${fleet.addresses[2]}:${fleet.port}`);

    const wrongPassphrase = await rejection(
      transport.exec(
        machine(2, {
          id: "mach_sshit_wrongpass",
          privateKey: fleet.encryptedKey.privateKey,
          passphrase: "not-the-passphrase",
        }),
        "true",
      ),
    );
    expect(wrongPassphrase.reason).toBe("auth_failed");
    expect(wrongPassphrase.message).not.toContain("not-the-passphrase");

    const wrongPassword = await rejection(
      transport.exec(
        machine(2, { id: "mach_sshit_wrongpw", username: fleet.users.login, privateKey: null, password: "nope-nope-nope" }),
        "true",
      ),
    );
    expect(wrongPassword.reason).toBe("auth_failed");
    expect(wrongPassword.message).not.toContain("nope-nope-nope");
  });

  it("a pinned fingerprint of each host key type works when its algorithm is given", async () => {
    expect(fleet.hostKeys.length).toBeGreaterThanOrEqual(3);
    for (const key of fleet.hostKeys) {
      const target = machine(3, {
        id: `mach_sshit_pin_${key.algorithm}`,
        hostKeyFingerprint: key.fingerprint,
        hostKeyAlgorithm: key.algorithm,
      });
      const probe = await transport.probe(target);
      expect(probe.hostKeyFingerprint).toBe(key.fingerprint);
      expect(probe.hostKeyAlgorithm).toBe(key.algorithm === "ed25519" ? "ssh-ed25519" : key.algorithm);
      expect(probe.latencyMs).toBeGreaterThan(0);
    }
  });

  it("learns the type of a pinned non-default key (ecdsa) and reports it", async () => {
    const learned: [string, string][] = [];
    const t = newTransport({ onHostKeyLearned: (id, alg) => learned.push([id, alg]) });
    const ecdsa = hostKey("ecdsa-sha2-nistp256");
    const target = machine(4, { id: "mach_sshit_learn", hostKeyFingerprint: ecdsa.fingerprint });
    const probe = await t.probe(target);
    expect(probe).toMatchObject({ hostKeyFingerprint: ecdsa.fingerprint, hostKeyAlgorithm: "ecdsa-sha2-nistp256" });
    expect(learned).toEqual([["mach_sshit_learn", "ecdsa-sha2-nistp256"]]);
    expect((await run(t, target, "echo pinned")).stdout).toBe("pinned\n");
    // Reported once, not per connection.
    expect(learned).toHaveLength(1);
  });

  it("a wrong fingerprint is host_key_mismatch", async () => {
    const wrong = "SHA256:" + Buffer.alloc(32, 7).toString("base64").replace(/=+$/, "");
    const err = await rejection(transport.exec(machine(5, { id: "mach_sshit_mismatch", hostKeyFingerprint: wrong }), "true"));
    expect(err.reason).toBe("host_key_mismatch");
    expect(err.message).toContain(wrong);
    // The same with a declared algorithm.
    const err2 = await rejection(
      transport.exec(
        machine(5, { id: "mach_sshit_mismatch2", hostKeyFingerprint: wrong, hostKeyAlgorithm: "ssh-ed25519" }),
        "true",
      ),
    );
    expect(err2.reason).toBe("host_key_mismatch");
  });

  it("the refused address is unreachable quickly", async () => {
    const started = Date.now();
    const err = await rejection(
      transport.exec(machine(0, { id: "mach_sshit_refused", host: fleet.refusedAddress }), "true"),
    );
    expect(err.reason).toBe("unreachable");
    expect(err.message).toBe(`cannot connect to ${fleet.refusedAddress}:${fleet.port}: ECONNREFUSED`);
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it("30 concurrent execs on one machine all succeed (pool, channel limit, retries)", async () => {
    const t = newTransport();
    const target = machine(6, { id: "mach_sshit_fanin", username: fleet.users.login });
    let peakChannels = 0;
    const results = await Promise.all(
      Array.from({ length: 30 }, async (_, i) => {
        const proc = await t.exec(target, `sleep 0.2; echo ${i}`);
        peakChannels = Math.max(peakChannels, t.stats().channels);
        const { stdout } = await readAll(proc);
        const { code } = await proc.done;
        return `${code}:${stdout.trim()}`;
      }),
    );
    expect(results).toEqual(Array.from({ length: 30 }, (_, i) => `0:${i}`));
    expect(peakChannels).toBeGreaterThan(8); // more than one connection was used
    expect(peakChannels).toBeLessThanOrEqual(32);
    expect(t.stats().connections).toBeLessThanOrEqual(4);
    expect(t.stats().channels).toBe(0);
  });

  it("TCP_NODELAY is set on the connection to the target, which then serves sequential execs", async () => {
    // ssh2 leaves Nagle on: every exec would then wait for a delayed ACK (40+ ms).
    // Asserted on the socket itself; how long execs take is the bench's business.
    const noDelay = vi.spyOn(net.Socket.prototype, "setNoDelay");
    try {
      const t = newTransport();
      const target = machine(7, { id: "mach_sshit_latency", username: fleet.users.login });
      for (let i = 0; i < 5; i++) expect((await run(t, target, "true")).code).toBe(0);
      expect(t.stats().connections).toBe(1);
      // Each call's `this` is the socket; keep those that lead to the target.
      const args = noDelay.mock.contexts.flatMap((sock, i) => ((sock as net.Socket).remotePort === fleet.port ? [noDelay.mock.calls[i]?.[0]] : []));
      expect(args.length).toBeGreaterThanOrEqual(1);
      expect(args.every((a) => a === true)).toBe(true);
    } finally {
      noDelay.mockRestore();
    }
  });

  it("100 MB read slowly keeps memory bounded (backpressure reaches the remote side)", async () => {
    const t = newTransport();
    const total = 100 * 1024 * 1024;
    const proc = await t.exec(
      machine(8, { id: "mach_sshit_bulk", username: fleet.users.login }),
      `head -c ${total} /dev/zero; echo tail >&2`,
    );
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    let received = 0;
    let receivedWhenRemoteFinished = -1;
    // `tail` is written to stderr only after `head` wrote its last byte.
    proc.stderr.on("data", () => {
      if (receivedWhenRemoteFinished < 0) receivedWhenRemoteFinished = received;
    });
    const slow = new Writable({
      highWaterMark: 64 * 1024,
      write(chunk: Buffer, _enc, cb) {
        received += chunk.length;
        // A deliberately slow consumer (~30 MB/s), slower than the remote side.
        setTimeout(cb, 1);
      },
    });
    await pipeline(proc.stdout, slow);
    clearInterval(sampler);
    expect(received).toBe(total);
    expect(await proc.done).toEqual({ code: 0, signal: null });
    // The remote side could only finish once the consumer had nearly caught up:
    // what was in flight is bounded by the SSH window and stream buffers (~2 MB measured).
    expect(receivedWhenRemoteFinished).toBeGreaterThan(total - 16 * 1024 * 1024);
    // Without backpressure the 100 MB would pile up in memory; what grows is
    // garbage not yet collected (about 50 MiB measured).
    expect((peak - baseline) / (1024 * 1024)).toBeLessThan(80);
  });

  it("stats() counts open channels and returns to 0", async () => {
    const t = newTransport();
    const target = machine(9, { id: "mach_sshit_stats" });
    const procs = await Promise.all([0, 1, 2].map(() => t.exec(target, "read x; echo $x", { stdin: "go\n" })));
    expect(t.stats().channels).toBe(3);
    expect(t.stats().connections).toBeGreaterThanOrEqual(1);
    for (const p of procs) {
      expect((await readAll(p)).stdout).toBe("go\n");
      await p.done;
    }
    expect(t.stats().channels).toBe(0);
    t.forget(target.id);
    expect(t.stats().connections).toBe(0);
  });
});
