/**
 * The combined output log of one running command: assigns offsets in the
 * order output arrives, keeps the head and tail of each stream within the
 * configured cap (dropping the middle), coalesces small writes and persists
 * them in the background. Followers are told about new bytes only after they
 * are stored, so a reader that resumes from any offset it saw misses nothing
 * and gets nothing twice, also across a restart of the service.
 */
import type { FlushClock, Flushable } from "./flush-clock.ts";
import type { CommandStore, OutputChunkRecord, OutputCounters, OutputStreamName } from "./ports.ts";

interface PendingChunk {
  offset: number;
  stream: OutputStreamName;
  tail: boolean;
  parts: Buffer[];
  size: number;
}

interface TailEntry {
  offset: number;
  size: number;
  /** Still in `pending` (not stored yet). */
  chunk: PendingChunk | null;
}

export interface OutputLogOptions {
  /** Bytes stored per stream: the first half and the last half are kept. */
  capPerStream: number;
  /** The process-wide clock that flushes every log's output together (the coalescing window). */
  clock: FlushClock;
  /** Called after each stored write with the new total of the log. */
  onStored?: (logBytes: number) => void;
  /**
   * Also keep a copy in memory while each stream stays within this many
   * bytes, so the caller waiting for the command need not read it back.
   * @default 0 (no copy)
   */
  mirrorUpTo?: number;
}

export class OutputLog implements Flushable {
  readonly counters: OutputCounters;
  private readonly headCap: number;
  private readonly tailCap: number;
  private readonly maxChunk: number;
  private readonly tails: Record<OutputStreamName, TailEntry[]> = { stdout: [], stderr: [] };
  private readonly tailBytes: Record<OutputStreamName, number> = { stdout: 0, stderr: 0 };
  private pending: PendingChunk[] = [];
  private pendingBytes = 0;
  private drops: number[] = [];
  private flushing: Promise<void> | null = null;
  private failure: unknown = null;
  private mirror: Record<OutputStreamName, Buffer[]> | null;

  private readonly store: CommandStore;
  private readonly commandId: string;
  private readonly options: OutputLogOptions;

  private constructor(store: CommandStore, commandId: string, counters: OutputCounters, options: OutputLogOptions) {
    this.store = store;
    this.commandId = commandId;
    this.options = options;
    this.counters = {
      stdoutBytes: counters.stdoutBytes,
      stderrBytes: counters.stderrBytes,
      logBytes: counters.logBytes,
      stdoutTruncated: counters.stdoutTruncated,
      stderrTruncated: counters.stderrTruncated,
    };
    this.headCap = Math.floor(options.capPerStream / 2);
    this.tailCap = options.capPerStream - this.headCap;
    this.maxChunk = Math.max(64, Math.min(64 * 1024, Math.floor(this.tailCap / 4)));
    const fresh = counters.logBytes === 0;
    this.mirror = fresh && (options.mirrorUpTo ?? 0) > 0 && (options.mirrorUpTo ?? 0) <= this.headCap ? { stdout: [], stderr: [] } : null;
  }

  /** The whole output, while it is small enough to be kept in memory (see `mirrorUpTo`). */
  output(): { stdout: Buffer; stderr: Buffer } | null {
    if (!this.mirror) return null;
    return { stdout: Buffer.concat(this.mirror.stdout), stderr: Buffer.concat(this.mirror.stderr) };
  }

  /** A log for a command that has no output yet. */
  static fresh(store: CommandStore, commandId: string, options: OutputLogOptions): OutputLog {
    const zero = { stdoutBytes: 0, stderrBytes: 0, logBytes: 0, stdoutTruncated: false, stderrTruncated: false };
    return new OutputLog(store, commandId, zero, options);
  }

  /** The log of a command that already stored output (after a restart). */
  static async restore(store: CommandStore, commandId: string, counters: OutputCounters, options: OutputLogOptions): Promise<OutputLog> {
    const log = new OutputLog(store, commandId, counters, options);
    const chunks = await store.readOutput(commandId, 0, Number.MAX_SAFE_INTEGER);
    const seen: Record<OutputStreamName, number> = { stdout: 0, stderr: 0 };
    for (const c of chunks) {
      if (seen[c.stream] >= log.headCap) {
        log.tails[c.stream].push({ offset: c.offset, size: c.data.length, chunk: null });
        log.tailBytes[c.stream] += c.data.length;
      }
      seen[c.stream] += c.data.length;
    }
    return log;
  }

