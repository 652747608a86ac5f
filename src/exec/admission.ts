/**
 * Admission control: a start is accepted only while this process is below
 * its limits, and refused at once (ResourceExhaustedError) otherwise, before
 * anything is stored, so a refused start never runs later and no caller
 * waits in an unbounded queue.
 *
 * - active commands: queued + running commands of this process, all modes
 *   (Execute, async starts, batch items in flight, re-attached ones);
 * - pending starts: accepted commands not yet running on their target
 *   (waiting for an SSH connection, a handshake slot or a channel);
 * - SSH handshakes queued: checked through the transport's reservation
 *   (`Transport.reserveStart`), see `src/ssh/handshake-pacer.ts`;
 * - followers: concurrent live-output followers (WatchCommand, ExecuteAsync,
 *   REST `/stream`).
 *
 * Accounting is by leases: `admitCommands(n)` takes `n` places at once (one
 * for a single start, the first wave of a batch); each command launched on
 * the lease takes a slot, which counts as a pending start until `started()`
 * and gives its place back when it `end()`s.
 */
import { ResourceExhaustedError } from "./errors.ts";
import type { StartReservation } from "./ports.ts";

export type AdmissionLimit = "active_commands" | "pending_starts" | "ssh_handshake_queue" | "followers";

export interface AdmissionLimits {
  maxActiveCommands: number;
  maxPendingStarts: number;
  maxFollowers: number;
}

export interface AdmissionOptions {
  limits: AdmissionLimits;
  /** The setting (environment variable) of each limit, named in refusals. */
  settings: Record<AdmissionLimit, string>;
  /** Called on every refusal (metrics). */
  onRefused?: (limit: AdmissionLimit) => void;
}

/**
 * `Retry-After` of each limit, in seconds: pending starts and queued
 * handshakes drain within a handshake's time; commands and followers only
 * as commands end.
 */
export const RETRY_AFTER_SECONDS: Readonly<Record<AdmissionLimit, number>> = {
  active_commands: 5,
  pending_starts: 1,
  ssh_handshake_queue: 1,
  followers: 5,
};

/** One admitted command: a pending start until `started()`, a place until `end()`. Both idempotent. */
export interface CommandSlot {
  /** The command runs on its target now (no longer a pending start). */
  started(): void;
  /** The command has been handed to the transport: its handshake reservation, if any, is used up. */
  dispatched(): void;
  /** The command ended (or never ran): its place is free again. */
  end(): void;
}

/** A follower's place; `release()` is idempotent. */
export interface FollowerPermit {
  release(): void;
}

export class Admission {
  private active = 0;
  private pending = 0;
  private following = 0;
  readonly limits: AdmissionLimits;
  private readonly options: AdmissionOptions;

  constructor(options: AdmissionOptions) {
    this.options = options;
    this.limits = options.limits;
  }

  /** Queued and running commands of this process. */
  get activeCommands(): number {
    return this.active;
  }

  /** Accepted commands not running on their target yet. */
  get pendingStarts(): number {
    return this.pending;
  }

  get followers(): number {
    return this.following;
  }

  /**
   * Takes `n` command places, or throws ResourceExhaustedError naming the
   * limit. `reserve` (called last, only when the other limits allow) asks
   * the transport for its handshake reservation; null refuses.
   */
  admitCommands(n: number, reserve?: () => StartReservation | null): CommandLease {
    const { maxActiveCommands, maxPendingStarts } = this.limits;
    if (this.active + n > maxActiveCommands) {
      throw this.refuse(
        "active_commands",
        n === 1
          ? `too many commands: this process runs or queues ${this.active} of at most ${maxActiveCommands}`
          : `too many commands: this process runs or queues ${this.active} of at most ${maxActiveCommands}, and this batch needs ${n} at once (its max_concurrency)`,
      );
    }
    if (this.pending + n > maxPendingStarts) {
      throw this.refuse(
        "pending_starts",
        n === 1
          ? `too many pending starts: ${this.pending} accepted commands wait to start on their targets, at most ${maxPendingStarts}`
          : `too many pending starts: ${this.pending} accepted commands wait to start on their targets, at most ${maxPendingStarts}, and this batch starts ${n} at once (its max_concurrency)`,
      );
    }
    let reservation: StartReservation | null = null;
    if (reserve !== undefined) {
      reservation = reserve();
      if (reservation === null) {
        throw this.refuse("ssh_handshake_queue", "too many SSH handshakes queued: the target needs a new connection and the handshake queue is full");
      }
    }
    this.active += n;
    this.pending += n;
    return new CommandLease(this, n, reservation);
  }

