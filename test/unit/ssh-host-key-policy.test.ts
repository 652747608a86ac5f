/**
 * Host key policies against an in-process impostor SSH server that records
 * every authentication request: a key that fails the check never sees a
 * password or a key offer, trust on first use pins before authenticating and
 * exactly once, and a password is offered at most once per connection.
 */
import { randomBytes } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { TargetError } from "../../src/exec/errors.ts";
import type { HostKeyTrust, MachineTarget, Transport } from "../../src/exec/ports.ts";
import { createSshTransport } from "../../src/ssh/ssh-transport.ts";
import { FakeSshd, newHostKey } from "../fixtures/fake-sshd.ts";

const USER = "tester";
const PASSWORD = `canary-password-${randomBytes(8).toString("hex")}`;

function target(port: number, over: Partial<MachineTarget> = {}): MachineTarget {
  return {
    id: "mach_hk",
    host: "127.0.0.1",
    port,
    username: USER,
    privateKey: null,
    passphrase: null,
    password: PASSWORD,
    hostKeyFingerprint: null,
    hostKeyAlgorithm: null,
    hostKeyPolicy: "tofu",
    ...over,
  };
}

/** The store's compare-and-set, in memory, with what was reported. */
function memoryTrust(onPin?: () => void): { trust: HostKeyTrust; pinned: () => string | null; events: string[] } {
  let pin: string | null = null;
  const events: string[] = [];
  return {
    pinned: () => pin,
    events,
    trust: {
      async pinFirstKey(_id, fingerprint) {
        onPin?.();
        await new Promise((r) => setTimeout(r, 5));
        if (pin === null) {
          pin = fingerprint;
          events.push(`pinned ${fingerprint}`);
        }
        return pin;
      },
      mismatch(_id, expected, presented) {
        events.push(`mismatch ${presented.fingerprint} (expected ${expected})`);
      },
      acceptedInsecure(_id, presented) {
        events.push(`insecure ${presented.fingerprint}`);
      },
    },
  };
}

async function eventually(fn: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function server(opts: ConstructorParameters<typeof FakeSshd>[0] = {}): Promise<FakeSshd> {
  const s = await new FakeSshd({ user: USER, password: PASSWORD, ...opts }).listen();
  cleanups.push(() => s.close());
  return s;
}

function transport(trust?: HostKeyTrust): Transport {
  const t = createSshTransport({ connectTimeoutMs: 2_000, handshakeTimeoutMs: 5_000, ...(trust ? { hostKeys: trust } : {}) });
  cleanups.push(() => t.close());
  return t;
}

async function run(t: Transport, m: MachineTarget): Promise<void> {
  const p = await t.exec(m, "true");
  p.stdout.resume();
  p.stderr.resume();
  await p.done;
}

async function failure(p: Promise<unknown>): Promise<TargetError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TargetError);
  return err as TargetError;
}

