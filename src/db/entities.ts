/**
 * Entity definitions (MikroORM `defineEntity`, no decorators). They describe
 * the tables the migrations in `./migrations` create; the stores use them for
 * the low-traffic machine and batch paths and Kysely (through the same
 * EntityManager) for the command hot paths.
 *
 * Timestamps are epoch milliseconds in `bigint` columns on both drivers.
 * JSON-valued fields (labels, env keys, runner, machine ids) are JSON text.
 * Machine credentials are sealed text (`src/secrets`), never clear text.
 */
import { defineEntity, p } from "@mikro-orm/core";
import { EpochMillisType } from "./epoch-millis-type.ts";

export const MachineEntity = defineEntity({
  name: "Machine",
  tableName: "machines",
  properties: {
    id: p.string().primary(),
    name: p.string().unique("machines_name_unique"),
    host: p.string(),
    port: p.integer(),
    username: p.string(),
    privateKey: p.text().nullable(),
    passphrase: p.text().nullable(),
    password: p.text().nullable(),
    hostKeyFingerprint: p.string().nullable(),
    hostKeyAlgorithm: p.string().nullable(),
    /** `pinned`, `tofu` or `insecure_accept_any`. */
    hostKeyPolicy: p.string(),
    /** JSON text of a string map. */
    labels: p.text(),
    createdAt: p.type(EpochMillisType),
    updatedAt: p.type(EpochMillisType),
  },
});

export const BatchEntity = defineEntity({
  name: "Batch",
  tableName: "batches",
  properties: {
    id: p.string().primary(),
    command: p.text(),
    status: p.string(),
    /** JSON text of a string array. */
    machineIds: p.text(),
    maxConcurrency: p.integer(),
    maxErrors: p.integer(),
    requestedBy: p.string(),
    createdAt: p.type(EpochMillisType),
    finishedAt: p.type(EpochMillisType).nullable(),
  },
});

export const CommandEntity = defineEntity({
  name: "Command",
  tableName: "commands",
  properties: {
    id: p.string().primary(),
    machineId: p.string(),
    command: p.text(),
    cwd: p.text().nullable(),
    /** JSON text of the env var names. */
    envKeys: p.text(),
    runAs: p.string().nullable(),
    timeoutMs: p.bigint("number"),
    status: p.string(),
    exitCode: p.integer().nullable(),
    signal: p.string().nullable(),
    stdoutBytes: p.bigint("number"),
    stderrBytes: p.bigint("number"),
    stdoutTruncated: p.boolean(),
    stderrTruncated: p.boolean(),
    logBytes: p.bigint("number"),
    durationMs: p.bigint("number").nullable(),
    createdAt: p.type(EpochMillisType),
    startedAt: p.type(EpochMillisType).nullable(),
    finishedAt: p.type(EpochMillisType).nullable(),
    errorCode: p.string().nullable(),
    errorMessage: p.text().nullable(),
    batchId: p.string().nullable(),
    requestedBy: p.string(),
    cancelledBy: p.string().nullable(),
    /** JSON text of the runner state. */
    runner: p.text().nullable(),
    sync: p.boolean(),
  },
});

export const OutputChunkEntity = defineEntity({
  name: "OutputChunk",
  tableName: "command_output",
  properties: {
    commandId: p.string().primary(),
    byteOffset: p.bigint("number").primary(),
    stream: p.string(),
    data: p.blob(),
  },
});

/** Per-machine command count, kept in step with inserts and prunes. */
export const MachineCommandCountEntity = defineEntity({
  name: "MachineCommandCount",
  tableName: "machine_command_counts",
  properties: {
    machineId: p.string().primary(),
    total: p.bigint("number"),
  },
});

export const ENTITIES = [
  MachineEntity,
  BatchEntity,
  CommandEntity,
  OutputChunkEntity,
  MachineCommandCountEntity,
];