  /** Bytes received for each stream: where a re-attached reader resumes. */
  get received(): { stdout: number; stderr: number } {
    return { stdout: this.counters.stdoutBytes, stderr: this.counters.stderrBytes };
  }

  /**
   * Adds output. Resolves at once unless too much is waiting to be stored,
   * in which case it waits (backpressure towards the SSH channel).
   */
  async append(stream: OutputStreamName, data: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.mirror) {
      this.mirror[stream].push(data);
      const total = (stream === "stdout" ? this.counters.stdoutBytes : this.counters.stderrBytes) + data.length;
      if (total > (this.options.mirrorUpTo ?? 0)) this.mirror = null;
    }
    let rest = data;
    while (rest.length > 0) {
      const total = stream === "stdout" ? this.counters.stdoutBytes : this.counters.stderrBytes;
      const headRoom = this.headCap - Math.min(total, this.headCap);
      const tail = headRoom === 0;
      const piece = rest.subarray(0, tail ? this.maxChunk : headRoom);
      this.add(stream, tail, piece);
      rest = rest.subarray(piece.length);
    }
    if (this.pendingBytes >= this.maxChunk * 4) {
      await this.flush();
    } else {
      this.options.clock.schedule(this);
    }
  }

  private add(stream: OutputStreamName, tail: boolean, piece: Buffer): void {
    const offset = this.counters.logBytes;
    this.counters.logBytes += piece.length;
    if (stream === "stdout") this.counters.stdoutBytes += piece.length;
    else this.counters.stderrBytes += piece.length;
    this.pendingBytes += piece.length;

    const last = this.pending.at(-1);
    let chunk: PendingChunk;
    if (last && last.stream === stream && last.tail === tail && last.offset + last.size === offset && last.size + piece.length <= this.maxChunk) {
      last.parts.push(piece);
      last.size += piece.length;
      chunk = last;
      if (tail) {
        const entry = this.tails[stream].at(-1);
        if (entry) entry.size += piece.length;
      }
    } else {
      chunk = { offset, stream, tail, parts: [piece], size: piece.length };
      this.pending.push(chunk);
      if (tail) this.tails[stream].push({ offset, size: piece.length, chunk });
    }
    if (!tail) return;
    this.tailBytes[stream] += piece.length;
    const entries = this.tails[stream];
    while (this.tailBytes[stream] > this.tailCap && entries.length > 1) {
      const dropped = entries.shift()!;
      this.tailBytes[stream] -= dropped.size;
      if (dropped.chunk) {
        this.pending = this.pending.filter((c) => c !== dropped.chunk);
        this.pendingBytes -= dropped.size;
      } else {
        this.drops.push(dropped.offset);
      }
      if (stream === "stdout") this.counters.stdoutTruncated = true;
      else this.counters.stderrTruncated = true;
    }
  }

  /**
   * Flush for the clock's tick. A failure is kept and thrown to the next
   * `append` or `flush`, whose caller ends the command.
   */
  flushNow(): void {
    this.flush().catch(() => undefined);
  }

  /** Stores everything appended so far. */
  async flush(): Promise<void> {
    this.options.clock.cancel(this);
    while (this.flushing) await this.flushing;
    if (this.failure) throw this.failure;
    if (this.pending.length === 0 && this.drops.length === 0) return;
    const pending = this.pending;
    const drops = this.drops;
    this.pending = [];
    this.pendingBytes = 0;
    this.drops = [];
    for (const entries of Object.values(this.tails)) {
      for (const e of entries) if (e.chunk && pending.includes(e.chunk)) e.chunk = null;
    }
    const chunks: OutputChunkRecord[] = pending.map((c) => ({
      offset: c.offset,
      stream: c.stream,
      data: c.parts.length === 1 ? c.parts[0]! : Buffer.concat(c.parts),
    }));
    // Everything counted so far is in `chunks` or already stored.
    const counters = { ...this.counters };
    this.flushing = this.store
      .appendOutput(this.commandId, chunks, drops, counters)
      .then(() => this.options.onStored?.(counters.logBytes))
      .catch((err: unknown) => {
        this.failure = err;
        throw err;
      })
      .finally(() => {
        this.flushing = null;
      });
    await this.flushing;
  }

  /** Leaves the clock (after a final flush). */
  close(): void {
    this.options.clock.cancel(this);
  }
}
