/**
 * The migrations of each driver, listed explicitly so they load from
 * TypeScript sources without a build step or a file glob. Append new ones;
 * never rename or edit an applied one.
 */
import type { MigrationObject } from "@mikro-orm/core";
import { InitialSchema as PostgresInitialSchema } from "./postgresql/initial-schema.ts";
import { MachineSecurity as PostgresMachineSecurity } from "./postgresql/machine-security.ts";
import { InitialSchema as SqliteInitialSchema } from "./sqlite/initial-schema.ts";
import { MachineSecurity as SqliteMachineSecurity } from "./sqlite/machine-security.ts";
import { Tokens as PostgresTokens } from "./postgresql/tokens.ts";
import { Tokens as SqliteTokens } from "./sqlite/tokens.ts";

export const SQLITE_MIGRATIONS: MigrationObject[] = [
  { name: "0001_initial_schema", class: SqliteInitialSchema },
  { name: "0002_machine_security", class: SqliteMachineSecurity },
  { name: "0003_tokens", class: SqliteTokens },
];

export const POSTGRESQL_MIGRATIONS: MigrationObject[] = [
  { name: "0001_initial_schema", class: PostgresInitialSchema },
  { name: "0002_machine_security", class: PostgresMachineSecurity },
  { name: "0003_tokens", class: PostgresTokens },
];
