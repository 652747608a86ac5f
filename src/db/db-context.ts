import type { Kysely, SqlEntityManager } from "@mikro-orm/sqlite";
import type { Tables } from "./tables.ts";

export type DriverName = "sqlite" | "postgresql";

/**
 * What the stores share: a way to get a fresh EntityManager fork for one
 * operation, and the few value conversions that differ per driver.
 */
export interface DbContext {
  driver: DriverName;
  /** A new fork of the ORM's EntityManager; never kept beyond one operation. */
  fork(): SqlEntityManager;
}

export type Db = Kysely<Tables>;

/** The Kysely instance bound to `em` (and to its transaction, inside `em.transactional`). */
export function kysely(em: SqlEntityManager): Db {
  return em.getKysely<Tables>();
}

/** Booleans as the driver binds them: better-sqlite3 refuses JS booleans. */
export function toDbBool(ctx: DbContext, value: boolean): boolean | number {
  return ctx.driver === "sqlite" ? (value ? 1 : 0) : value;
}

/** `bigint` columns come back as strings from PostgreSQL. */
export function toNumber(value: number | string): number {
  return typeof value === "number" ? value : Number(value);
}

export function toNullableNumber(value: number | string | null): number | null {
  return value == null ? null : toNumber(value);
}

export function toDate(value: number | string): Date {
  return new Date(toNumber(value));
}

export function toNullableDate(value: number | string | null): Date | null {
  return value == null ? null : toDate(value);
}

export function fromNullableDate(value: Date | null): number | null {
  return value == null ? null : value.getTime();
}
