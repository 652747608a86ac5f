/**
 * TokenStore on Kysely (both drivers). Tokens are looked up by the SHA-256
 * digest of their secret through a unique index; the secret itself is never
 * stored. A verified token is cached by the registry, so these queries run
 * about once per token every few seconds, not per request.
 */
import { UniqueConstraintViolationException } from "@mikro-orm/core";
import { AlreadyExistsError } from "../exec/errors.ts";
import type { Action, Scope } from "../exec/scope.ts";
import type { TokenLimitOverrides, TokenRecord, TokenStore } from "../exec/tokens.ts";
import { fromNullableDate, kysely, toDate, toDbBool, toNullableDate, toNumber, type DbContext } from "./db-context.ts";
import type { TokenRow } from "./tables.ts";

interface StoredScope {
  actions: Action[];
  machine_ids: string[];
  machine_labels: Record<string, string> | null;
  run_as: string[] | null;
}

export class SqlTokenStore implements TokenStore {
  readonly #ctx: DbContext;

  constructor(ctx: DbContext) {
    this.#ctx = ctx;
  }

  #db() {
    return kysely(this.#ctx.fork());
  }

  async insert(t: TokenRecord): Promise<void> {
    try {
      await this.#db().insertInto("tokens").values(this.#toRow(t)).execute();
    } catch (err) {
      if (isUniqueViolation(err)) throw new AlreadyExistsError(`a token named ${JSON.stringify(t.name)} already exists`, "name");
      throw err;
    }
  }

  async get(id: string): Promise<TokenRecord | null> {
    const row = await this.#db().selectFrom("tokens").selectAll().where("id", "=", id).executeTakeFirst();
    return row === undefined ? null : fromRow(row);
  }

  async findByHash(secretHash: string): Promise<TokenRecord | null> {
    const row = await this.#db().selectFrom("tokens").selectAll().where("secret_hash", "=", secretHash).executeTakeFirst();
    return row === undefined ? null : fromRow(row);
  }

  async list(limit: number, offset: number): Promise<{ items: TokenRecord[]; total: number }> {
    const db = this.#db();
    const rows = await db.selectFrom("tokens").selectAll().orderBy("created_at", "desc").orderBy("id", "desc").limit(limit).offset(offset).execute();
    const count = await db.selectFrom("tokens").select((eb) => eb.fn.countAll().as("n")).executeTakeFirstOrThrow();
    return { items: rows.map(fromRow), total: toNumber(count.n as number | string) };
  }

  async listAll(): Promise<TokenRecord[]> {
    const rows = await this.#db().selectFrom("tokens").selectAll().orderBy("created_at", "desc").orderBy("id", "desc").execute();
    return rows.map(fromRow);
  }

  async revoke(id: string, at: Date): Promise<boolean> {
    const r = await this.#db().updateTable("tokens").set({ revoked_at: at.getTime() }).where("id", "=", id).where("revoked_at", "is", null).executeTakeFirst();
    return Number(r.numUpdatedRows) > 0;
  }

  async touch(id: string, at: Date): Promise<void> {
    await this.#db().updateTable("tokens").set({ last_used_at: at.getTime() }).where("id", "=", id).execute();
  }

  async getBootstrap(): Promise<TokenRecord | null> {
    const row = await this.#db()
      .selectFrom("tokens")
      .selectAll()
      .where("bootstrap", "=", toDbBool(this.#ctx, true))
      .where("revoked_at", "is", null)
      .executeTakeFirst();
    return row === undefined ? null : fromRow(row);
  }

  async setSecretHash(id: string, secretHash: string): Promise<void> {
    await this.#db().updateTable("tokens").set({ secret_hash: secretHash }).where("id", "=", id).execute();
  }

  #toRow(t: TokenRecord): TokenRow {
    const scope: StoredScope = {
      actions: [...t.scope.actions],
      machine_ids: [...t.scope.machineIds],
      machine_labels: t.scope.machineLabels === null ? null : { ...t.scope.machineLabels },
      run_as: t.scope.runAs === null ? null : [...t.scope.runAs],
    };
    return {
      id: t.id,
      name: t.name,
      secret_hash: t.secretHash,
      scope: JSON.stringify(scope),
      limits: JSON.stringify(t.limits),
      bootstrap: toDbBool(this.#ctx, t.bootstrap),
      created_by: t.createdBy,
      created_at: t.createdAt.getTime(),
      expires_at: fromNullableDate(t.expiresAt),
      last_used_at: fromNullableDate(t.lastUsedAt),
      revoked_at: fromNullableDate(t.revokedAt),
    };
  }
}

function fromRow(r: TokenRow): TokenRecord {
  const s = JSON.parse(r.scope) as StoredScope;
  const scope: Scope = { actions: s.actions, machineIds: s.machine_ids, machineLabels: s.machine_labels, runAs: s.run_as };
  return {
    id: r.id,
    name: r.name,
    secretHash: r.secret_hash,
    scope,
    limits: JSON.parse(r.limits) as TokenLimitOverrides,
    bootstrap: Boolean(r.bootstrap),
    createdBy: r.created_by,
    createdAt: toDate(r.created_at),
    expiresAt: toNullableDate(r.expires_at),
    lastUsedAt: toNullableDate(r.last_used_at),
    revokedAt: toNullableDate(r.revoked_at),
  };
}

/** A unique index refused the row (better-sqlite3 and node-postgres spell it differently). */
function isUniqueViolation(err: unknown): boolean {
  for (let e: unknown = err, i = 0; e !== undefined && e !== null && i < 5; e = (e as { cause?: unknown }).cause, i++) {
    if (e instanceof UniqueConstraintViolationException) return true;
    const code = (e as { code?: unknown }).code;
    if (code === "SQLITE_CONSTRAINT_UNIQUE" || code === "23505") return true;
  }
  return false;
}
