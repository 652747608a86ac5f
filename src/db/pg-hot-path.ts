/**
 * CommandHotPath on node-postgres, the pool MikroORM uses. Statements are
 * named, so each connection prepares a shape once. A batch is one
 * transaction on one connection in which runs of output writes (the bulk of
 * a busy service's writes) become three statements whatever their number:
 * one multi-row insert of chunks, one delete of dropped chunks and one update
 * of counters, from arrays. Should a batch fail, it is rolled back and each
 * write retried alone, so only the write at fault fails.
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

/** The parts of node-postgres' API used here. */
export interface PgQueryable {
  query(config: { name?: string; text: string; values?: unknown[] }): Promise<{ rows: unknown[]; rowCount: number | null }>;
}
export interface PgClient extends PgQueryable {
  release(err?: Error | boolean): void;
}
export interface PgPool extends PgQueryable {
  connect(): Promise<PgClient>;
}

type OutputOp = Extract<WriteOp, { kind: "output" }>;

const COMMAND_TYPES: Record<(typeof COMMAND_COLUMNS)[number], string> = {
  id: "text",
  machine_id: "text",
  command: "text",
  cwd: "text",
  env_keys: "text",
  run_as: "text",
  timeout_ms: "bigint",
  status: "text",
  exit_code: "integer",
  signal: "text",
  stdout_bytes: "bigint",
  stderr_bytes: "bigint",
  stdout_truncated: "boolean",
  stderr_truncated: "boolean",
  log_bytes: "bigint",
  duration_ms: "bigint",
  created_at: "bigint",
  started_at: "bigint",
  finished_at: "bigint",
  error_code: "text",
  error_message: "text",
  batch_id: "text",
  requested_by: "text",
  cancelled_by: "text",
  runner: "text",
  sync: "boolean",
};

const INSERT_COMMANDS = `insert into commands (${COMMAND_COLUMNS.join(", ")})
  select * from unnest(${COMMAND_COLUMNS.map((c, i) => `$${i + 1}::${COMMAND_TYPES[c]}[]`).join(", ")})`;
const ADD_COUNTS = `insert into machine_command_counts (machine_id, total)
  select * from unnest($1::text[], $2::bigint[])
  on conflict (machine_id) do update set total = machine_command_counts.total + excluded.total`;
const INSERT_CHUNKS = `insert into command_output (command_id, byte_offset, stream, data)
  select * from unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[])
  on conflict (command_id, byte_offset) do nothing`;
const DROP_CHUNKS = `delete from command_output o using unnest($1::text[], $2::bigint[]) as d(command_id, byte_offset)
  where o.command_id = d.command_id and o.byte_offset = d.byte_offset`;
const SET_COUNTERS = `update commands c set stdout_bytes = v.so, stderr_bytes = v.se, log_bytes = v.lb,
    stdout_truncated = v.st, stderr_truncated = v.et
  from unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::boolean[], $6::boolean[]) as v(id, so, se, lb, st, et)
  where c.id = v.id`;
const GET = `select * from commands where id = $1`;
const GET_MACHINE = `select * from machines where id = $1`;
const OUTPUT_FROM = `select byte_offset, stream, data from command_output
  where command_id = $1 and byte_offset >= coalesce(
    (select max(byte_offset) from command_output where command_id = $1 and byte_offset <= $2), 0)
  order by byte_offset limit $3`;
const OUTPUT_AFTER = `select byte_offset, stream, data from command_output
  where command_id = $1 and byte_offset > $2 order by byte_offset limit $3`;

export class PgHotPath implements CommandHotPath {
  readonly #pool: PgPool;
  readonly #names = new Map<string, string>();

  constructor(pool: PgPool) {
    this.#pool = pool;
  }

  async apply(ops: readonly WriteOp[]): Promise<Array<WriteResult | Error>> {
    const client = await this.#pool.connect();
    let broken: Error | undefined;
    try {
      try {
        await client.query({ text: "begin" });
        const results = await this.#applyAll(client, ops);
        await client.query({ text: "commit" });
        return results;
      } catch (err) {
        await client.query({ text: "rollback" }).catch((e: unknown) => {
          broken = e instanceof Error ? e : new Error(String(e));
        });
      }
      if (broken) throw broken;
      // Something in the batch failed: apply each write alone, so that only it fails.
      const results: Array<WriteResult | Error> = [];
      for (const op of ops) {
        try {
          await client.query({ text: "begin" });
          const [r] = await this.#applyAll(client, [op]);
          await client.query({ text: "commit" });
          results.push(r);
        } catch (err) {
          await client.query({ text: "rollback" });
          results.push(err instanceof Error ? err : new Error(String(err)));
        }
      }
      return results;
    } finally {
      client.release(broken ?? false);
    }
  }

