/**
 * Opens the database (SQLite file or PostgreSQL), applies the pending
 * migrations and returns the stores. Nothing here is a module singleton:
 * every `openStores` owns its ORM instance and `close()` releases it.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { MikroORM } from "@mikro-orm/core";
import { Migrator } from "@mikro-orm/migrations";
import type { SqlEntityManager } from "@mikro-orm/sqlite";
import { InvalidArgumentError } from "../exec/errors.ts";
import type { Stores } from "../exec/ports.ts";
import { loadKeyRing, type SecretBox } from "../secrets/index.ts";
import { OrmBatchStore } from "./batch-store.ts";
import type { CommandHotPath } from "./command-hot-path.ts";
import { SqlCommandStore } from "./command-store.ts";
import type { DbContext, DriverName } from "./db-context.ts";
import { ENTITIES } from "./entities.ts";
import { MachineSecretCodec, compactMachines, prepareMachineSecrets, rotateMachineSecrets, type PrepareReport, type RotationReport } from "./machine-secrets.ts";
import { OrmMachineStore } from "./machine-store.ts";
import { POSTGRESQL_MIGRATIONS, SQLITE_MIGRATIONS } from "./migrations/index.ts";
import { PgHotPath, type PgPool } from "./pg-hot-path.ts";
import { SqliteHotPath, type SqliteDatabase } from "./sqlite-hot-path.ts";
import { SqlTokenStore } from "./token-store.ts";

export interface DbConfig {
  /** `postgres://…` or `postgresql://…` selects PostgreSQL; unset = SQLite file `<dataDir>/fleetrun.db`. */
  databaseUrl?: string;
  dataDir: string;
  /** For tests: a PostgreSQL schema to use (created if missing). */
  schema?: string;
  /** Logs every query the ORM runs. @default false */
  debug?: boolean;
  /**
   * The keys that seal machine credentials.
   * @default the key in `<dataDir>/secret-key`, generated when missing
   */
  secrets?: SecretBox;
}

/** The stores, and what start-up and `rotate-secrets` need of the credentials at rest. */
export interface OpenedStores extends Stores {
  /** What the start-up pass found: clear-text values sealed now, values under older keys. */
  secretsReport: PrepareReport;
  /** Re-seals every credential under the newest key. */
  rotateSecrets(): Promise<RotationReport>;
}

/** How long a SQLite writer waits for the file lock before failing. */
const SQLITE_BUSY_TIMEOUT_MS = 5000;
const MIGRATIONS_TABLE = "fleetrun_migrations";

/** The smallest piece of a Kysely connection the connection hooks use. */
interface RawConnection {
  executeQuery(query: { sql: string; parameters: readonly unknown[]; query: unknown }): Promise<unknown>;
}

function rawQuery(sql: string): { sql: string; parameters: readonly unknown[]; query: unknown } {
  return { sql, parameters: [], query: { kind: "RawNode", sqlFragments: [sql], parameters: [] } };
}

