/** The audit hash chain without a database: what verification catches, the encoding's stability, and field bounds. */
import { describe, expect, it } from "vitest";
import type { AuditRecord } from "../../src/exec/audit-port.ts";
import { ChainVerifier, GENESIS_HASH, canonicalEncoding, recordHash, type ChainState } from "../../src/db/audit-chain.ts";
import { chainRows } from "../../src/db/audit-writer.ts";
import { normalClientAddress } from "../../src/rpc/audit-interceptor.ts";
import { bounded, boundedCommand, decodeAuditCursor, encodeAuditCursor, AUDIT_COMMAND_MAX } from "../../src/db/audit-store.ts";

function chain(n: number, start = { seq: 0, hash: GENESIS_HASH }): AuditRecord[] {
  const events = Array.from({ length: n }, (_, i) => ({
    event: { actor: "admin", action: "CommandService.Execute", outcome: "ok" as const, machineId: `mach_${i}`, commandId: `cmd_${i}`, clientAddress: "127.0.0.1", command: `echo ${i}` },
    time: new Date(1_767_225_600_000 + i * 1000),
  }));
  return chainRows(start, events).map((r) => ({
    seq: Number(r.seq),
    time: new Date(Number(r.time)),
    actor: r.actor,
    action: r.action,
    outcome: r.outcome as AuditRecord["outcome"],
    machineId: r.machine_id,
    commandId: r.command_id,
    batchId: r.batch_id,
    clientAddress: r.client_address,
    detail: r.detail,
    command: r.command,
    prevHash: r.prev_hash,
    hash: r.hash,
  }));
}

function stateOf(records: AuditRecord[], pruned = { seq: 0, hash: GENESIS_HASH }): ChainState {
  const last = records.at(-1);
  return { pruned, head: last ? { seq: last.seq, hash: last.hash } : pruned };
}

function verify(records: AuditRecord[], state: ChainState, expectHead?: { seq: number; hash: string }) {
  const v = new ChainVerifier(state, expectHead);
  for (const r of records) if (!v.push(r)) break;
  return v.finish();
}

