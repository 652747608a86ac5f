/**
 * Bearer tokens: creation (the secret is returned once), verification,
 * revocation and expiry. Only a SHA-256 digest of each secret is stored;
 * verification looks the digest up and compares it in constant time.
 *
 * Verified tokens are cached in memory for `cacheMs` so that most requests
 * cost no database read. Revocation through this process takes effect at
 * once (`revoke` drops the cache entry); expiry is checked on every request
 * against the cached record. Another process sharing the PostgreSQL database
 * sees a revocation within `cacheMs` (its cache entry ages out): the one
 * place to invalidate from elsewhere is {@link TokenRegistry.invalidate}.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError } from "./errors.ts";
import { newId } from "./ids.ts";
import { FULL_SCOPE, isWithin, type Scope } from "./scope.ts";

/** Overrides of the service's per-token limits (null: the default). */
export interface TokenLimitOverrides {
  maxConcurrentCommands: number | null;
  requestsPerSecond: number | null;
  burst: number | null;
  maxStreams: number | null;
}

export const NO_OVERRIDES: TokenLimitOverrides = Object.freeze({ maxConcurrentCommands: null, requestsPerSecond: null, burst: null, maxStreams: null });

export interface TokenRecord {
  id: string;
  name: string;
  /** Hex SHA-256 of the secret. */
  secretHash: string;
  scope: Scope;
  limits: TokenLimitOverrides;
  /** The bootstrap admin token (FLEETRUN_ADMIN_TOKEN or `<data dir>/admin-token`). */
  bootstrap: boolean;
  createdBy: string | null;
  createdAt: Date;
  expiresAt: Date | null;
  lastUsedAt: Date | null;
  revokedAt: Date | null;
}

export interface TokenStore {
  /** Throws AlreadyExistsError when an active (not revoked) token has that name. */
  insert(token: TokenRecord): Promise<void>;
  get(id: string): Promise<TokenRecord | null>;
  findByHash(secretHash: string): Promise<TokenRecord | null>;
  /** Newest first. */
  list(limit: number, offset: number): Promise<{ items: TokenRecord[]; total: number }>;
  /** Every token, newest first (scoped listings filter in memory; token counts are small). */
  listAll(): Promise<TokenRecord[]>;
  /** Sets `revoked_at` unless already set; whether it was set now. */
  revoke(id: string, at: Date): Promise<boolean>;
  touch(id: string, at: Date): Promise<void>;
  /** The active bootstrap token, if any. */
  getBootstrap(): Promise<TokenRecord | null>;
  /** Replaces the bootstrap token's secret hash. */
  setSecretHash(id: string, secretHash: string): Promise<void>;
}

/** Who calls: the verified token. */
export interface Principal {
  /** The token's name: recorded as `requested_by` (and `cancelled_by`). */
  name: string;
  tokenId: string;
  scope: Scope;
  limits: TokenLimitOverrides;
  /** The bootstrap admin token: exempt from per-token limits. */
  bootstrap: boolean;
  expiresAt: Date | null;
}

export const BOOTSTRAP_TOKEN_NAME = "admin";
/** Prefix of every generated secret, so secret scanners can recognise them. */
export const SECRET_PREFIX = "frt_";

export function digest(secret: string): Buffer {
  return createHash("sha256").update(secret, "utf8").digest();
}

