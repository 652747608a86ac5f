/**
 * CommandHotPath on better-sqlite3, the same connection MikroORM uses.
 * Statements are prepared once and reused (preparing was most of the
 * driver's time per query). A batch is one transaction; each write in it is
 * a nested transaction (a savepoint), so a write that fails is undone alone.
 *
 * better-sqlite3 is synchronous: a batch runs inside one event-loop turn, so
 * nothing else can interleave with it on this connection. A transaction the
 * ORM may have open (its queries settle in microtasks, but be safe) is
 * waited out before a batch starts.
 */
import {
  COMMAND_COLUMNS,
  setColumns,
  type ChunkRow,
  type CommandHotPath,
  type WriteOp,
  type WriteResult,
} from "./command-hot-path.ts";
import type { CommandRow, MachineRow } from "./tables.ts";

/** The parts of better-sqlite3's API used here. */
export interface SqliteStatement {
  run(...params: unknown[]): { changes: number };
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
}
export interface SqliteDatabase {
  prepare(sql: string): SqliteStatement;
  transaction<A extends unknown[], T>(fn: (...args: A) => T): (...args: A) => T;
  readonly inTransaction: boolean;
}

const INSERT_COMMAND = `insert into commands (${COMMAND_COLUMNS.join(", ")}) values (${COMMAND_COLUMNS.map(() => "?").join(", ")})`;
const ADD_COUNT = `insert into machine_command_counts (machine_id, total) values (?, ?)
  on conflict (machine_id) do update set total = machine_command_counts.total + excluded.total`;
const INSERT_CHUNK = `insert into command_output (command_id, byte_offset, stream, data) values (?, ?, ?, ?)
  on conflict (command_id, byte_offset) do nothing`;
const DROP_CHUNK = `delete from command_output where command_id = ? and byte_offset = ?`;
const SET_COUNTERS = `update commands set stdout_bytes = ?, stderr_bytes = ?, log_bytes = ?, stdout_truncated = ?, stderr_truncated = ? where id = ?`;
const GET = `select * from commands where id = ?`;
const GET_MACHINE = `select * from machines where id = ?`;
const OUTPUT_FROM = `select byte_offset, stream, data from command_output
  where command_id = ? and byte_offset >= coalesce(
    (select max(byte_offset) from command_output where command_id = ? and byte_offset <= ?), 0)
  order by byte_offset limit ?`;
const OUTPUT_AFTER = `select byte_offset, stream, data from command_output
  where command_id = ? and byte_offset > ? order by byte_offset limit ?`;

export class SqliteHotPath implements CommandHotPath {
  readonly #db: SqliteDatabase;
  readonly #statements = new Map<string, SqliteStatement>();
  readonly #applyOne: (op: WriteOp) => WriteResult;
  readonly #applyAll: (ops: readonly WriteOp[]) => Array<WriteResult | Error>;

  constructor(db: SqliteDatabase) {
    this.#db = db;
    this.#applyOne = db.transaction((op: WriteOp) => this.#write(op));
    this.#applyAll = db.transaction((ops: readonly WriteOp[]) =>
      ops.map((op) => {
        try {
          return this.#applyOne(op);
        } catch (err) {
          return err instanceof Error ? err : new Error(String(err));
        }
      }),
    );
  }

  async apply(ops: readonly WriteOp[]): Promise<Array<WriteResult | Error>> {
    while (this.#db.inTransaction) await new Promise<void>((r) => setImmediate(r));
    return this.#applyAll(ops);
  }

  get(id: string): CommandRow | undefined {
    return this.#stmt(GET).get(id) as CommandRow | undefined;
  }

  getMachine(id: string): MachineRow | undefined {
    return this.#stmt(GET_MACHINE).get(id) as MachineRow | undefined;
  }

  outputFrom(id: string, fromOffset: number, limit: number): ChunkRow[] {
    return this.#stmt(OUTPUT_FROM).all(id, id, fromOffset, limit) as ChunkRow[];
  }

  outputAfter(id: string, afterOffset: number, limit: number): ChunkRow[] {
    return this.#stmt(OUTPUT_AFTER).all(id, afterOffset, limit) as ChunkRow[];
  }

  #stmt(sql: string): SqliteStatement {
    let s = this.#statements.get(sql);
    if (s === undefined) {
      s = this.#db.prepare(sql);
      this.#statements.set(sql, s);
    }
    return s;
  }

  #write(op: WriteOp): WriteResult {
    switch (op.kind) {
      case "insert": {
        const insert = this.#stmt(INSERT_COMMAND);
        for (const row of op.rows) insert.run(...COMMAND_COLUMNS.map((c) => row[c]));
        const add = this.#stmt(ADD_COUNT);
        for (const [machineId, n] of op.counts) add.run(machineId, n);
        return undefined;
      }
      case "transition": {
        if (op.from.length === 0) return false;
        const cols = setColumns(op.set);
        const assignments = cols.length === 0 ? "status = status" : cols.map(([c]) => `${c} = ?`).join(", ");
        const sql = `update commands set ${assignments} where id = ? and status in (${op.from.map(() => "?").join(", ")})`;
        const r = this.#stmt(sql).run(...cols.map(([, v]) => v), op.id, ...op.from);
        return r.changes > 0;
      }
      case "output": {
        const insert = this.#stmt(INSERT_CHUNK);
        for (const c of op.chunks) insert.run(op.id, c.byte_offset, c.stream, c.data);
        const drop = this.#stmt(DROP_CHUNK);
        for (const offset of op.drops) drop.run(op.id, offset);
        const k = op.counters;
        this.#stmt(SET_COUNTERS).run(k.stdout_bytes, k.stderr_bytes, k.log_bytes, k.stdout_truncated, k.stderr_truncated, op.id);
        return undefined;
      }
    }
  }
}