  /**
   * Throws what `admitCommands(n)` would for the command limits, taking
   * nothing: lets a call be refused before any other work (a lookup in the
   * database) when the process is already full.
   */
  precheck(n: number): void {
    if (this.active + n > this.limits.maxActiveCommands || this.pending + n > this.limits.maxPendingStarts) this.admitCommands(n);
  }

  /** Places taken without a check: commands this process must follow anyway (re-attached after a restart). */
  forceCommands(n: number): CommandLease {
    this.active += n;
    this.pending += n;
    return new CommandLease(this, n, null);
  }

  /** A follower's place, or ResourceExhaustedError. */
  admitFollower(): FollowerPermit {
    if (this.following >= this.limits.maxFollowers) {
      throw this.refuse("followers", `too many followers: ${this.following} clients follow live output, at most ${this.limits.maxFollowers}`);
    }
    this.following++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.following--;
      },
    };
  }

  /** @internal accounting for leases and slots */
  give(active: number, pending: number): void {
    this.active -= active;
    this.pending -= pending;
  }

  /** @internal a slot beyond the lease's places */
  forceOne(): void {
    this.active++;
  }

  /** @internal a slot beyond the lease's reserved pending starts */
  addPending(): void {
    this.pending++;
  }

  private refuse(limit: AdmissionLimit, what: string): ResourceExhaustedError {
    this.options.onRefused?.(limit);
    const setting = this.options.settings[limit];
    const retry = RETRY_AFTER_SECONDS[limit];
    return new ResourceExhaustedError(limit, setting, `${what} (limit ${setting}); retry after ${retry} s`, retry);
  }
}

/**
 * Places held for one start or one batch. `slot()` puts a command on a free
 * place; `seal()` says no more slots will be taken: free places go back now,
 * used ones as their commands end.
 */
export class CommandLease {
  private free: number;
  /** Pending starts counted at admission and not yet handed to a slot. */
  private pendingUnused: number;
  private sealed = false;
  private reservation: StartReservation | null;
  private readonly admission: Admission;

  constructor(admission: Admission, places: number, reservation: StartReservation | null) {
    this.admission = admission;
    this.free = places;
    this.pendingUnused = places;
    this.reservation = reservation;
  }

  /** A command on one of the lease's places (a batch item after an earlier one ended reuses its place). */
  slot(): CommandSlot {
    if (this.free > 0) this.free--;
    else this.admission.forceOne();
    if (this.pendingUnused > 0) this.pendingUnused--;
    else this.admission.addPending();
    let reservation = this.reservation;
    this.reservation = null;
    let pending = true;
    let ended = false;
    const dispatched = (): void => {
      reservation?.release();
      reservation = null;
    };
    return {
      started: () => {
        dispatched();
        if (!pending) return;
        pending = false;
        this.admission.give(0, 1);
      },
      dispatched,
      end: () => {
        dispatched();
        if (ended) return;
        ended = true;
        if (pending) {
          pending = false;
          this.admission.give(0, 1);
        }
        if (this.sealed) this.admission.give(1, 0);
        else this.free++;
      },
    };
  }

  /** No more slots: unused places and reservations go back now. Idempotent. */
  seal(): void {
    if (this.sealed) return;
    this.sealed = true;
    this.reservation?.release();
    this.reservation = null;
    this.admission.give(this.free, this.pendingUnused);
    this.free = 0;
    this.pendingUnused = 0;
  }
}
