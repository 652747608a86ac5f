/**
 * The append-only, hash-chained audit log on SQLite or PostgreSQL. Records
 * are group-committed like the command store's hot writes (every record of
 * one event-loop turn in one transaction), and chained in that transaction
 * (see audit-writer.ts), so auditing every call costs the caller nothing but
 * a queue push. The store offers no update and no delete except retention.
 */
import { createHash } from "node:crypto";
import { InvalidArgumentError } from "../exec/errors.ts";
import type { AuditEvent, AuditLog, AuditOutcome, AuditPage, AuditQuery, AuditRecord, AuditVerification } from "../exec/audit-port.ts";
import { ChainVerifier, type ChainPoint, type ChainState } from "./audit-chain.ts";
import type { AuditWriter, TimedEvent } from "./audit-writer.ts";
import { kysely, toNumber, type DbContext } from "./db-context.ts";
import { WriteBatcher } from "./write-batcher.ts";
import type { AuditEventRow } from "./tables.ts";

/** Longest stored command text; a longer one is cut, with its size and SHA-256 appended. */
export const AUDIT_COMMAND_MAX = 4096;
const FIELD_MAX = { actor: 200, action: 200, id: 200, clientAddress: 200, detail: 1000 };
/** Records read per query while verifying. */
const VERIFY_PAGE = 2000;
/** Waits before retrying a batch that failed (a lost connection, a lock timeout). */
const RETRY_DELAYS_MS = [50, 250, 1000];
/** Records deleted per retention transaction. */
const PRUNE_BATCH = 1000;

export class SqlAuditLog implements AuditLog {
  readonly #ctx: DbContext;
  readonly #writer: AuditWriter;
  readonly #writes: WriteBatcher<TimedEvent, undefined>;
  #onWriteError: (err: unknown, lost: number) => void = () => {};

