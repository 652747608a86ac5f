/**
 * The stores' hot paths in plain SQL on the driver itself: what every
 * running command does many times (state transitions, output chunks and
 * counters, reads of one command and of its output). No query builder, no
 * EntityManager: statements are written once per shape and prepared once per
 * connection, and writes are group-committed (write-batcher.ts).
 *
 * Everything else (history, retention, listings) stays on Kysely, where a
 * query is rare enough that building it costs nothing that matters.
 */
import type { CommandRow, MachineRow, OutputChunkRow } from "./tables.ts";

/** Columns of `commands`, in insert order. */
export const COMMAND_COLUMNS = [
  "id",
  "machine_id",
  "command",
  "cwd",
  "env_keys",
  "run_as",
  "timeout_ms",
  "status",
  "exit_code",
  "signal",
  "stdout_bytes",
  "stderr_bytes",
  "stdout_truncated",
  "stderr_truncated",
  "log_bytes",
  "duration_ms",
  "created_at",
  "started_at",
  "finished_at",
  "error_code",
  "error_message",
  "batch_id",
  "requested_by",
  "cancelled_by",
  "runner",
  "sync",
] as const satisfies ReadonlyArray<keyof CommandRow>;

const COLUMN_SET = new Set<string>(COMMAND_COLUMNS);

/** Output counters of a command as stored (booleans as the driver binds them). */
export interface CounterRow {
  stdout_bytes: number;
  stderr_bytes: number;
  log_bytes: number;
  stdout_truncated: boolean | number;
  stderr_truncated: boolean | number;
}

export type WriteOp =
  | { kind: "insert"; rows: CommandRow[]; counts: Array<[machineId: string, n: number]> }
  | { kind: "transition"; id: string; from: readonly string[]; set: Partial<CommandRow> }
  | {
      kind: "output";
      id: string;
      chunks: Array<Omit<OutputChunkRow, "command_id" | "byte_offset"> & { byte_offset: number }>;
      drops: number[];
      counters: CounterRow;
    };

/** Result of a write: whether a transition matched; nothing for the others. */
export type WriteResult = boolean | undefined;

export type ChunkRow = Pick<OutputChunkRow, "byte_offset" | "stream" | "data">;

export interface CommandHotPath {
  /** Applies writes in one transaction; one result or Error per write. */
  apply(ops: readonly WriteOp[]): Promise<Array<WriteResult | Error>> | Array<WriteResult | Error>;
  get(id: string): Promise<CommandRow | undefined> | CommandRow | undefined;
  /** One machine row (every start, cancel and re-attach reads one). */
  getMachine(id: string): Promise<MachineRow | undefined> | MachineRow | undefined;
  /** Chunks of `id` from the one that holds `fromOffset` on, up to `limit` rows. */
  outputFrom(id: string, fromOffset: number, limit: number): Promise<ChunkRow[]> | ChunkRow[];
  /** Chunks of `id` starting after `afterOffset`, up to `limit` rows. */
  outputAfter(id: string, afterOffset: number, limit: number): Promise<ChunkRow[]> | ChunkRow[];
}

/**
 * The assignments of a transition, checked against the table's columns:
 * their names become SQL text, so only known column names pass.
 */
export function setColumns(set: Partial<CommandRow>): Array<[string, unknown]> {
  const out: Array<[string, unknown]> = [];
  for (const [k, v] of Object.entries(set)) {
    if (v === undefined) continue;
    if (!COLUMN_SET.has(k)) throw new Error(`unknown column ${k}`);
    out.push([k, v]);
  }
  return out;
}
