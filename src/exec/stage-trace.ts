/**
 * Timestamps of one command's way through the engine (for the `debug` log
 * level only): where a command's latency goes, stage by stage. Nothing is
 * recorded unless an observer asks for it.
 */
export class StageTrace {
  private readonly t0 = performance.now();
  private readonly marks: [string, number][] = [];

  /** Records that `stage` was reached now. */
  mark(stage: string): void {
    this.marks.push([stage, performance.now() - this.t0]);
  }

  /** Each stage's time since the previous one, ms (rounded to µs), in order; `total` since the start. */
  durations(): Record<string, number> {
    const out: Record<string, number> = {};
    let prev = 0;
    for (const [stage, t] of this.marks) {
      out[stage] = Math.round((t - prev) * 1000) / 1000;
      prev = t;
    }
    out.total = Math.round(prev * 1000) / 1000;
    return out;
  }
}
