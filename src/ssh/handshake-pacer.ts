/**
 * Limits concurrent unauthenticated SSH handshakes, per destination and
 * overall, granting slots in FIFO order. OpenSSH's default
 * `MaxStartups 10:30:100` randomly drops connections beyond 10 concurrent
 * unauthenticated ones, so a fan-out to one sshd must stay below that.
 *
 * The wait queue is bounded for new starts: `reserve` (called at admission,
 * before anything is stored) refuses a start whose handshake would have to
 * wait while `maxQueued` handshakes already wait or were promised a place.
 * Handshakes of work already accepted (re-attach, cancel, a batch's later
 * items) always take their turn.
 */

export interface HandshakePacerOptions {
  /** @default 8 */
  perDestination?: number;
  /** @default 64 */
  overall?: number;
  /** Handshakes that may wait for a slot (bound checked by `reserve`). @default 256 */
  maxQueued?: number;
}

export interface HandshakePacer {
  /** Waits for a slot for `destination`; resolves with its release function (idempotent). */
  acquire(destination: string, signal?: AbortSignal): Promise<() => void>;
  /** Handshakes in progress: overall, or for one destination. */
  active(destination?: string): number;
  /** Callers waiting for a slot. */
  waiting(): number;
  /**
   * For a start admitted now, whose handshake to `destination` follows soon:
   * holds a slot (when one is free) or a place in the queue, until the
   * returned release is called (idempotent). Null when it would have to wait
   * and the queue (waiting plus held places) is full.
   */
  reserve(destination: string): (() => void) | null;
  /** The queue bound applied by `reserve`. */
  readonly maxQueued: number;
}

interface Waiter {
  destination: string;
  grant: (release: () => void) => void;
}

export function createHandshakePacer(options: HandshakePacerOptions = {}): HandshakePacer {
  const perDestination = Math.max(1, options.perDestination ?? 8);
  const overall = Math.max(1, options.overall ?? 64);
  const activeByDest = new Map<string, number>();
  let activeTotal = 0;
  const queue: Waiter[] = [];
  const maxQueued = Math.max(0, options.maxQueued ?? 256);
  /** Slots promised by `reserve` (total and per destination), and queue places promised. */
  let heldSlots = 0;
  const heldByDest = new Map<string, number>();
  let heldQueue = 0;

  const canStart = (dest: string): boolean =>
    activeTotal < overall && (activeByDest.get(dest) ?? 0) < perDestination;

  const take = (dest: string): (() => void) => {
    activeTotal++;
    activeByDest.set(dest, (activeByDest.get(dest) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      activeTotal--;
      const n = (activeByDest.get(dest) ?? 1) - 1;
      if (n === 0) activeByDest.delete(dest);
      else activeByDest.set(dest, n);
      pump();
    };
  };

  // FIFO, but a waiter for a saturated destination does not block waiters
  // for other destinations behind it.
  const pump = (): void => {
    for (let i = 0; i < queue.length && activeTotal < overall; ) {
      const w = queue[i];
      if (w !== undefined && canStart(w.destination)) {
        queue.splice(i, 1);
        w.grant(take(w.destination));
      } else {
        i++;
      }
    }
  };

  return {
    acquire(dest, signal) {
      if (signal?.aborted) return Promise.reject(signal.reason);
      if (canStart(dest) && !queue.some((w) => w.destination === dest)) {
        return Promise.resolve(take(dest));
      }
      return new Promise((resolve, reject) => {
        const waiter: Waiter = {
          destination: dest,
          grant: (release) => {
            signal?.removeEventListener("abort", onAbort);
            resolve(release);
          },
        };
        const onAbort = (): void => {
          const i = queue.indexOf(waiter);
          if (i >= 0) queue.splice(i, 1);
          reject(signal?.reason);
        };
        signal?.addEventListener("abort", onAbort, { once: true });
        queue.push(waiter);
      });
    },
    active(dest) {
      return dest === undefined ? activeTotal : (activeByDest.get(dest) ?? 0);
    },
    waiting() {
      return queue.length;
    },
    reserve(dest) {
      const startable =
        activeTotal + heldSlots < overall &&
        (activeByDest.get(dest) ?? 0) + (heldByDest.get(dest) ?? 0) < perDestination &&
        !queue.some((w) => w.destination === dest);
      let released = false;
      if (startable) {
        heldSlots++;
        heldByDest.set(dest, (heldByDest.get(dest) ?? 0) + 1);
        return () => {
          if (released) return;
          released = true;
          heldSlots--;
          const n = (heldByDest.get(dest) ?? 1) - 1;
          if (n === 0) heldByDest.delete(dest);
          else heldByDest.set(dest, n);
        };
      }
      if (queue.length + heldQueue >= maxQueued) return null;
      heldQueue++;
      return () => {
        if (released) return;
        released = true;
        heldQueue--;
      };
    },
    maxQueued,
  };
}