  async get(id: string): Promise<CommandRow | undefined> {
    const r = await this.#pool.query(this.#named(GET, [id]));
    return r.rows[0] as CommandRow | undefined;
  }

  async getMachine(id: string): Promise<MachineRow | undefined> {
    const r = await this.#pool.query(this.#named(GET_MACHINE, [id]));
    return r.rows[0] as MachineRow | undefined;
  }

  async outputFrom(id: string, fromOffset: number, limit: number): Promise<ChunkRow[]> {
    return (await this.#pool.query(this.#named(OUTPUT_FROM, [id, fromOffset, limit]))).rows as ChunkRow[];
  }

  async outputAfter(id: string, afterOffset: number, limit: number): Promise<ChunkRow[]> {
    return (await this.#pool.query(this.#named(OUTPUT_AFTER, [id, afterOffset, limit]))).rows as ChunkRow[];
  }

  #named(text: string, values: unknown[]): { name: string; text: string; values: unknown[] } {
    let name = this.#names.get(text);
    if (name === undefined) {
      name = `fleetrun_${this.#names.size}`;
      this.#names.set(text, name);
    }
    return { name, text, values };
  }

  /** Applies writes in order on `client` (inside its transaction); runs of output writes go together. */
  async #applyAll(client: PgQueryable, ops: readonly WriteOp[]): Promise<WriteResult[]> {
    const results: WriteResult[] = [];
    let i = 0;
    while (i < ops.length) {
      const op = ops[i]!;
      if (op.kind === "output") {
        const run: OutputOp[] = [];
        while (i < ops.length && ops[i]!.kind === "output") run.push(ops[i++] as OutputOp);
        await this.#writeOutputs(client, run);
        for (let k = 0; k < run.length; k++) results.push(undefined);
        continue;
      }
      results.push(await this.#write(client, op));
      i++;
    }
    return results;
  }

  async #write(client: PgQueryable, op: Exclude<WriteOp, OutputOp>): Promise<WriteResult> {
    if (op.kind === "insert") {
      const columns = COMMAND_COLUMNS.map((c) => op.rows.map((row) => row[c]));
      await client.query(this.#named(INSERT_COMMANDS, columns));
      if (op.counts.length > 0) {
        await client.query(this.#named(ADD_COUNTS, [op.counts.map(([m]) => m), op.counts.map(([, n]) => n)]));
      }
      return undefined;
    }
    if (op.from.length === 0) return false;
    const cols = setColumns(op.set);
    const assignments = cols.length === 0 ? "status = status" : cols.map(([c], k) => `${c} = $${k + 1}`).join(", ");
    const n = cols.length;
    const sql = `update commands set ${assignments} where id = $${n + 1} and status = any($${n + 2}::text[])`;
    const r = await client.query(this.#named(sql, [...cols.map(([, v]) => v), op.id, [...op.from]]));
    return (r.rowCount ?? 0) > 0;
  }

  async #writeOutputs(client: PgQueryable, ops: OutputOp[]): Promise<void> {
    const ids: string[] = [];
    const offsets: number[] = [];
    const streams: string[] = [];
    const data: Buffer[] = [];
    const dropIds: string[] = [];
    const dropOffsets: number[] = [];
    for (const op of ops) {
      for (const c of op.chunks) {
        ids.push(op.id);
        offsets.push(c.byte_offset);
        streams.push(c.stream);
        data.push(c.data);
      }
      for (const d of op.drops) {
        dropIds.push(op.id);
        dropOffsets.push(d);
      }
    }
    if (ids.length > 0) await client.query(this.#named(INSERT_CHUNKS, [ids, offsets, streams, data]));
    if (dropIds.length > 0) await client.query(this.#named(DROP_CHUNKS, [dropIds, dropOffsets]));
    await client.query(
      this.#named(SET_COUNTERS, [
        ops.map((o) => o.id),
        ops.map((o) => o.counters.stdout_bytes),
        ops.map((o) => o.counters.stderr_bytes),
        ops.map((o) => o.counters.log_bytes),
        ops.map((o) => Boolean(o.counters.stdout_truncated)),
        ops.map((o) => Boolean(o.counters.stderr_truncated)),
      ]),
    );
  }
}
