/** BatchStore through MikroORM entities (one EntityManager fork per call). */
import type { InferEntity } from "@mikro-orm/core";
import { FleetError } from "../exec/errors.ts";
import type { BatchRecord, BatchStatus, BatchStore } from "../exec/ports.ts";
import type { DbContext } from "./db-context.ts";
import { BatchEntity } from "./entities.ts";

type Batch = InferEntity<typeof BatchEntity>;

export class OrmBatchStore implements BatchStore {
  readonly #ctx: DbContext;

  constructor(ctx: DbContext) {
    this.#ctx = ctx;
  }

  async insert(batch: BatchRecord): Promise<void> {
    await this.#ctx.fork().insert(BatchEntity, toEntityData(batch));
  }

  async get(id: string): Promise<BatchRecord | null> {
    const entity = await this.#ctx.fork().findOne(BatchEntity, { id });
    return entity === null ? null : fromEntity(entity);
  }

  async update(id: string, patch: Partial<BatchRecord>): Promise<void> {
    const data: Partial<Batch> = {};
    if (patch.command !== undefined) data.command = patch.command;
    if (patch.status !== undefined) data.status = patch.status;
    if (patch.machineIds !== undefined) data.machineIds = JSON.stringify(patch.machineIds);
    if (patch.maxConcurrency !== undefined) data.maxConcurrency = patch.maxConcurrency;
    if (patch.maxErrors !== undefined) data.maxErrors = patch.maxErrors;
    if (patch.requestedBy !== undefined) data.requestedBy = patch.requestedBy;
    if (patch.createdAt !== undefined) data.createdAt = patch.createdAt;
    if (patch.finishedAt !== undefined) data.finishedAt = patch.finishedAt;
    if (Object.keys(data).length === 0) return;
    await this.#ctx.fork().nativeUpdate(BatchEntity, { id }, data);
  }
}

function toEntityData(b: BatchRecord): Batch {
  return {
    id: b.id,
    command: b.command,
    status: b.status,
    machineIds: JSON.stringify(b.machineIds),
    maxConcurrency: b.maxConcurrency,
    maxErrors: b.maxErrors,
    requestedBy: b.requestedBy,
    createdAt: b.createdAt,
    finishedAt: b.finishedAt,
  };
}

function fromEntity(e: Batch): BatchRecord {
  if (e.createdAt === null) throw new FleetError("internal", "a stored batch timestamp is null");
  return {
    id: e.id,
    command: e.command,
    status: e.status as BatchStatus,
    machineIds: JSON.parse(e.machineIds) as string[],
    maxConcurrency: e.maxConcurrency,
    maxErrors: e.maxErrors,
    requestedBy: e.requestedBy,
    createdAt: e.createdAt,
    finishedAt: e.finishedAt ?? null,
  };
}
