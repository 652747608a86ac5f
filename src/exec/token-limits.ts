/**
 * Per-token abuse limits, on top of the process-wide admission limits:
 *
 * - request rate: a token bucket per token (`requestsPerSecond` sustained,
 *   `burst` above it); an empty bucket refuses with the seconds until the
 *   next request would pass;
 * - concurrent commands: commands of one token queued or running in this
 *   process (a batch counts its first wave, min(machines, max_concurrency));
 * - concurrent streams: WatchCommand, ExecuteAsync, BatchStream and REST
 *   `/stream` followers of one token.
 *
 * Refusals are ResourceExhaustedError, like admission's (429 /
 * RESOURCE_EXHAUSTED with `retry-after`). Memory stays bounded: a bucket that
 * has refilled completely says nothing a fresh one would not, so idle buckets
 * are dropped, and the map is capped at `maxTracked` entries (the oldest
 * dropped first). Counters exist only while something is held.
 *
 * The bootstrap admin token is exempt (the process-wide limits still apply):
 * it is the operator's way in when everything else is throttled.
 */
import { ResourceExhaustedError } from "./errors.ts";
import type { Principal, TokenLimitOverrides } from "./tokens.ts";

export interface TokenLimitDefaults {
  maxConcurrentCommands: number;
  requestsPerSecond: number;
  burst: number;
  maxStreams: number;
}

export interface TokenLimitSettings {
  maxConcurrentCommands: string;
  requestsPerSecond: string;
  burst: string;
  maxStreams: string;
}

interface Bucket {
  tokens: number;
  at: number;
  /** When it will have refilled completely: from then on it is the same as no bucket. */
  fullAt: number;
}

export type TokenLimit = "token_requests" | "token_commands" | "token_streams";

export interface TokenLimiterOptions {
  defaults: TokenLimitDefaults;
  /** Setting (environment variable) of each default, named in refusals. */
  settings: TokenLimitSettings;
  /** Buckets kept at most. @default 10000 */
  maxTracked?: number;
  now?: () => number;
  onRefused?: (limit: TokenLimit) => void;
}

/** Retry-After of the count limits: they free up only as commands or streams end. */
const COUNT_RETRY_SECONDS = 5;

export class TokenLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly commands = new Map<string, number>();
  private readonly streams = new Map<string, number>();
  private readonly options: TokenLimiterOptions;
  private readonly maxTracked: number;
  private readonly now: () => number;
  private lastSweep = 0;

  constructor(options: TokenLimiterOptions) {
    this.options = options;
    this.maxTracked = options.maxTracked ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  /** Effective limits of a token: its overrides, else the defaults. */
  limitsOf(o: TokenLimitOverrides): TokenLimitDefaults {
    const d = this.options.defaults;
    return {
      maxConcurrentCommands: o.maxConcurrentCommands ?? d.maxConcurrentCommands,
      requestsPerSecond: o.requestsPerSecond ?? d.requestsPerSecond,
      burst: o.burst ?? d.burst,
      maxStreams: o.maxStreams ?? d.maxStreams,
    };
  }

  /** Buckets tracked now (for tests and metrics). */
  get tracked(): number {
    return this.buckets.size;
  }

  /** Takes one request from the token's bucket, or throws ResourceExhaustedError. */
  request(p: Principal): void {
    if (p.bootstrap) return;
    const { requestsPerSecond: rate, burst } = this.limitsOf(p.limits);
    const now = this.now();
    this.sweep(now);
    const capacity = Math.max(1, burst);
    let b = this.buckets.get(p.tokenId);
    if (b === undefined) {
      if (this.buckets.size >= this.maxTracked) {
        const oldest = this.buckets.keys().next();
        if (!oldest.done) this.buckets.delete(oldest.value);
      }
      b = { tokens: capacity, at: now, fullAt: now };
    } else {
      this.buckets.delete(p.tokenId);
      b.tokens = Math.min(capacity, b.tokens + ((now - b.at) / 1000) * rate);
      b.at = now;
    }
    // Most recently used last, so the oldest entry is the first one.
    this.buckets.set(p.tokenId, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      b.fullAt = now + ((capacity - b.tokens) / rate) * 1000;
      return;
    }
    const retry = Math.max(1, Math.ceil((1 - b.tokens) / rate));
    const s = this.options.settings;
    throw this.refuse(
      "token_requests",
      `too many requests from token ${JSON.stringify(p.name)}: at most ${rate} per second with bursts of ${capacity} (limit ${s.requestsPerSecond}, ${s.burst}, or the token's limits); retry after ${retry} s`,
      retry,
    );
  }

  /** Drops buckets that have refilled completely (at most once a second). */
  private sweep(now: number): void {
    if (now - this.lastSweep < 1000) return;
    this.lastSweep = now;
    for (const [id, b] of this.buckets) if (b.fullAt <= now) this.buckets.delete(id);
  }

  /** Holds `n` command places of the token until the returned release (idempotent) is called. */
  holdCommands(p: Principal, n: number): () => void {
    if (p.bootstrap) return () => {};
    const max = this.limitsOf(p.limits).maxConcurrentCommands;
    const held = this.commands.get(p.tokenId) ?? 0;
    if (held + n > max) {
      throw this.refuse(
        "token_commands",
        `too many commands of token ${JSON.stringify(p.name)}: ${held} queued or running${n > 1 ? `, this batch needs ${n} at once` : ""}, at most ${max} (limit ${this.options.settings.maxConcurrentCommands}, or the token's limits); retry after ${COUNT_RETRY_SECONDS} s`,
        COUNT_RETRY_SECONDS,
      );
    }
    return this.hold(this.commands, p.tokenId, n);
  }

  /** Holds one stream place of the token until the returned release (idempotent) is called. */
  holdStream(p: Principal): () => void {
    if (p.bootstrap) return () => {};
    const max = this.limitsOf(p.limits).maxStreams;
    const held = this.streams.get(p.tokenId) ?? 0;
    if (held + 1 > max) {
      throw this.refuse(
        "token_streams",
        `too many streams of token ${JSON.stringify(p.name)}: ${held} open, at most ${max} (limit ${this.options.settings.maxStreams}, or the token's limits); retry after ${COUNT_RETRY_SECONDS} s`,
        COUNT_RETRY_SECONDS,
      );
    }
    return this.hold(this.streams, p.tokenId, 1);
  }

  private hold(map: Map<string, number>, id: string, n: number): () => void {
    map.set(id, (map.get(id) ?? 0) + n);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (map.get(id) ?? n) - n;
      if (left <= 0) map.delete(id);
      else map.set(id, left);
    };
  }

  private refuse(limit: TokenLimit, message: string, retry: number): ResourceExhaustedError {
    this.options.onRefused?.(limit);
    const s = this.options.settings;
    const setting = limit === "token_requests" ? s.requestsPerSecond : limit === "token_commands" ? s.maxConcurrentCommands : s.maxStreams;
    return new ResourceExhaustedError(limit, setting, message, retry);
  }
}
