/**
 * The audit log's writes, on the drivers' own clients like the command hot
 * path: appending a batch of records and retention, each ONE transaction
 * that first takes the chain's state row (the head and the retention anchor),
 * then links the new records to it and moves it.
 *
 * Order across processes: on PostgreSQL the state row is read `for update`,
 * so the transactions of several replicas appending at once queue on that
 * row lock and each links to the head the previous one committed; sequence
 * numbers stay gap-free and the chain linear. (A row lock rather than
 * pg_advisory_xact_lock: it is scoped to this schema's table, where an
 * advisory key is shared by every schema of the database.) On SQLite one
 * process owns the file and a synchronous better-sqlite3 transaction runs
 * within one event-loop turn, so nothing interleaves.
 */
import type { AuditEvent } from "../exec/audit-port.ts";
import { recordHash, type ChainPoint, type ChainFields } from "./audit-chain.ts";
import type { PgPool, PgQueryable } from "./pg-hot-path.ts";
import type { SqliteDatabase } from "./sqlite-hot-path.ts";
import type { AuditEventRow } from "./tables.ts";

/** An event with the time it happened (set when it was reported). */
export interface TimedEvent {
  event: AuditEvent;
  time: Date;
}

export interface AuditWriter {
  /** Appends the events in order, as one transaction. */
  append(events: readonly TimedEvent[]): Promise<void>;
  /**
   * Deletes up to `maxRows` of the oldest records, stopping at the first one
   * at or after `olderThanMs`; the last deleted becomes the anchor. Returns
   * how many were deleted.
   */
  prune(olderThanMs: number, maxRows: number): Promise<number>;
}

const COLUMNS = [
  "seq",
  "time",
  "actor",
  "action",
  "outcome",
  "machine_id",
  "command_id",
  "batch_id",
  "client_address",
  "detail",
  "command",
  "prev_hash",
  "hash",
] as const satisfies readonly (keyof AuditEventRow)[];

/** The chained rows of `events`, following `head`. */
export function chainRows(head: ChainPoint, events: readonly TimedEvent[]): AuditEventRow[] {
  let prev = head;
  return events.map(({ event: e, time }) => {
    const fields: ChainFields = {
      seq: prev.seq + 1,
      time,
      actor: e.actor,
      action: e.action,
      outcome: e.outcome,
      machineId: e.machineId ?? null,
      commandId: e.commandId ?? null,
      batchId: e.batchId ?? null,
      clientAddress: e.clientAddress ?? null,
      detail: e.detail ?? null,
      command: e.command ?? null,
      prevHash: prev.hash,
    };
    const hash = recordHash(fields);
    prev = { seq: fields.seq, hash };
    return {
      seq: fields.seq,
      time: time.getTime(),
      actor: fields.actor,
      action: fields.action,
      outcome: fields.outcome,
      machine_id: fields.machineId,
      command_id: fields.commandId,
      batch_id: fields.batchId,
      client_address: fields.clientAddress,
      detail: fields.detail,
      command: fields.command,
      prev_hash: fields.prevHash,
      hash,
    };
  });
}

// ---------------------------------------------------------------------------
// SQLite

export class SqliteAuditWriter implements AuditWriter {
  readonly #db: SqliteDatabase;
  readonly #append: (events: readonly TimedEvent[]) => void;

  constructor(db: SqliteDatabase) {
    this.#db = db;
    // Prepared once: preparing is most of better-sqlite3's cost per query.
    const head = db.prepare("select head_seq as seq, head_hash as hash from audit_chain_state where id = 1");
    const insert = db.prepare(`insert into audit_events (${COLUMNS.join(", ")}) values (${COLUMNS.map(() => "?").join(", ")})`);
    const move = db.prepare("update audit_chain_state set head_seq = ?, head_hash = ? where id = 1");
    this.#append = db.transaction((events: readonly TimedEvent[]) => {
      const rows = chainRows(point(head.get()), events);
      for (const r of rows) insert.run(...COLUMNS.map((c) => r[c]));
      const last = rows.at(-1);
      if (last) move.run(last.seq, last.hash);
    });
  }

  async append(events: readonly TimedEvent[]): Promise<void> {
    await this.#idle();
    this.#append(events);
  }

  async prune(olderThanMs: number, maxRows: number): Promise<number> {
    await this.#idle();
    const db = this.#db;
    return db.transaction(() => {
      const oldest = db.prepare("select seq, hash, time from audit_events order by seq limit ?").all(maxRows) as PruneRow[];
      const last = lastBefore(oldest, olderThanMs);
      if (last === undefined) return 0;
      const { changes } = db.prepare("delete from audit_events where seq <= ?").run(last.seq);
      db.prepare("update audit_chain_state set pruned_seq = ?, pruned_hash = ? where id = 1").run(last.seq, last.hash);
      return changes;
    })();
  }

  /** Waits out a transaction the ORM may have open on this connection. */
  async #idle(): Promise<void> {
    while (this.#db.inTransaction) await new Promise<void>((r) => setImmediate(r));
  }
}

