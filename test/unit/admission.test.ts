/**
 * Admission accounting without sockets: leases, slots, batches reusing their
 * places, followers, and the handshake pacer's bounded queue for new starts.
 */
import { describe, expect, it } from "vitest";
import { Admission, RETRY_AFTER_SECONDS, type AdmissionLimit } from "../../src/exec/admission.ts";
import { ResourceExhaustedError } from "../../src/exec/errors.ts";
import type { MachineTarget } from "../../src/exec/ports.ts";
import { createHandshakePacer } from "../../src/ssh/handshake-pacer.ts";
import { createSshTransport } from "../../src/ssh/ssh-transport.ts";

const SETTINGS: Record<AdmissionLimit, string> = {
  active_commands: "FLEETRUN_MAX_ACTIVE_COMMANDS",
  pending_starts: "FLEETRUN_MAX_PENDING_STARTS",
  ssh_handshake_queue: "FLEETRUN_SSH_HANDSHAKE_QUEUE",
  followers: "FLEETRUN_MAX_FOLLOWERS",
};

function admission(maxActiveCommands: number, maxPendingStarts: number, maxFollowers = 10) {
  const refused: AdmissionLimit[] = [];
  const a = new Admission({ limits: { maxActiveCommands, maxPendingStarts, maxFollowers }, settings: SETTINGS, onRefused: (l) => refused.push(l) });
  return { a, refused };
}

function refusal(fn: () => unknown): ResourceExhaustedError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ResourceExhaustedError);
    return e as ResourceExhaustedError;
  }
  throw new Error("not refused");
}

describe("admission", () => {
  it("counts a start as pending until it runs and as active until it ends", () => {
    const { a } = admission(2, 2);
    const lease = a.admitCommands(1);
    const slot = lease.slot();
    lease.seal();
    expect([a.activeCommands, a.pendingStarts]).toEqual([1, 1]);
    slot.started();
    slot.started();
    expect([a.activeCommands, a.pendingStarts]).toEqual([1, 0]);
    slot.end();
    slot.end();
    expect([a.activeCommands, a.pendingStarts]).toEqual([0, 0]);
  });

  it("refuses beyond the active limit with the setting and a retry-after, and counts the refusal", () => {
    const { a, refused } = admission(1, 5);
    a.admitCommands(1).slot();
    const e = refusal(() => a.admitCommands(1));
    expect(e.code).toBe("resource_exhausted");
    expect(e.limit).toBe("active_commands");
    expect(e.message).toContain("FLEETRUN_MAX_ACTIVE_COMMANDS");
    expect(e.retryAfterSeconds).toBe(RETRY_AFTER_SECONDS.active_commands);
    expect(refused).toEqual(["active_commands"]);
  });

  it("refuses beyond the pending limit, and never asks the transport when another limit refuses", () => {
    const { a } = admission(10, 1);
    a.admitCommands(1).slot();
    let asked = 0;
    const e = refusal(() => a.admitCommands(1, () => (asked++, { release() {} })));
    expect(e.limit).toBe("pending_starts");
    expect(asked).toBe(0);
  });

  it("refuses when the transport has no handshake place, taking nothing", () => {
    const { a } = admission(10, 10);
    const e = refusal(() => a.admitCommands(1, () => null));
    expect(e.limit).toBe("ssh_handshake_queue");
    expect(e.message).toContain("FLEETRUN_SSH_HANDSHAKE_QUEUE");
    expect([a.activeCommands, a.pendingStarts]).toEqual([0, 0]);
  });

  it("gives the handshake reservation back once the start was dispatched, or when it ends", () => {
    const { a } = admission(10, 10);
    let released = 0;
    const lease = a.admitCommands(1, () => ({ release: () => released++ }));
    const slot = lease.slot();
    lease.seal();
    expect(released).toBe(0);
    slot.dispatched();
    expect(released).toBe(1);
    slot.end();
    const other = a.admitCommands(1, () => ({ release: () => released++ }));
    other.seal();
    expect(released).toBe(2);
  });

  it("a batch takes its first wave at once and reuses the places of ended items", () => {
    const { a } = admission(3, 3);
    const lease = a.admitCommands(2);
    expect([a.activeCommands, a.pendingStarts]).toEqual([2, 2]);
    expect(refusal(() => a.admitCommands(2)).limit).toBe("active_commands");
    const s1 = lease.slot();
    const s2 = lease.slot();
    s1.started();
    s1.end();
    expect([a.activeCommands, a.pendingStarts]).toEqual([2, 1]);
    // A single start cannot take the place the batch keeps for its next item.
    a.admitCommands(1).seal();
    const s3 = lease.slot();
    expect([a.activeCommands, a.pendingStarts]).toEqual([2, 2]);
    lease.seal();
    s2.end();
    s3.end();
    expect([a.activeCommands, a.pendingStarts]).toEqual([0, 0]);
  });

  it("sealing a batch that launched fewer items than its wave gives the rest back at once", () => {
    const { a } = admission(5, 5);
    const lease = a.admitCommands(4);
    const s = lease.slot();
    lease.seal();
    expect([a.activeCommands, a.pendingStarts]).toEqual([1, 1]);
    s.end();
    expect([a.activeCommands, a.pendingStarts]).toEqual([0, 0]);
  });

  it("bounds followers", () => {
    const { a } = admission(1, 1, 2);
    const f1 = a.admitFollower();
    a.admitFollower();
    expect(refusal(() => a.admitFollower()).limit).toBe("followers");
    f1.release();
    f1.release();
    expect(a.followers).toBe(1);
    a.admitFollower();
  });
});

