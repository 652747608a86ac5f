/**
 * CommandStore on SQL. The hot paths (insert, get, transition, output) run
 * as prepared statements on the driver (command-hot-path.ts), their writes
 * group-committed: one transaction per event-loop turn for every running
 * command. The rest (history, listings, retention) goes through the Kysely
 * instance MikroORM manages; one code path serves both drivers there.
 */
import { FleetError, InvalidArgumentError } from "../exec/errors.ts";
import { TERMINAL_STATUSES } from "../exec/ports.ts";
import type {
  CommandRecord,
  CommandStatus,
  CommandStore,
  HistoryPage,
  HistoryQuery,
  OutputChunkRecord,
  OutputCounters,
  OutputStreamName,
  RunnerState,
} from "../exec/ports.ts";
import {
  fromNullableDate,
  kysely,
  toDate,
  toDbBool,
  toNullableDate,
  toNullableNumber,
  toNumber,
} from "./db-context.ts";
import type { Db, DbContext } from "./db-context.ts";
import type { CommandHotPath, WriteOp, WriteResult } from "./command-hot-path.ts";
import { WriteBatcher, type WriteBatcherOptions, type WriteBatcherStats } from "./write-batcher.ts";
import { decodeHistoryCursor, encodeHistoryCursor } from "./history-cursor.ts";
import type { CommandRow } from "./tables.ts";

const ACTIVE_STATUSES: readonly CommandStatus[] = ["queued", "running"];
/** Chunk rows fetched per round trip by `readOutput`. */
const READ_BATCH = 64;
/** Commands deleted per transaction by `prune`. */
const PRUNE_BATCH = 500;

/** The patchable fields of a command and how each is written. */
const PATCH_COLUMNS: {
  [K in keyof CommandRecord]?: (ctx: DbContext, value: CommandRecord[K]) => Partial<CommandRow>;
} = {
  command: (_c, v) => ({ command: v }),
  cwd: (_c, v) => ({ cwd: v }),
  envKeys: (_c, v) => ({ env_keys: JSON.stringify(v) }),
  user: (_c, v) => ({ run_as: v }),
  timeoutMs: (_c, v) => ({ timeout_ms: v }),
  status: (_c, v) => ({ status: v }),
  exitCode: (_c, v) => ({ exit_code: v }),
  signal: (_c, v) => ({ signal: v }),
  stdoutBytes: (_c, v) => ({ stdout_bytes: v }),
  stderrBytes: (_c, v) => ({ stderr_bytes: v }),
  stdoutTruncated: (c, v) => ({ stdout_truncated: toDbBool(c, v) }),
  stderrTruncated: (c, v) => ({ stderr_truncated: toDbBool(c, v) }),
  logBytes: (_c, v) => ({ log_bytes: v }),
  durationMs: (_c, v) => ({ duration_ms: v }),
  startedAt: (_c, v) => ({ started_at: fromNullableDate(v) }),
  finishedAt: (_c, v) => ({ finished_at: fromNullableDate(v) }),
  errorCode: (_c, v) => ({ error_code: v }),
  errorMessage: (_c, v) => ({ error_message: v }),
  batchId: (_c, v) => ({ batch_id: v }),
  requestedBy: (_c, v) => ({ requested_by: v }),
  cancelledBy: (_c, v) => ({ cancelled_by: v }),
  runner: (_c, v) => ({ runner: v == null ? null : JSON.stringify(v) }),
  sync: (c, v) => ({ sync: toDbBool(c, v) }),
};

/** Fields a patch may not change: the identity and what the per-machine counts hang on. */
const IMMUTABLE_FIELDS = new Set<string>(["id", "machineId", "createdAt"]);

export class SqlCommandStore implements CommandStore {
  readonly #ctx: DbContext;
  readonly #hot: CommandHotPath;
  readonly #writes: WriteBatcher<WriteOp, WriteResult>;

  constructor(ctx: DbContext, hot: CommandHotPath, options: WriteBatcherOptions = {}) {
    this.#ctx = ctx;
    this.#hot = hot;
    this.#writes = new WriteBatcher((ops) => hot.apply(ops), options);
  }

  /** Group-commit figures (for metrics). */
  writeStats(): WriteBatcherStats {
    return this.#writes.stats();
  }

  /** Settles every write submitted so far (before the database is closed). */
  drain(): Promise<void> {
    return this.#writes.drain();
  }

