/**
 * The audit trail's port: what the service reports, who keeps it is an adapter's
 * business (the append-only, hash-chained log in the store). Emitters never wait
 * on it and never pass env values, output or secrets.
 */

export type AuditOutcome = "ok" | "denied" | "error";

export interface AuditEvent {
  /** The caller's token name, or "system" for the service's own actions (e.g. pinning a host key). */
  actor: string;
  /** What was done: an RPC ("CommandService.Execute") or a system event ("machine.host_key_pinned"). */
  action: string;
  outcome: AuditOutcome;
  machineId?: string;
  commandId?: string;
  batchId?: string;
  /** The client's address as the server saw it. */
  clientAddress?: string;
  /** A short, secret-free explanation (an error code and message, a fingerprint). */
  detail?: string;
  /**
   * The command text a call asked to run (Execute, StartCommand, batches), capped:
   * "who ran what". Never its env values.
   */
  command?: string;
}

export interface AuditSink {
  record(event: AuditEvent): void;
}

/** For tests and tools that build parts of the service without an audit log. */
export const NO_AUDIT: AuditSink = { record() {} };

/** One stored record: the event, its place in the chain and its hash. */
export interface AuditRecord {
  /** 1, 2, 3, … without gaps. */
  seq: number;
  time: Date;
  actor: string;
  action: string;
  outcome: AuditOutcome;
  machineId: string | null;
  commandId: string | null;
  batchId: string | null;
  clientAddress: string | null;
  detail: string | null;
  command: string | null;
  /** Hex SHA-256 of the previous record (64 zeros before the first one). */
  prevHash: string;
  /** Hex SHA-256 over this record's canonical encoding and `prevHash`. */
  hash: string;
}

export interface AuditQuery {
  actor: string | null;
  action: string | null;
  machineId: string | null;
  commandId: string | null;
  outcome: AuditOutcome | null;
  /** Records at or after this time. */
  since: Date | null;
  /** Records before this time. */
  until: Date | null;
  limit: number;
  /** Opaque cursor from a previous page (`nextCursor`). */
  cursor: string | null;
}

export interface AuditPage {
  /** Newest first. */
  items: AuditRecord[];
  nextCursor: string | null;
}

/** The result of checking the whole stored chain. */
export type AuditVerification =
  | { ok: true; records: number; firstSeq: number | null; lastSeq: number | null; lastHash: string | null }
  | {
      ok: false;
      records: number;
      /** The first record (or missing sequence number) where the chain breaks. */
      brokenSeq: number;
      reason: string;
    };

/** The audit log as the service and the operator tools use it. */
export interface AuditLog extends AuditSink {
  list(query: AuditQuery): Promise<AuditPage>;
  /**
   * Checks every stored record in sequence order. `expectHead` is a head
   * (sequence number and hash) recorded earlier outside the database: the
   * chain must still contain it unchanged.
   */
  verify(options?: { expectHead?: { seq: number; hash: string } }): Promise<AuditVerification>;
  /**
   * Retention: deletes records older than `olderThan` (oldest first) and keeps
   * the last deleted one's sequence number and hash as the chain's anchor.
   * Returns how many were deleted.
   */
  prune(olderThan: Date): Promise<number>;
  /** The last record written (seq 0 before the first): worth keeping outside the database. */
  head(): Promise<{ seq: number; hash: string }>;
  /** Settles every record submitted so far. */
  drain(): Promise<void>;
  /** Who hears of records that could not be stored (the calls they describe were not failed). */
  onWriteError(handler: (err: unknown, lost: number) => void): void;
}
