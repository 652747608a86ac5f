/**
 * One clock for the output of every running command: logs with unsaved
 * output wait for the next tick, and a tick flushes all of them in the same
 * turn of the event loop (so the store commits them together). One timer
 * for the whole process instead of one per command.
 *
 * The tick stretches with the number of logs waiting, so that a thousand
 * chatty commands cost a bounded number of store writes per second while a
 * few commands still reach their followers within tens of milliseconds.
 */

export interface Flushable {
  /** Stores what is pending; failures are the flushable's own to record. */
  flushNow(): void;
}

export interface FlushClockOptions {
  /** Tick with few logs waiting, in ms. @default 25 */
  minIntervalMs?: number;
  /** Longest tick, however many logs wait, in ms. @default 100 */
  maxIntervalMs?: number;
  /** Logs waiting per extra millisecond of tick. @default 10 */
  logsPerMs?: number;
}

export class FlushClock {
  readonly #min: number;
  readonly #max: number;
  readonly #perMs: number;
  #waiting = new Set<Flushable>();
  #timer: NodeJS.Timeout | null = null;

  constructor(options: FlushClockOptions = {}) {
    this.#min = options.minIntervalMs ?? 25;
    this.#max = options.maxIntervalMs ?? 100;
    this.#perMs = options.logsPerMs ?? 10;
  }

  /** The tick that `schedule` would wait now, in ms. */
  get intervalMs(): number {
    return Math.min(this.#max, Math.max(this.#min, Math.ceil(this.#waiting.size / this.#perMs)));
  }

  /** Logs waiting for the next tick. */
  get waiting(): number {
    return this.#waiting.size;
  }

  /** Flushes `log` at the next tick (once, however often it is scheduled). */
  schedule(log: Flushable): void {
    this.#waiting.add(log);
    if (this.#timer === null) this.#timer = setTimeout(() => this.#tick(), this.intervalMs);
  }

  /** Drops `log` from the next tick (it flushed by itself). */
  cancel(log: Flushable): void {
    this.#waiting.delete(log);
  }

  #tick(): void {
    this.#timer = null;
    const due = this.#waiting;
    this.#waiting = new Set();
    for (const log of due) log.flushNow();
  }

  /** Stops the timer; logs still waiting are not flushed (their owners flush them). */
  stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#waiting.clear();
  }
}