export function driverFor(databaseUrl: string | undefined): DriverName {
  if (databaseUrl === undefined || databaseUrl === "") return "sqlite";
  if (/^postgres(ql)?:\/\//i.test(databaseUrl)) return "postgresql";
  throw new InvalidArgumentError(
    "databaseUrl",
    "must start with postgres:// or postgresql:// (leave it unset for SQLite)",
  );
}

export async function openStores(config: DbConfig): Promise<OpenedStores> {
  const driver = driverFor(config.databaseUrl);
  const box = config.secrets ?? loadKeyRing({ secretKey: null, secretKeyFile: null, dataDir: config.dataDir }).box;
  const orm = driver === "sqlite" ? await openSqlite(config) : await openPostgres(config);
  try {
    if (driver === "postgresql" && config.schema !== undefined) {
      await orm.em.fork().getConnection().execute(`create schema if not exists "${config.schema}"`);
    }
    await orm.migrator.up();
  } catch (err) {
    await orm.close(true);
    throw err;
  }

  const ctx: DbContext = {
    driver,
    fork: () => orm.em.fork() as SqlEntityManager,
  };
  // The driver's own client (the connection MikroORM uses), for the hot paths.
  const native = await (orm.em.getConnection() as unknown as { getNativeClient(): Promise<unknown> }).getNativeClient();
  const hot: CommandHotPath = driver === "sqlite" ? new SqliteHotPath(native as SqliteDatabase) : new PgHotPath(native as PgPool);
  const commands = new SqlCommandStore(ctx, hot);
  const codec = new MachineSecretCodec(box);
  let secretsReport: PrepareReport;
  try {
    secretsReport = await prepareMachineSecrets(ctx, codec);
    if (secretsReport.sealed > 0) await compactMachines(ctx);
  } catch (err) {
    await orm.close(true);
    throw err;
  }
  let closed = false;
  return {
    commands,
    machines: new OrmMachineStore(ctx, hot, codec),
    secretsReport,
    async rotateSecrets() {
      const report = await rotateMachineSecrets(ctx, codec);
      if (report.resealed > 0) await compactMachines(ctx);
      return report;
    },
    batches: new OrmBatchStore(ctx),
    tokens: new SqlTokenStore(ctx),
    async ping() {
      await ctx.fork().getConnection().execute("select 1");
    },
    async close() {
      if (closed) return;
      closed = true;
      await commands.drain();
      await orm.close(true);
    },
  };
}

/**
 * Applies the migrations up to and including `to`, and nothing else: a test
 * of a later migration starts from the schema and rows an older version left.
 */
export async function migrateTo(config: DbConfig, to: string): Promise<void> {
  const orm = driverFor(config.databaseUrl) === "sqlite" ? await openSqlite(config) : await openPostgres(config);
  try {
    if (config.schema !== undefined && config.databaseUrl !== undefined) {
      await orm.em.fork().getConnection().execute(`create schema if not exists "${config.schema}"`);
    }
    await orm.migrator.up({ to });
  } finally {
    await orm.close(true);
  }
}

async function openSqlite(config: DbConfig): Promise<MikroORM> {
  await mkdir(config.dataDir, { recursive: true });
  const { MikroORM } = await import("@mikro-orm/sqlite");
  return MikroORM.init({
    dbName: join(config.dataDir, "fleetrun.db"),
    entities: ENTITIES,
    extensions: [Migrator],
    debug: config.debug ?? false,
    migrations: {
      tableName: MIGRATIONS_TABLE,
      migrationsList: SQLITE_MIGRATIONS,
      snapshot: false,
      snapshotOnMigrate: false,
      silent: !(config.debug ?? false),
    },
    async onCreateConnection(connection: unknown) {
      const conn = connection as RawConnection;
      // WAL lets readers run beside the writer; NORMAL is durable across
      // process crashes under WAL (an OS crash may lose the last commits).
      await conn.executeQuery(rawQuery("pragma journal_mode = WAL"));
      await conn.executeQuery(rawQuery(`pragma busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`));
      await conn.executeQuery(rawQuery("pragma synchronous = NORMAL"));
    },
  });
}

async function openPostgres(config: DbConfig): Promise<MikroORM> {
  const schema = config.schema;
  if (schema !== undefined && !/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) {
    throw new InvalidArgumentError("schema", "must be a lowercase SQL identifier");
  }
  const { MikroORM } = await import("@mikro-orm/postgresql");
  return MikroORM.init({
    clientUrl: config.databaseUrl,
    entities: ENTITIES,
    extensions: [Migrator],
    debug: config.debug ?? false,
    pool: { min: 0, max: 10 },
    migrations: {
      tableName: MIGRATIONS_TABLE,
      migrationsList: POSTGRESQL_MIGRATIONS,
      ...(schema === undefined ? {} : { schema }),
      snapshot: false,
      snapshotOnMigrate: false,
      silent: !(config.debug ?? false),
    },
    // Unqualified table names everywhere; the schema comes from search_path,
    // set as the session default at connection start so that a `reset` (the
    // migrator issues one) comes back to it.
    ...(schema === undefined ? {} : { driverOptions: { options: `-c search_path=${schema}` } }),
  });
}