/** `frt_<id body>_<43 random base64url characters>`: 256 random bits; the id is not secret. */
export function newSecret(tokenId: string): string {
  return `${SECRET_PREFIX}${tokenId.slice("tok_".length)}_${randomBytes(32).toString("base64url")}`;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;

export interface CreateTokenInput {
  name: string;
  scope: Scope;
  expiresAt: Date | null;
  limits: TokenLimitOverrides;
}

export interface TokenRegistryOptions {
  /** How long a verified token is trusted without reading the database. @default 5000 */
  cacheMs?: number;
  /** `last_used_at` is written at most this often per token. @default 60000 */
  touchEveryMs?: number;
  /** Cached tokens at most (oldest dropped first). @default 10000 */
  maxCached?: number;
  now?: () => number;
  /** A failed background write (last_used_at). */
  onError?: (err: unknown) => void;
}

interface Cached {
  principal: Principal;
  hash: Buffer;
  until: number;
}

function principalOf(t: TokenRecord): Principal {
  return { name: t.name, tokenId: t.id, scope: t.scope, limits: t.limits, bootstrap: t.bootstrap, expiresAt: t.expiresAt };
}

function limitsWithin(child: TokenLimitOverrides, parent: TokenLimitOverrides): string | null {
  for (const k of ["maxConcurrentCommands", "requestsPerSecond", "burst", "maxStreams"] as const) {
    const p = parent[k];
    const c = child[k];
    if (p !== null && (c === null || c > p)) return k;
  }
  return null;
}

export class TokenRegistry {
  private readonly store: TokenStore;
  private readonly cache = new Map<string, Cached>();
  /** Settles once the bootstrap token is stored. */
  private ready: Promise<void> = Promise.resolve();
  /** Bumped by every invalidation: a lookup that raced one is not cached. */
  private epoch = 0;
  private readonly touched = new Map<string, number>();
  private readonly cacheMs: number;
  private readonly touchEveryMs: number;
  private readonly maxCached: number;
  private readonly now: () => number;
  private readonly onError: (err: unknown) => void;

  constructor(store: TokenStore, options: TokenRegistryOptions = {}) {
    this.store = store;
    this.cacheMs = options.cacheMs ?? 5000;
    this.touchEveryMs = options.touchEveryMs ?? 60_000;
    this.maxCached = options.maxCached ?? 10_000;
    this.now = options.now ?? Date.now;
    this.onError = options.onError ?? (() => {});
  }

  /**
   * Stores the bootstrap admin token's digest (every start: the token may
   * have changed through FLEETRUN_ADMIN_TOKEN). With several processes on one
   * database, the last to start wins: give them all the same token.
   */
  ensureBootstrap(secret: string): Promise<TokenRecord> {
    const done = this.storeBootstrap(secret);
    // Requests wait for it: none is verified against a stale digest.
    this.ready = done.then(
      () => {},
      () => {},
    );
    return done;
  }

  private async storeBootstrap(secret: string): Promise<TokenRecord> {
    const hash = digest(secret).toString("hex");
    for (let attempt = 0; ; attempt++) {
      const current = await this.store.getBootstrap();
      if (current !== null) {
        if (current.secretHash !== hash) {
          await this.store.setSecretHash(current.id, hash);
          this.invalidate(current.id);
        }
        return { ...current, secretHash: hash };
      }
      const record: TokenRecord = {
        id: newId("tok"),
        name: BOOTSTRAP_TOKEN_NAME,
        secretHash: hash,
        scope: FULL_SCOPE,
        limits: NO_OVERRIDES,
        bootstrap: true,
        createdBy: null,
        createdAt: new Date(this.now()),
        expiresAt: null,
        lastUsedAt: null,
        revokedAt: null,
      };
      try {
        await this.store.insert(record);
        return record;
      } catch (err) {
        // Another process inserted it meanwhile: take theirs.
        if (!(err instanceof AlreadyExistsError) || attempt > 2) throw err;
      }
    }
  }

  /** The principal of a presented secret, or null (unknown, revoked or expired). */
  async verify(secret: string): Promise<Principal | null> {
    if (secret.length < 16 || secret.length > 512) return null;
    await this.ready;
    const h = digest(secret);
    const key = h.toString("hex");
    const now = this.now();
    let entry = this.cache.get(key);
    if (entry === undefined || entry.until <= now) {
      this.cache.delete(key);
      const epoch = this.epoch;
      const record = await this.store.findByHash(key);
      if (record === null || record.revokedAt !== null) return null;
      entry = { principal: principalOf(record), hash: Buffer.from(record.secretHash, "hex"), until: now + this.cacheMs };
      if (epoch === this.epoch) {
        if (this.cache.size >= this.maxCached) {
          const oldest = this.cache.keys().next();
          if (!oldest.done) this.cache.delete(oldest.value);
        }
        this.cache.set(key, entry);
      }
    }
    if (entry.hash.length !== h.length || !timingSafeEqual(entry.hash, h)) return null;
    const p = entry.principal;
    if (p.expiresAt !== null && p.expiresAt.getTime() <= now) return null;
    this.noteUse(p.tokenId, now);
    return p;
  }

  private noteUse(id: string, now: number): void {
    const last = this.touched.get(id);
    if (last !== undefined && now - last < this.touchEveryMs) return;
    if (this.touched.size >= this.maxCached) this.touched.clear();
    this.touched.set(id, now);
    this.store.touch(id, new Date(now)).catch(this.onError);
  }

  /** Drops a token from this process's cache: its next use reads the database. */
  invalidate(tokenId: string): void {
    this.epoch++;
    for (const [key, e] of this.cache) if (e.principal.tokenId === tokenId) this.cache.delete(key);
  }

  /**
   * Creates a token for `by`: its scope, expiry and limits must be within
   * `by`'s own (PermissionDeniedError otherwise). Returns the record and the
   * secret, which is not kept.
   */
  async create(input: CreateTokenInput, by: Principal): Promise<{ record: TokenRecord; secret: string }> {
    if (!NAME.test(input.name)) throw new InvalidArgumentError("name", "must be 1 to 64 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit");
    if (input.name === BOOTSTRAP_TOKEN_NAME || input.name === "system") {
      throw new AlreadyExistsError(`the token name ${JSON.stringify(input.name)} is reserved`, "name");
    }
    const now = this.now();
    if (input.expiresAt !== null && input.expiresAt.getTime() <= now) throw new InvalidArgumentError("expires_at", "must be in the future");
    if (!isWithin(input.scope, by.scope)) {
      throw new PermissionDeniedError("the new token's scope must be within this token's own scope (actions, machines and run_as)");
    }
    if (by.expiresAt !== null && (input.expiresAt === null || input.expiresAt > by.expiresAt)) {
      throw new PermissionDeniedError("the new token must expire no later than this token (expires_at)");
    }
    if (!by.bootstrap) {
      const over = limitsWithin(input.limits, by.limits);
      if (over !== null) throw new PermissionDeniedError(`the new token's limits must be within this token's own (limits.${over})`);
    }
    const id = newId("tok");
    const secret = newSecret(id);
    const record: TokenRecord = {
      id,
      name: input.name,
      secretHash: digest(secret).toString("hex"),
      scope: input.scope,
      limits: input.limits,
      bootstrap: false,
      createdBy: by.name,
      createdAt: new Date(now),
      expiresAt: input.expiresAt,
      lastUsedAt: null,
      revokedAt: null,
    };
    await this.store.insert(record);
    return { record, secret };
  }

  /** Tokens `by` may manage: those whose scope is within its own (all, for an unrestricted admin). */
  private manages(by: Principal, t: TokenRecord): boolean {
    return t.id === by.tokenId || isWithin(t.scope, by.scope);
  }

  async list(by: Principal, limit: number, offset: number): Promise<{ items: TokenRecord[]; total: number }> {
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new InvalidArgumentError("limit", "must be an integer from 1 to 1000");
    if (!Number.isInteger(offset) || offset < 0) throw new InvalidArgumentError("offset", "must be a non-negative integer");
    if (isWithin(FULL_SCOPE, by.scope)) return this.store.list(limit, offset);
    const all = (await this.store.listAll()).filter((t) => this.manages(by, t));
    return { items: all.slice(offset, offset + limit), total: all.length };
  }

  /** A token `by` may manage, or NotFoundError as for an unknown id. */
  async get(id: string, by: Principal): Promise<TokenRecord> {
    if (id === "") throw new InvalidArgumentError("id", "is required");
    const t = await this.store.get(id);
    if (t === null || !this.manages(by, t)) throw new NotFoundError("token", id, "id");
    return t;
  }

  /** Revokes at once on this process. Repeating it is answered the same. */
  async revoke(id: string, by: Principal): Promise<void> {
    const t = await this.get(id, by);
    if (t.bootstrap) {
      throw new FailedPreconditionError(
        "the bootstrap admin token cannot be revoked through the API: change FLEETRUN_ADMIN_TOKEN (or delete <data dir>/admin-token) and restart",
      );
    }
    await this.store.revoke(id, new Date(this.now()));
    this.invalidate(id);
  }
}
