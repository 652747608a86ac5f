/**
 * Machine credentials at rest: `private_key`, `passphrase` and `password` are
 * stored sealed (`src/secrets`), each bound to its row id and column, and
 * opened only when a machine is read.
 *
 * Every start runs `prepareMachineSecrets` after the migrations, in one
 * transaction: values an earlier version stored in clear text are sealed
 * (compare-and-set on the old value, so replicas starting together seal
 * each value once), and every sealed value must open with the configured
 * keys, or the start fails with a `SecretKeyError` naming the setting.
 * `rotateMachineSecrets` (npm run rotate-secrets) re-seals every value that
 * is not under the newest key.
 */
import { SecretBox, SecretKeyError, SecretOpenError, isSealed, sealedKeyId } from "../secrets/index.ts";
import type { DbContext } from "./db-context.ts";
import { kysely } from "./db-context.ts";

export const SECRET_COLUMNS = ["private_key", "passphrase", "password"] as const;
export type SecretColumn = (typeof SECRET_COLUMNS)[number];

/** The additional authenticated data of a machine's secret: its row and column. */
export function secretContext(machineId: string, column: SecretColumn): string {
  return `fleetrun/machines/${machineId}/${column}`;
}

/** How many opened values are kept (so a command start does not decrypt again). */
const CACHE_ENTRIES = 10_000;

/** Seals and opens machine secrets; opened values are cached by row, column and sealed text. */
export class MachineSecretCodec {
  readonly box: SecretBox;
  readonly #cache = new Map<string, string>();

  constructor(box: SecretBox) {
    this.box = box;
  }

  seal(machineId: string, column: SecretColumn, value: string | null): string | null {
    return value === null ? null : this.box.seal(value, secretContext(machineId, column));
  }

  open(machineId: string, column: SecretColumn, stored: string | null): string | null {
    if (stored === null) return null;
    const context = secretContext(machineId, column);
    // The context is part of the key: a value moved to another row never hits the cache.
    const cacheKey = `${context}\0${stored}`;
    const hit = this.#cache.get(cacheKey);
    if (hit !== undefined) return hit;
    const plain = this.box.open(stored, context);
    if (this.#cache.size >= CACHE_ENTRIES) this.#cache.delete(this.#cache.keys().next().value as string);
    this.#cache.set(cacheKey, plain);
    return plain;
  }
}

type SecretRow = { id: string } & Record<SecretColumn, string | null>;

export interface PrepareReport {
  /** Values found in clear text and sealed now. */
  sealed: number;
  /** Values sealed under an older key of the ring (rotate-secrets re-seals them). */
  underOlderKeys: number;
}

/** Seals clear-text values and checks that every sealed value opens (see the module comment). */
export async function prepareMachineSecrets(ctx: DbContext, codec: MachineSecretCodec): Promise<PrepareReport> {
  const box = codec.box;
  return ctx.fork().transactional(async (em) => {
    const db = kysely(em);
    const rows = (await db.selectFrom("machines").select(["id", ...SECRET_COLUMNS]).execute()) as SecretRow[];
    const unknown = new Map<string, number>();
    let sealed = 0;
    let underOlderKeys = 0;
    for (const row of rows) {
      for (const column of SECRET_COLUMNS) {
        const value = row[column];
        if (value === null) continue;
        if (!isSealed(value)) {
          const next = codec.seal(row.id, column, value);
          await db.updateTable("machines").set({ [column]: next }).where("id", "=", row.id).where(column, "=", value).execute();
          sealed++;
          continue;
        }
        const id = sealedKeyId(value)!;
        if (!box.hasKey(id)) {
          unknown.set(id, (unknown.get(id) ?? 0) + 1);
          continue;
        }
        try {
          codec.open(row.id, column, value);
        } catch (err) {
          if (!(err instanceof SecretOpenError)) throw err;
          throw new SecretKeyError(
            `the stored ${column} of machine ${row.id} ${err.message} (keys from ${box.source}): ` +
              `restore the row from a backup, or set the machine's credentials again after deleting and re-creating it`,
          );
        }
        if (id !== box.currentKeyId) underOlderKeys++;
      }
    }
    if (unknown.size > 0) {
      const list = [...unknown].map(([id, n]) => `${id} (${n} value${n === 1 ? "" : "s"})`).join(", ");
      throw new SecretKeyError(
        `FLEETRUN_SECRET_KEY: the database holds credentials sealed under key ${list}, which is not among the configured keys ` +
          `[${box.keyIds.join(", ")}] from ${box.source}: set FLEETRUN_SECRET_KEY or FLEETRUN_SECRET_KEY_FILE to the key(s) this database was written with`,
      );
    }
    return { sealed, underOlderKeys };
  });
}

/**
 * After clear text (or values under a retired key) was overwritten: rewrite
 * the file so the old bytes do not linger in free pages or the WAL (SQLite:
 * VACUUM, then a truncating checkpoint; PostgreSQL: VACUUM FULL of the
 * table). Copies made before (backups, PostgreSQL's WAL archive) keep them.
 */
export async function compactMachines(ctx: DbContext): Promise<void> {
  const conn = ctx.fork().getConnection();
  if (ctx.driver === "sqlite") {
    await conn.execute("vacuum");
    await conn.execute("pragma wal_checkpoint(TRUNCATE)");
  } else {
    await conn.execute("vacuum full machines");
  }
}

export interface RotationReport {
  machines: number;
  /** Values re-sealed under the newest key. */
  resealed: number;
  keyId: string;
}

/** Re-seals every value not under the newest key, in one transaction. */
export async function rotateMachineSecrets(ctx: DbContext, codec: MachineSecretCodec): Promise<RotationReport> {
  const box = codec.box;
  return ctx.fork().transactional(async (em) => {
    const db = kysely(em);
    const rows = (await db.selectFrom("machines").select(["id", ...SECRET_COLUMNS]).execute()) as SecretRow[];
    let resealed = 0;
    const touched = new Set<string>();
    for (const row of rows) {
      for (const column of SECRET_COLUMNS) {
        const value = row[column];
        if (value === null || sealedKeyId(value) === box.currentKeyId) continue;
        const plain = isSealed(value) ? codec.open(row.id, column, value) : value;
        const next = codec.seal(row.id, column, plain);
        await db.updateTable("machines").set({ [column]: next }).where("id", "=", row.id).where(column, "=", value).execute();
        resealed++;
        touched.add(row.id);
      }
    }
    return { machines: touched.size, resealed, keyId: box.currentKeyId };
  });
}