  constructor(ctx: DbContext, writer: AuditWriter) {
    this.#ctx = ctx;
    this.#writer = writer;
    this.#writes = new WriteBatcher<TimedEvent, undefined>(async (ops) => {
      // A failed batch is retried (the next ones wait, so the order holds), then reported.
      for (let attempt = 0; ; attempt++) {
        try {
          await writer.append(ops);
          return ops.map(() => undefined);
        } catch (err) {
          const delay = RETRY_DELAYS_MS[attempt];
          if (delay === undefined) {
            this.#onWriteError(err, ops.length);
            throw err;
          }
          await new Promise((r) => setTimeout(r, delay));
        }
      }
    });
  }

  record(event: AuditEvent): void {
    this.#writes.submit({ event: bounded(event), time: new Date() }).catch(() => {
      // Reported once per batch by the executor.
    });
  }

  drain(): Promise<void> {
    return this.#writes.drain();
  }

  onWriteError(handler: (err: unknown, lost: number) => void): void {
    this.#onWriteError = handler;
  }

  async list(q: AuditQuery): Promise<AuditPage> {
    let before: number | null = null;
    if (q.cursor !== null) {
      before = decodeAuditCursor(q.cursor);
      if (before === null) throw new InvalidArgumentError("cursor", "is not a page cursor from a previous page");
    }
    let sel = kysely(this.#ctx.fork()).selectFrom("audit_events").selectAll();
    if (q.actor !== null) sel = sel.where("actor", "=", q.actor);
    if (q.action !== null) sel = sel.where("action", "=", q.action);
    if (q.machineId !== null) sel = sel.where("machine_id", "=", q.machineId);
    if (q.commandId !== null) sel = sel.where("command_id", "=", q.commandId);
    if (q.outcome !== null) sel = sel.where("outcome", "=", q.outcome);
    if (q.since !== null) sel = sel.where("time", ">=", q.since.getTime());
    if (q.until !== null) sel = sel.where("time", "<", q.until.getTime());
    if (before !== null) sel = sel.where("seq", "<", before);
    const rows = await sel.orderBy("seq", "desc").limit(q.limit + 1).execute();
    const items = rows.slice(0, q.limit).map(fromRow);
    const last = items.at(-1);
    return { items, nextCursor: rows.length > q.limit && last !== undefined ? encodeAuditCursor(last.seq) : null };
  }

  async verify(options: { expectHead?: ChainPoint } = {}): Promise<AuditVerification> {
    // Retention may delete the start of the chain while it is read: then read again.
    for (let attempt = 0; ; attempt++) {
      const state = await this.#state();
      const result = await this.#verifyFrom(state, options.expectHead);
      if (result.ok || attempt >= 2) return result;
      const now = await this.#state();
      if (now.pruned.seq === state.pruned.seq) return result;
    }
  }

  async prune(olderThan: Date): Promise<number> {
    await this.drain();
    let total = 0;
    for (;;) {
      const n = await this.#writer.prune(olderThan.getTime(), PRUNE_BATCH);
      total += n;
      if (n < PRUNE_BATCH) return total;
    }
  }

  async head(): Promise<ChainPoint> {
    return (await this.#state()).head;
  }

  async #state(): Promise<ChainState> {
    const row = await kysely(this.#ctx.fork()).selectFrom("audit_chain_state").selectAll().where("id", "=", 1).executeTakeFirst();
    if (row === undefined) throw new Error("audit_chain_state has no row: the audit migration did not run");
    return {
      pruned: { seq: toNumber(row.pruned_seq), hash: row.pruned_hash },
      head: { seq: toNumber(row.head_seq), hash: row.head_hash },
    };
  }

  async #verifyFrom(state: ChainState, expectHead: ChainPoint | undefined): Promise<AuditVerification> {
    const verifier = new ChainVerifier(state, expectHead);
    // Up to the head read above: later records are not part of this check.
    let after = Number.MIN_SAFE_INTEGER;
    for (;;) {
      const rows = await kysely(this.#ctx.fork())
        .selectFrom("audit_events")
        .selectAll()
        .where("seq", ">", after)
        .where("seq", "<=", state.head.seq)
        .orderBy("seq")
        .limit(VERIFY_PAGE)
        .execute();
      for (const row of rows) if (!verifier.push(fromRow(row))) return verifier.finish();
      const last = rows.at(-1);
      if (rows.length < VERIFY_PAGE || last === undefined) return verifier.finish();
      after = toNumber(last.seq);
    }
  }
}

function fromRow(r: AuditEventRow): AuditRecord {
  return {
    seq: toNumber(r.seq),
    time: new Date(toNumber(r.time)),
    actor: r.actor,
    action: r.action,
    outcome: r.outcome as AuditOutcome,
    machineId: r.machine_id,
    commandId: r.command_id,
    batchId: r.batch_id,
    clientAddress: r.client_address,
    detail: r.detail,
    command: r.command,
    prevHash: r.prev_hash,
    hash: r.hash,
  };
}

/**
 * Within `max` characters, and without NUL, which PostgreSQL's text refuses: a
 * request that names an id with a NUL in it (and is refused for it) must not make
 * the batch of records it shares a transaction with fail.
 */
function cut(v: string | undefined, max: number): string | undefined {
  if (v === undefined) return v;
  const clean = v.includes("\0") ? v.replaceAll("\0", "\uFFFD") : v;
  return clean.length <= max ? clean : `${clean.slice(0, max - 1)}…`;
}

/** The event with every field within its size limit. */
export function bounded(e: AuditEvent): AuditEvent {
  const out: AuditEvent = {
    actor: cut(e.actor, FIELD_MAX.actor)!,
    action: cut(e.action, FIELD_MAX.action)!,
    outcome: e.outcome,
  };
  const machineId = cut(e.machineId, FIELD_MAX.id);
  const commandId = cut(e.commandId, FIELD_MAX.id);
  const batchId = cut(e.batchId, FIELD_MAX.id);
  const clientAddress = cut(e.clientAddress, FIELD_MAX.clientAddress);
  const detail = cut(e.detail, FIELD_MAX.detail);
  if (machineId !== undefined) out.machineId = machineId;
  if (commandId !== undefined) out.commandId = commandId;
  if (batchId !== undefined) out.batchId = batchId;
  if (clientAddress !== undefined) out.clientAddress = clientAddress;
  if (detail !== undefined) out.detail = detail;
  if (e.command !== undefined) out.command = boundedCommand(e.command);
  return out;
}

/** A command text within AUDIT_COMMAND_MAX characters; a longer one keeps its head, size and SHA-256. */
export function boundedCommand(text: string): string {
  const command = text.includes("\0") ? text.replaceAll("\0", "\uFFFD") : text;
  if (command.length <= AUDIT_COMMAND_MAX) return command;
  const bytes = Buffer.byteLength(command, "utf8");
  const sha = createHash("sha256").update(command, "utf8").digest("hex");
  const note = ` … [cut: ${bytes} bytes, sha256 ${sha}]`;
  return command.slice(0, AUDIT_COMMAND_MAX - note.length) + note;
}

export function encodeAuditCursor(seq: number): string {
  return Buffer.from(JSON.stringify([seq]), "utf8").toString("base64url");
}

/** The sequence number a cursor stands for, or null when `text` is not one. */
export function decodeAuditCursor(text: string): number | null {
  if (!/^[A-Za-z0-9_-]{1,200}$/.test(text)) return null;
  try {
    const v: unknown = JSON.parse(Buffer.from(text, "base64url").toString("utf8"));
    if (!Array.isArray(v) || v.length !== 1 || !Number.isSafeInteger(v[0]) || (v[0] as number) < 1) return null;
    return v[0] as number;
  } catch {
    return null;
  }
}
