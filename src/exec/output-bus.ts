/**
 * Wakes followers of a command when more of its output is stored or when it
 * ends. Holds no output itself: followers read from the store, so a slow
 * follower costs nothing while it is not reading.
 *
 * Each command has a version that every notification bumps. A follower reads
 * the version, then the store, then waits for the version to move on, so a
 * notification that lands between its read and its wait is never missed.
 */
export class OutputBus {
  private readonly versions = new Map<string, number>();
  private readonly waiters = new Map<string, Set<() => void>>();

  version(id: string): number {
    return this.versions.get(id) ?? 0;
  }

  /**
   * Resolves once the version of `id` differs from `seen`, `signal` aborts,
   * or `maxWaitMs` passed (a safety net: followers then simply look again).
   */
  waitChange(id: string, seen: number, signal?: AbortSignal, maxWaitMs = 1000): Promise<void> {
    if (this.version(id) !== seen || signal?.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => done(), maxWaitMs);
      let set = this.waiters.get(id);
      if (!set) {
        set = new Set();
        this.waiters.set(id, set);
      }
      const s = set;
      const done = () => {
        clearTimeout(timer);
        s.delete(done);
        if (s.size === 0 && this.waiters.get(id) === s) this.waiters.delete(id);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      s.add(done);
      signal?.addEventListener("abort", done, { once: true });
    });
  }

  notify(id: string): void {
    this.versions.set(id, this.version(id) + 1);
    const set = this.waiters.get(id);
    if (!set) return;
    for (const w of [...set]) w();
  }

  /** Forgets a command that ended (after a last notify). */
  forget(id: string): void {
    this.notify(id);
    this.versions.delete(id);
  }

  get followers(): number {
    let n = 0;
    for (const s of this.waiters.values()) n += s.size;
    return n;
  }
}