describe("host key policies against an impostor server", () => {
  it("pinned: a matching key authenticates with the password once; another key gets no authentication request at all", async () => {
    const real = await server();
    const { trust, events } = memoryTrust();
    const t = transport(trust);
    await run(t, target(real.port, { hostKeyPolicy: "pinned", hostKeyFingerprint: real.hostKey.fingerprint }));
    expect(real.secretsReceived).toEqual([PASSWORD]);

    const impostor = await server();
    const err = await failure(run(t, target(impostor.port, { hostKeyPolicy: "pinned", hostKeyFingerprint: real.hostKey.fingerprint })));
    expect(err.reason).toBe("host_key_mismatch");
    expect(err.presentedHostKey).toEqual({ fingerprint: impostor.hostKey.fingerprint, keyType: "ssh-ed25519" });
    expect(err.message).not.toContain(PASSWORD);
    expect(impostor.connections).toBeGreaterThan(0);
    expect(impostor.attempts).toEqual([]);
    expect(events).toEqual([`mismatch ${impostor.hostKey.fingerprint} (expected ${real.hostKey.fingerprint})`]);
  });

  it("tofu: the first key is pinned before any authentication request; a swapped key then gets none", async () => {
    const hostKey = newHostKey();
    const first = await server({ hostKey });
    let attemptsWhenPinning = -1;
    const { trust, pinned, events } = memoryTrust(() => (attemptsWhenPinning = first.attempts.length));
    const t = transport(trust);
    await run(t, target(first.port));
    expect(pinned()).toBe(hostKey.fingerprint);
    expect(attemptsWhenPinning).toBe(0);
    expect(first.secretsReceived).toEqual([PASSWORD]);
    const port = first.port;
    await first.close();
    await eventually(() => t.stats().connections === 0);

    // Another server on the same address: both the stale target (no pin in it
    // yet) and the re-read one (now pinned) are refused before authentication.
    const impostor = await new FakeSshd({ user: USER, password: PASSWORD }).listen(port);
    cleanups.push(() => impostor.close());
    expect((await failure(run(t, target(port)))).reason).toBe("host_key_mismatch");
    t.forget("mach_hk");
    const err = await failure(run(t, target(port, { hostKeyPolicy: "pinned", hostKeyFingerprint: hostKey.fingerprint })));
    expect(err.reason).toBe("host_key_mismatch");
    expect(impostor.attempts).toEqual([]);
    expect(events.filter((e) => e.startsWith("pinned"))).toHaveLength(1);
    expect(events.filter((e) => e.startsWith("mismatch"))).toHaveLength(2);
  });

  it("tofu: of two concurrent first connections that see different keys, exactly one pins and the other sends nothing", async () => {
    const a = await server();
    const b = await server();
    const { trust, pinned } = memoryTrust();
    const t = transport(trust);
    // Two pools (the transport keeps one per machine id); the trust stands for the one machine row.
    const results = await Promise.allSettled([run(t, target(a.port, { id: "mach_1" })), run(t, target(b.port, { id: "mach_2" }))]);
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    const loser = results.findIndex((r) => r.status === "rejected");
    const [winnerServer, loserServer] = loser === 0 ? [b, a] : [a, b];
    expect(pinned()).toBe(winnerServer.hostKey.fingerprint);
    expect(((results[loser] as PromiseRejectedResult).reason as TargetError).reason).toBe("host_key_mismatch");
    expect(loserServer.attempts).toEqual([]);
    expect(winnerServer.secretsReceived).toEqual([PASSWORD]);
  });

  it("tofu without a store to record the key in is refused before authentication", async () => {
    const s = await server();
    const t = transport();
    expect((await failure(run(t, target(s.port)))).reason).toBe("host_key_mismatch");
    expect(s.attempts).toEqual([]);
  });

  it("insecure_accept_any: any key, reported at every connection", async () => {
    const s = await server();
    const { trust, events } = memoryTrust();
    const t = transport(trust);
    await run(t, target(s.port, { hostKeyPolicy: "insecure_accept_any" }));
    t.forget("mach_hk");
    await run(t, target(s.port, { hostKeyPolicy: "insecure_accept_any" }));
    expect(events).toEqual([`insecure ${s.hostKey.fingerprint}`, `insecure ${s.hostKey.fingerprint}`]);
  });

  it("offers a password at most once per connection: as password, or as one keyboard-interactive answer", async () => {
    // A server that takes neither: the password goes once, not again through keyboard-interactive.
    const refusing = await server({ password: "something else" });
    const { trust } = memoryTrust();
    const t = transport(trust);
    const err = await failure(run(t, target(refusing.port, { hostKeyPolicy: "insecure_accept_any" })));
    expect(err.reason).toBe("auth_failed");
    expect(refusing.secretsReceived).toEqual([PASSWORD]);
    expect(refusing.attempts.map((a) => a.method)).toEqual(["none", "password"]);

    // A server with keyboard-interactive only: one answer, then it runs.
    const kbd = await server({ keyboardInteractiveOnly: true });
    await run(t, target(kbd.port, { id: "mach_kbd", hostKeyPolicy: "insecure_accept_any" }));
    expect(kbd.secretsReceived).toEqual([PASSWORD]);
    expect(kbd.attempts.map((a) => a.method)).toEqual(["none", "keyboard-interactive"]);
  });
});
