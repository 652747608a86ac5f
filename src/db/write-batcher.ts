/**
 * Group commit for the command store's hot writes. Every write submitted
 * while the event loop runs one turn (state transitions, output chunks and
 * counters of every running command) is applied by ONE transaction at the
 * next turn, instead of one transaction per write. Batches run one at a
 * time, in submission order, so two writes of one caller keep their order.
 *
 * Each write settles on its own: a write that fails (a constraint, say)
 * rejects alone; the executor decides how to isolate it (a savepoint, or a
 * retry of the batch one write at a time).
 */

/** Applies a batch of writes atomically; one result (or Error) per write, in order. */
export type BatchExecutor<Op, R> = (ops: readonly Op[]) => Promise<Array<R | Error>> | Array<R | Error>;

export interface WriteBatcherStats {
  /** Batches applied so far. */
  batches: number;
  /** Writes applied so far. */
  writes: number;
  /** Writes waiting for the next batch. */
  queued: number;
  /** Largest batch so far. */
  largestBatch: number;
}

interface Pending<Op, R> {
  op: Op;
  resolve: (value: R) => void;
  reject: (err: unknown) => void;
}

export interface WriteBatcherOptions {
  /**
   * Most writes applied by one transaction; the rest wait for the next turn,
   * so that one synchronous SQLite transaction stays a few milliseconds long.
   * @default 500
   */
  maxBatch?: number;
  /** Called after each batch with its size and duration (ms). */
  onBatch?: (size: number, ms: number) => void;
}

export class WriteBatcher<Op, R> {
  readonly #execute: BatchExecutor<Op, R>;
  readonly #maxBatch: number;
  readonly #onBatch: ((size: number, ms: number) => void) | undefined;
  #queue: Array<Pending<Op, R>> = [];
  #scheduled = false;
  #running: Promise<void> | null = null;
  #batches = 0;
  #writes = 0;
  #largest = 0;

  constructor(execute: BatchExecutor<Op, R>, options: WriteBatcherOptions = {}) {
    this.#execute = execute;
    this.#maxBatch = options.maxBatch ?? 500;
    this.#onBatch = options.onBatch;
  }

  /** Queues a write; settles once the batch holding it is committed (or failed). */
  submit(op: Op): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.#queue.push({ op, resolve, reject });
      this.#schedule();
    });
  }

  stats(): WriteBatcherStats {
    return { batches: this.#batches, writes: this.#writes, queued: this.#queue.length, largestBatch: this.#largest };
  }

  /** Resolves once every write submitted so far is settled. */
  async drain(): Promise<void> {
    while (this.#queue.length > 0 || this.#running || this.#scheduled) {
      if (this.#running) await this.#running;
      else await new Promise<void>((r) => setImmediate(r));
    }
  }

  #schedule(): void {
    if (this.#scheduled || this.#running) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#running = this.#runOne().finally(() => {
        this.#running = null;
        if (this.#queue.length > 0) this.#schedule();
      });
    });
  }

  async #runOne(): Promise<void> {
    const batch = this.#queue.length <= this.#maxBatch ? this.#queue : this.#queue.slice(0, this.#maxBatch);
    this.#queue = batch === this.#queue ? [] : this.#queue.slice(batch.length);
    if (batch.length === 0) return;
    const started = performance.now();
    let results: Array<R | Error>;
    try {
      results = await this.#execute(batch.map((p) => p.op));
    } catch (err) {
      for (const p of batch) p.reject(err);
      return;
    }
    this.#batches++;
    this.#writes += batch.length;
    if (batch.length > this.#largest) this.#largest = batch.length;
    this.#onBatch?.(batch.length, performance.now() - started);
    batch.forEach((p, i) => {
      const r = results[i];
      if (r instanceof Error) p.reject(r);
      else p.resolve(r as R);
    });
  }
}