describe("audit hash chain", () => {
  it("encodes a record canonically and hashes it with SHA-256 (a fixed vector)", () => {
    const r = chain(1)[0]!;
    expect(canonicalEncoding(r)).toBe(
      `["fleetrun.audit.v1",1,1767225600000,"admin","CommandService.Execute","ok","mach_0","cmd_0",null,"127.0.0.1",null,"echo 0","${GENESIS_HASH}"]`,
    );
    expect(r.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(recordHash(r)).toBe(r.hash);
    // Changing the encoding would make every stored chain unverifiable: this pins it
    // (the same value as `printf '%s' '<the encoding above>' | sha256sum`).
    expect(r.hash).toBe("1c3da9ceb7fb0c6a66d15357de8b3f1b24aaedf9773dd7e52ad85683df9e72db");
  });

  it("links each record to the previous hash and verifies an intact chain", () => {
    const rs = chain(5);
    for (let i = 1; i < rs.length; i++) expect(rs[i]!.prevHash).toBe(rs[i - 1]!.hash);
    expect(rs[0]!.prevHash).toBe(GENESIS_HASH);
    expect(verify(rs, stateOf(rs))).toEqual({ ok: true, records: 5, firstSeq: 1, lastSeq: 5, lastHash: rs[4]!.hash });
  });

  it("names an edited record (any field)", () => {
    for (const edit of [
      (r: AuditRecord) => (r.actor = "someone-else"),
      (r: AuditRecord) => (r.outcome = "denied"),
      (r: AuditRecord) => (r.command = "true"),
      (r: AuditRecord) => (r.time = new Date(r.time.getTime() + 1)),
      (r: AuditRecord) => (r.clientAddress = null),
    ]) {
      const rs = chain(5);
      edit(rs[2]!);
      const res = verify(rs, stateOf(rs));
      expect(res).toMatchObject({ ok: false, brokenSeq: 3 });
      expect(!res.ok && res.reason).toContain("altered");
    }
  });

  it("catches an edited record whose hash was recomputed: the next record's link breaks", () => {
    const rs = chain(5);
    rs[2]!.actor = "someone-else";
    rs[2]!.hash = recordHash(rs[2]!);
    expect(verify(rs, stateOf(chain(5)))).toMatchObject({ ok: false, brokenSeq: 4 });
  });

  it("names deleted records in the middle, at the start and at the tail", () => {
    const rs = chain(6);
    const state = stateOf(rs);
    expect(verify([...rs.slice(0, 2), ...rs.slice(4)], state)).toMatchObject({ ok: false, brokenSeq: 3, reason: expect.stringContaining("records 3–4 are missing") });
    expect(verify(rs.slice(1), state)).toMatchObject({ ok: false, brokenSeq: 1, reason: expect.stringContaining("record 1 is missing") });
    expect(verify(rs.slice(0, 4), state)).toMatchObject({ ok: false, brokenSeq: 5, reason: expect.stringContaining("tail was deleted") });
    expect(verify([], state)).toMatchObject({ ok: false, brokenSeq: 1 });
  });

  it("verifies after retention from the anchor, and catches a forged anchor", () => {
    const rs = chain(6);
    const anchor = { seq: 3, hash: rs[2]!.hash };
    expect(verify(rs.slice(3), stateOf(rs, anchor))).toMatchObject({ ok: true, records: 3, firstSeq: 4, lastSeq: 6 });
    // Everything pruned: the anchor is the head.
    expect(verify([], { pruned: { seq: 6, hash: rs[5]!.hash }, head: { seq: 6, hash: rs[5]!.hash } })).toMatchObject({ ok: true, records: 0 });
    expect(verify(rs.slice(3), stateOf(rs, { seq: 3, hash: GENESIS_HASH }))).toMatchObject({ ok: false, brokenSeq: 4 });
    // More deleted than the anchor says.
    expect(verify(rs.slice(4), stateOf(rs, anchor))).toMatchObject({ ok: false, brokenSeq: 4 });
  });

  it("with a head kept outside the database, catches a chain rewritten from scratch", () => {
    const original = chain(5);
    const kept = { seq: 4, hash: original[3]!.hash };
    // A rewrite with the same length, recomputed hashes and a new head: self-consistent...
    const forged = chain(5);
    forged[1]!.actor = "someone-else";
    const rehashed = chainRows({ seq: 0, hash: GENESIS_HASH }, forged.map((r) => ({ event: { ...r, machineId: r.machineId ?? undefined, commandId: r.commandId ?? undefined, batchId: undefined, clientAddress: r.clientAddress ?? undefined, detail: undefined, command: r.command ?? undefined }, time: r.time })));
    const rewritten = rehashed.map((row, i) => ({ ...forged[i]!, prevHash: row.prev_hash, hash: row.hash }));
    expect(verify(rewritten, stateOf(rewritten))).toMatchObject({ ok: true });
    // ...but not with the head kept elsewhere.
    expect(verify(rewritten, stateOf(rewritten), kept)).toMatchObject({ ok: false, brokenSeq: 4 });
    expect(verify(original, stateOf(original), kept)).toMatchObject({ ok: true });
    // A truncated and rewritten chain shorter than the kept head.
    const short = original.slice(0, 3);
    expect(verify(short, stateOf(short), kept)).toMatchObject({ ok: false, brokenSeq: 4 });
  });

  it("bounds field sizes; a long command keeps its head, size and SHA-256", () => {
    const long = "x".repeat(AUDIT_COMMAND_MAX * 3);
    const cut = boundedCommand(long);
    expect(cut.length).toBeLessThanOrEqual(AUDIT_COMMAND_MAX);
    expect(cut).toContain(`${long.length} bytes, sha256 `);
    expect(boundedCommand("echo hi")).toBe("echo hi");
    const e = bounded({ actor: "a".repeat(500), action: "A", outcome: "ok", detail: "d".repeat(5000) });
    expect(e.actor.length).toBe(200);
    expect(e.detail!.length).toBe(1000);
  });

  it("round-trips page cursors and refuses foreign ones", () => {
    expect(decodeAuditCursor(encodeAuditCursor(42))).toBe(42);
    expect(decodeAuditCursor("not a cursor!")).toBeNull();
    expect(decodeAuditCursor(Buffer.from('["x"]').toString("base64url"))).toBeNull();
    expect(decodeAuditCursor(Buffer.from("[0]").toString("base64url"))).toBeNull();
  });
});

describe("client addresses", () => {
  it("writes IPv4-mapped IPv6 addresses as IPv4 and leaves others alone", () => {
    expect(normalClientAddress("::ffff:10.0.0.7")).toBe("10.0.0.7");
    expect(normalClientAddress("::1")).toBe("::1");
    expect(normalClientAddress("2001:db8::1")).toBe("2001:db8::1");
    expect(normalClientAddress("127.0.0.1")).toBe("127.0.0.1");
    expect(normalClientAddress(undefined)).toBeUndefined();
  });
});