  async insert(cmd: CommandRecord): Promise<void> {
    await this.insertMany([cmd]);
  }

  async insertMany(cmds: CommandRecord[]): Promise<void> {
    if (cmds.length === 0) return;
    const perMachine = new Map<string, number>();
    for (const cmd of cmds) perMachine.set(cmd.machineId, (perMachine.get(cmd.machineId) ?? 0) + 1);
    await this.#writes.submit({ kind: "insert", rows: cmds.map((c) => this.#toRow(c)), counts: [...perMachine] });
  }

  async get(id: string): Promise<CommandRecord | null> {
    const row = await this.#hot.get(id);
    return row === undefined ? null : fromRow(row);
  }

  async transition(
    id: string,
    from: readonly CommandStatus[],
    patch: Partial<CommandRecord>,
  ): Promise<boolean> {
    if (from.length === 0) return false;
    const set: Partial<CommandRow> = {};
    for (const [key, value] of Object.entries(patch)) {
      if (value === undefined) continue;
      if (IMMUTABLE_FIELDS.has(key)) {
        throw new FleetError("internal", `command field ${key} cannot be changed`);
      }
      const write = PATCH_COLUMNS[key as keyof CommandRecord] as
        | ((ctx: DbContext, v: unknown) => Partial<CommandRow>)
        | undefined;
      if (write === undefined) throw new FleetError("internal", `unknown command field ${key}`);
      Object.assign(set, write(this.#ctx, value));
    }
    // An empty patch still checks the status (a no-op assignment).
    return (await this.#writes.submit({ kind: "transition", id, from, set })) === true;
  }

  async appendOutput(
    id: string,
    chunks: OutputChunkRecord[],
    dropOffsets: number[],
    counters: OutputCounters,
  ): Promise<void> {
    const ctx = this.#ctx;
    await this.#writes.submit({
      kind: "output",
      id,
      // A chunk stored before (a retried append) stays as it was.
      chunks: chunks.map((c) => ({ byte_offset: c.offset, stream: c.stream, data: c.data })),
      drops: dropOffsets,
      counters: {
        stdout_bytes: counters.stdoutBytes,
        stderr_bytes: counters.stderrBytes,
        log_bytes: counters.logBytes,
        stdout_truncated: toDbBool(ctx, counters.stdoutTruncated),
        stderr_truncated: toDbBool(ctx, counters.stderrTruncated),
      },
    });
  }

  async readOutput(id: string, fromOffset: number, maxBytes: number): Promise<OutputChunkRecord[]> {
    const out: OutputChunkRecord[] = [];
    let collected = 0;
    // First round: start at the chunk that contains `fromOffset` (the last one
    // starting at or before it), found on the primary key.
    let rows = await this.#hot.outputFrom(id, fromOffset, READ_BATCH);
    for (;;) {
      for (const row of rows) {
        const offset = toNumber(row.byte_offset);
        if (offset + row.data.length <= fromOffset) continue;
        out.push({ offset, stream: row.stream as OutputStreamName, data: row.data });
        collected += row.data.length;
        if (collected >= maxBytes) return out;
      }
      const last = rows.at(-1);
      if (rows.length < READ_BATCH || last === undefined) return out;
      rows = await this.#hot.outputAfter(id, toNumber(last.byte_offset), READ_BATCH);
    }
  }

  async listActive(): Promise<CommandRecord[]> {
    const rows = await kysely(this.#ctx.fork())
      .selectFrom("commands")
      .selectAll()
      .where("status", "in", [...ACTIVE_STATUSES])
      .orderBy("created_at")
      .orderBy("id")
      .execute();
    return rows.map(fromRow);
  }

  async countActiveOnMachine(machineId: string): Promise<number> {
    const row = await kysely(this.#ctx.fork())
      .selectFrom("commands")
      .select((eb) => eb.fn.countAll().as("n"))
      .where("status", "in", [...ACTIVE_STATUSES])
      .where("machine_id", "=", machineId)
      .executeTakeFirstOrThrow();
    return Number(row.n);
  }

  async history(query: HistoryQuery): Promise<HistoryPage> {
    const cursor = query.cursor == null ? null : decodeHistoryCursor(query.cursor);
    if (query.cursor != null && cursor === null) {
      throw new InvalidArgumentError("cursor", "is not a page cursor from a previous page");
    }
    const db = kysely(this.#ctx.fork());
    let base = db.selectFrom("commands").where("machine_id", "=", query.machineId);
    if (query.since !== null) base = base.where("created_at", ">=", query.since.getTime());
    if (query.status !== null) base = base.where("status", "=", query.status);
    if (query.exitCode !== null) base = base.where("exit_code", "=", query.exitCode);
    if (query.requestedBy !== null) base = base.where("requested_by", "=", query.requestedBy);
    const filtered =
      query.since !== null || query.status !== null || query.exitCode !== null || query.requestedBy !== null;

    let items: CommandRecord[] = [];
    let nextCursor: string | null = null;
    if (query.limit > 0) {
      let page = base
        .selectAll()
        .orderBy("created_at", "desc")
        .orderBy("id", "desc")
        .limit(query.limit + 1);
      if (cursor !== null) {
        page = page.where(({ eb, refTuple, tuple }) =>
          eb(refTuple("created_at", "id"), "<", tuple(cursor.createdAt, cursor.id)),
        );
      } else if (query.offset > 0) {
        page = page.offset(query.offset);
      }
      const rows = await page.execute();
      const more = rows.length > query.limit;
      items = rows.slice(0, query.limit).map(fromRow);
      const last = items.at(-1);
      if (more && last !== undefined) nextCursor = encodeHistoryCursor(last.createdAt, last.id);
    }

    let total: number;
    if (!filtered) {
      const row = await db
        .selectFrom("machine_command_counts")
        .select("total")
        .where("machine_id", "=", query.machineId)
        .executeTakeFirst();
      total = row === undefined ? 0 : toNumber(row.total);
    } else {
      const row = await base.select((eb) => eb.fn.countAll().as("n")).executeTakeFirstOrThrow();
      total = Number(row.n);
    }
    return { items, total, nextCursor };
  }

  async listByBatch(batchId: string): Promise<CommandRecord[]> {
    const rows = await kysely(this.#ctx.fork())
      .selectFrom("commands")
      .selectAll()
      .where("batch_id", "=", batchId)
      .orderBy("created_at")
      .orderBy("id")
      .execute();
    return rows.map(fromRow);
  }

  /**
   * Deletes terminal commands that are older than `olderThan` OR beyond the
   * newest `keepPerMachine` of their machine (each rule off when null), with
   * their output (cascade). Both rules are "before a point in the machine's
   * (created_at, id) order", so each machine needs one keyset range on the
   * history index, deleted in batches that each also fix the machine's count.
   */
  async prune(options: { olderThan: Date | null; keepPerMachine: number | null }): Promise<number> {
    const { olderThan, keepPerMachine } = options;
    if (olderThan === null && keepPerMachine === null) return 0;
    const machines = await kysely(this.#ctx.fork())
      .selectFrom("machine_command_counts")
      .select("machine_id")
      .orderBy("machine_id")
      .execute();
    let deleted = 0;
    for (const { machine_id: machineId } of machines) {
      const bound = await this.#pruneBound(machineId, olderThan, keepPerMachine);
      if (bound === null) continue;
      for (;;) {
        const n = await this.#ctx.fork().transactional(async (em) => {
          const db = kysely(em);
          const victims = await db
            .selectFrom("commands")
            .select("id")
            .where("machine_id", "=", machineId)
            .where(({ eb, refTuple, tuple }) =>
              eb(refTuple("created_at", "id"), "<", tuple(bound.createdAt, bound.id)),
            )
            .where("status", "in", [...TERMINAL_STATUSES])
            .orderBy("created_at")
            .orderBy("id")
            .limit(PRUNE_BATCH)
            .execute();
          if (victims.length === 0) return 0;
          const result = await db
            .deleteFrom("commands")
            .where("id", "in", victims.map((v) => v.id))
            .executeTakeFirst();
          const count = Number(result.numDeletedRows);
          await addToCount(db, machineId, -count);
          return count;
        });
        deleted += n;
        if (n < PRUNE_BATCH) break;
      }
    }
    return deleted;
  }

  /** The (created_at, id) point before which a machine's terminal commands go, or null for none. */
  async #pruneBound(
    machineId: string,
    olderThan: Date | null,
    keepPerMachine: number | null,
  ): Promise<{ createdAt: number; id: string } | null> {
    // (created_at, id) < (T, "") is created_at < T: ids are never empty.
    let bound = olderThan === null ? null : { createdAt: olderThan.getTime(), id: "" };
    if (keepPerMachine !== null) {
      let keepBound: { createdAt: number; id: string } | null;
      if (keepPerMachine <= 0) {
        keepBound = { createdAt: Number.MAX_SAFE_INTEGER, id: "" };
      } else {
        const row = await kysely(this.#ctx.fork())
          .selectFrom("commands")
          .select(["created_at", "id"])
          .where("machine_id", "=", machineId)
          // Keep the newest N *ended* commands: running ones are never counted nor pruned.
          .where("status", "in", [...TERMINAL_STATUSES])
          .orderBy("created_at", "desc")
          .orderBy("id", "desc")
          .limit(1)
          .offset(keepPerMachine - 1)
          .executeTakeFirst();
        keepBound = row === undefined ? null : { createdAt: toNumber(row.created_at), id: row.id };
      }
      if (keepBound !== null && (bound === null || compareKey(keepBound, bound) > 0)) bound = keepBound;
    }
    return bound;
  }

  #toRow(c: CommandRecord): CommandRow {
    const ctx = this.#ctx;
    return {
      id: c.id,
      machine_id: c.machineId,
      command: c.command,
      cwd: c.cwd,
      env_keys: JSON.stringify(c.envKeys),
      run_as: c.user,
      timeout_ms: c.timeoutMs,
      status: c.status,
      exit_code: c.exitCode,
      signal: c.signal,
      stdout_bytes: c.stdoutBytes,
      stderr_bytes: c.stderrBytes,
      stdout_truncated: toDbBool(ctx, c.stdoutTruncated),
      stderr_truncated: toDbBool(ctx, c.stderrTruncated),
      log_bytes: c.logBytes,
      duration_ms: c.durationMs,
      created_at: c.createdAt.getTime(),
      started_at: fromNullableDate(c.startedAt),
      finished_at: fromNullableDate(c.finishedAt),
      error_code: c.errorCode,
      error_message: c.errorMessage,
      batch_id: c.batchId,
      requested_by: c.requestedBy,
      cancelled_by: c.cancelledBy,
      runner: c.runner == null ? null : JSON.stringify(c.runner),
      sync: toDbBool(ctx, c.sync),
    };
  }
}

function compareKey(a: { createdAt: number; id: string }, b: { createdAt: number; id: string }): number {
  if (a.createdAt !== b.createdAt) return a.createdAt < b.createdAt ? -1 : 1;
  return a.id === b.id ? 0 : a.id < b.id ? -1 : 1;
}

/** Adds `n` (negative to subtract) to a machine's command count. */
async function addToCount(db: Db, machineId: string, n: number): Promise<void> {
  await db
    .insertInto("machine_command_counts")
    .values({ machine_id: machineId, total: n })
    .onConflict((oc) =>
      oc.column("machine_id").doUpdateSet((eb) => ({
        total: eb("machine_command_counts.total", "+", eb.ref("excluded.total")),
      })),
    )
    .execute();
}

function fromRow(row: CommandRow): CommandRecord {
  return {
    id: row.id,
    machineId: row.machine_id,
    command: row.command,
    cwd: row.cwd,
    envKeys: JSON.parse(row.env_keys) as string[],
    user: row.run_as,
    timeoutMs: toNumber(row.timeout_ms),
    status: row.status as CommandStatus,
    exitCode: row.exit_code,
    signal: row.signal,
    stdoutBytes: toNumber(row.stdout_bytes),
    stderrBytes: toNumber(row.stderr_bytes),
    stdoutTruncated: Boolean(row.stdout_truncated),
    stderrTruncated: Boolean(row.stderr_truncated),
    logBytes: toNumber(row.log_bytes),
    durationMs: toNullableNumber(row.duration_ms),
    createdAt: toDate(row.created_at),
    startedAt: toNullableDate(row.started_at),
    finishedAt: toNullableDate(row.finished_at),
    errorCode: row.error_code,
    errorMessage: row.error_message,
    batchId: row.batch_id,
    requestedBy: row.requested_by,
    cancelledBy: row.cancelled_by ?? null,
    runner: row.runner == null ? null : (JSON.parse(row.runner) as RunnerState),
    sync: Boolean(row.sync),
  };
}