// ---------------------------------------------------------------------------
// PostgreSQL

const PG_TYPES: Record<(typeof COLUMNS)[number], string> = {
  seq: "bigint",
  time: "bigint",
  actor: "text",
  action: "text",
  outcome: "text",
  machine_id: "text",
  command_id: "text",
  batch_id: "text",
  client_address: "text",
  detail: "text",
  command: "text",
  prev_hash: "text",
  hash: "text",
};
const PG_INSERT = `insert into audit_events (${COLUMNS.join(", ")})
  select * from unnest(${COLUMNS.map((c, i) => `$${i + 1}::${PG_TYPES[c]}[]`).join(", ")})`;
const PG_LOCK_STATE = "select head_seq as seq, head_hash as hash from audit_chain_state where id = 1 for update";

export class PgAuditWriter implements AuditWriter {
  readonly #pool: PgPool;

  constructor(pool: PgPool) {
    this.#pool = pool;
  }

  append(events: readonly TimedEvent[]): Promise<void> {
    return this.#transaction(async (client) => {
      const { rows } = await client.query({ name: "audit_lock_state", text: PG_LOCK_STATE });
      const chained = chainRows(point(rows[0]), events);
      await client.query({ name: "audit_insert", text: PG_INSERT, values: COLUMNS.map((c) => chained.map((r) => r[c])) });
      const last = chained.at(-1);
      if (last) {
        await client.query({ name: "audit_move_head", text: "update audit_chain_state set head_seq = $1, head_hash = $2 where id = 1", values: [last.seq, last.hash] });
      }
    });
  }

  prune(olderThanMs: number, maxRows: number): Promise<number> {
    return this.#transaction(async (client) => {
      await client.query({ name: "audit_lock_state", text: PG_LOCK_STATE });
      const { rows } = await client.query({ name: "audit_oldest", text: "select seq, hash, time from audit_events order by seq limit $1", values: [maxRows] });
      const last = lastBefore(rows as PruneRow[], olderThanMs);
      if (last === undefined) return 0;
      const deleted = await client.query({ text: "delete from audit_events where seq <= $1", values: [last.seq] });
      await client.query({ text: "update audit_chain_state set pruned_seq = $1, pruned_hash = $2 where id = 1", values: [last.seq, last.hash] });
      return deleted.rowCount ?? 0;
    });
  }

  async #transaction<T>(fn: (client: PgQueryable) => Promise<T>): Promise<T> {
    const client = await this.#pool.connect();
    let broken: Error | undefined;
    try {
      await client.query({ text: "begin" });
      const out = await fn(client);
      await client.query({ text: "commit" });
      return out;
    } catch (err) {
      await client.query({ text: "rollback" }).catch((e: unknown) => {
        broken = e instanceof Error ? e : new Error(String(e));
      });
      throw err;
    } finally {
      client.release(broken ?? false);
    }
  }
}

interface PruneRow {
  seq: number | string;
  hash: string;
  time: number | string;
}

/**
 * The last of the oldest records (in sequence order) that are all older than
 * the cut: retention deletes a prefix of the chain, never a record in between,
 * and reads only the rows it deletes (the primary key's first pages).
 */
function lastBefore(oldest: readonly PruneRow[], olderThanMs: number): PruneRow | undefined {
  let last: PruneRow | undefined;
  for (const r of oldest) {
    if (Number(r.time) >= olderThanMs) break;
    last = r;
  }
  return last;
}

function point(row: unknown): ChainPoint {
  const r = row as { seq: number | string; hash: string } | undefined;
  if (r === undefined) throw new Error("audit_chain_state has no row: the audit migration did not run");
  return { seq: Number(r.seq), hash: r.hash };
}
