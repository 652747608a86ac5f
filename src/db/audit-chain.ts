/**
 * The audit log's hash chain, free of any database: each record's hash is
 * SHA-256 over a canonical encoding of its fields and the previous record's
 * hash, so editing a record changes its hash, and deleting one breaks the
 * sequence and the next record's link.
 *
 * Canonical encoding (version 1): the UTF-8 bytes of the JSON array
 *   ["fleetrun.audit.v1", seq, time_ms, actor, action, outcome, machine_id,
 *    command_id, batch_id, client_address, detail, command, prev_hash]
 * with absent fields as `null`. JSON.stringify of an array of strings,
 * integers and nulls is deterministic, so any tool can recompute it.
 */
import { createHash } from "node:crypto";
import type { AuditRecord, AuditVerification } from "../exec/audit-port.ts";

/** The previous hash of the very first record. */
export const GENESIS_HASH = "0".repeat(64);

export type ChainFields = Omit<AuditRecord, "hash">;

export function canonicalEncoding(r: ChainFields): string {
  return JSON.stringify([
    "fleetrun.audit.v1",
    r.seq,
    r.time.getTime(),
    r.actor,
    r.action,
    r.outcome,
    r.machineId,
    r.commandId,
    r.batchId,
    r.clientAddress,
    r.detail,
    r.command,
    r.prevHash,
  ]);
}

export function recordHash(r: ChainFields): string {
  return createHash("sha256").update(canonicalEncoding(r), "utf8").digest("hex");
}

/** A point of the chain: a sequence number and the hash of the record there. */
export interface ChainPoint {
  seq: number;
  hash: string;
}

/**
 * Where the stored chain starts and ends, as kept beside it: `pruned` is the
 * last record retention deleted (seq 0 and the genesis hash when none was),
 * `head` the last record ever written.
 */
export interface ChainState {
  pruned: ChainPoint;
  head: ChainPoint;
}

/**
 * Checks records fed in sequence order; stops at the first break. Memory
 * stays constant, so a caller can stream a table of any size through it.
 */
export class ChainVerifier {
  readonly #state: ChainState;
  readonly #expectHead: ChainPoint | undefined;
  #prev: ChainPoint;
  #records = 0;
  #firstSeq: number | null = null;
  #failure: { brokenSeq: number; reason: string } | null = null;
  #sawExpected = false;

  constructor(state: ChainState, expectHead?: ChainPoint) {
    this.#state = state;
    this.#expectHead = expectHead;
    this.#prev = state.pruned;
  }

  get failed(): boolean {
    return this.#failure !== null;
  }

  /** Checks the next record; returns false once the chain is broken. */
  push(r: AuditRecord): boolean {
    if (this.#failure) return false;
    this.#records++;
    this.#firstSeq ??= r.seq;
    const expected = this.#prev.seq + 1;
    if (r.seq > expected) {
      return this.#fail(expected, `${missing(expected, r.seq - 1)} (deleted)`);
    }
    if (r.seq < expected) {
      return this.#fail(r.seq, `record ${r.seq} is out of order (expected ${expected}; the retention anchor or an earlier record was changed)`);
    }
    if (r.prevHash !== this.#prev.hash) {
      return this.#fail(r.seq, `record ${r.seq}'s prev_hash does not match the hash of ${this.#prev.seq === 0 ? "the chain's start" : this.#prev.seq === this.#state.pruned.seq ? `the retention anchor (record ${this.#prev.seq})` : `record ${this.#prev.seq}`}`);
    }
    if (recordHash(r) !== r.hash) {
      return this.#fail(r.seq, `record ${r.seq} was altered: its hash does not match its contents`);
    }
    if (this.#expectHead && r.seq === this.#expectHead.seq) {
      this.#sawExpected = true;
      if (r.hash !== this.#expectHead.hash) {
        return this.#fail(r.seq, `record ${r.seq}'s hash differs from the recorded head ${this.#expectHead.hash.slice(0, 16)}…: the chain was rewritten from there or earlier`);
      }
    }
    this.#prev = { seq: r.seq, hash: r.hash };
    return true;
  }

  finish(): AuditVerification {
    const records = this.#records;
    if (this.#failure) return { ok: false, records, ...this.#failure };
    const { head, pruned } = this.#state;
    if (head.seq > this.#prev.seq) {
      const from = this.#prev.seq + 1;
      return { ok: false, records, brokenSeq: from, reason: `${missing(from, head.seq)}: the chain's head is ${head.seq} (the tail was deleted)` };
    }
    if (head.seq < this.#prev.seq || head.hash !== this.#prev.hash) {
      return { ok: false, records, brokenSeq: this.#prev.seq, reason: `the stored head (record ${head.seq}) does not match the last record ${this.#prev.seq}` };
    }
    const want = this.#expectHead;
    if (want && !this.#sawExpected) {
      if (want.seq > this.#prev.seq) {
        return { ok: false, records, brokenSeq: this.#prev.seq + 1, reason: `the recorded head ${want.seq} is beyond the last record ${this.#prev.seq}: records were deleted and the chain rewritten` };
      }
      if (want.seq === pruned.seq && want.hash !== pruned.hash) {
        return { ok: false, records, brokenSeq: want.seq, reason: `the retention anchor's hash differs from the recorded head ${want.seq}` };
      }
      // Older than the retention anchor: deleted by retention, nothing left to compare.
    }
    return { ok: true, records, firstSeq: this.#firstSeq, lastSeq: this.#prev.seq === 0 ? null : this.#prev.seq, lastHash: this.#prev.seq === 0 ? null : this.#prev.hash };
  }

  #fail(brokenSeq: number, reason: string): false {
    this.#failure = { brokenSeq, reason };
    return false;
  }
}

function missing(from: number, to: number): string {
  return from === to ? `record ${from} is missing` : `records ${from}–${to} are missing`;
}