describe("handshake pacer reservations", () => {
  it("holds a free slot, then queue places up to the bound, then refuses", async () => {
    const pacer = createHandshakePacer({ perDestination: 1, overall: 10, maxQueued: 1 });
    const r1 = pacer.reserve("h:22");
    expect(r1).not.toBeNull();
    const r2 = pacer.reserve("h:22");
    expect(r2).not.toBeNull();
    expect(pacer.reserve("h:22")).toBeNull();
    // Another destination still has a free slot.
    expect(pacer.reserve("g:22")).not.toBeNull();
    // Start the first handshake and queue the second: the bound now counts the real queue.
    r1!();
    const release = await pacer.acquire("h:22");
    const queued = pacer.acquire("h:22");
    r2!();
    expect(pacer.waiting()).toBe(1);
    expect(pacer.reserve("h:22")).toBeNull();
    release();
    (await queued)();
    expect(pacer.waiting()).toBe(0);
    expect(pacer.reserve("h:22")).not.toBeNull();
  });

  it("with a queue bound of 0 only a start that can handshake at once is admitted", () => {
    const pacer = createHandshakePacer({ perDestination: 1, overall: 10, maxQueued: 0 });
    expect(pacer.reserve("h:22")).not.toBeNull();
    expect(pacer.reserve("h:22")).toBeNull();
  });
});

describe("SSH transport start reservations", () => {
  const target = (id: string): MachineTarget => ({
    id,
    host: "192.0.2.1",
    port: 22,
    username: "root",
    privateKey: null,
    passphrase: null,
    password: "x",
    hostKeyFingerprint: null,
    hostKeyAlgorithm: null,
    hostKeyPolicy: "insecure_accept_any",
  });

  it("lets starts on one machine share a reserved handshake, and refuses another machine's that would queue", async () => {
    const t = createSshTransport({ handshakesPerDestination: 1, handshakeQueue: 0, maxChannelsPerConnection: 2 });
    try {
      const a1 = t.reserveStart!(target("a"));
      const a2 = t.reserveStart!(target("a"));
      expect(a1).not.toBeNull();
      expect(a2).not.toBeNull();
      // Same host:port, no free handshake slot, no queue: refused.
      expect(t.reserveStart!(target("b"))).toBeNull();
      // A third start on `a` needs a second connection (2 channels each): refused too.
      expect(t.reserveStart!(target("a"))).toBeNull();
      a1!.release();
      a2!.release();
      a2!.release();
      expect(t.reserveStart!(target("b"))).not.toBeNull();
      expect(t.handshakeStats!()).toEqual({ active: 0, queued: 0, maxQueued: 0 });
    } finally {
      await t.close();
    }
  });
});
