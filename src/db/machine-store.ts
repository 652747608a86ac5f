/**
 * MachineStore through MikroORM entities (one EntityManager fork per call),
 * except `get`, which every command start does: a prepared statement.
 * Fleets hold at most thousands of machines, so label matching loads the
 * machines and filters in memory: simple, and exact for any key or value.
 */
import { UniqueConstraintViolationException } from "@mikro-orm/core";
import type { InferEntity } from "@mikro-orm/core";
import { AlreadyExistsError, FleetError } from "../exec/errors.ts";
import type { MachineListQuery, MachineRecord, MachineStore } from "../exec/ports.ts";
import type { CommandHotPath } from "./command-hot-path.ts";
import { toDate, type DbContext } from "./db-context.ts";
import { MachineEntity } from "./entities.ts";
import type { MachineRow } from "./tables.ts";

type Machine = InferEntity<typeof MachineEntity>;

export class OrmMachineStore implements MachineStore {
  readonly #ctx: DbContext;
  readonly #hot: CommandHotPath;

  constructor(ctx: DbContext, hot: CommandHotPath) {
    this.#ctx = ctx;
    this.#hot = hot;
  }

  async create(machine: MachineRecord): Promise<void> {
    const em = this.#ctx.fork();
    em.create(MachineEntity, toEntityData(machine));
    try {
      await em.flush();
    } catch (err) {
      throw await this.#uniqueError(err, machine.name, machine.id);
    }
  }

  /** Every start reads its machine: a prepared statement, not an entity load. */
  async get(id: string): Promise<MachineRecord | null> {
    const row = await this.#hot.getMachine(id);
    return row === undefined ? null : fromRow(row);
  }

  async getMany(ids: string[]): Promise<MachineRecord[]> {
    if (ids.length === 0) return [];
    const found = await this.#ctx.fork().find(MachineEntity, { id: { $in: [...new Set(ids)] } });
    const byId = new Map(found.map((m) => [m.id, fromEntity(m)]));
    return ids.flatMap((id) => byId.get(id) ?? []);
  }

  async list(query: MachineListQuery): Promise<{ items: MachineRecord[]; total: number }> {
    const em = this.#ctx.fork();
    const orderBy = [{ createdAt: "asc" }, { id: "asc" }] as const;
    if (query.labels === null || Object.keys(query.labels).length === 0) {
      const [items, total] = await em.findAndCount(
        MachineEntity,
        {},
        { orderBy: [...orderBy], limit: query.limit, offset: query.offset },
      );
      return { items: items.map(fromEntity), total };
    }
    const labels = query.labels;
    const all = (await em.find(MachineEntity, {}, { orderBy: [...orderBy] }))
      .map(fromEntity)
      .filter((m) => hasLabels(m, labels));
    return { items: all.slice(query.offset, query.offset + query.limit), total: all.length };
  }

  async selectByLabels(labels: Record<string, string>): Promise<MachineRecord[]> {
    const all = await this.#ctx
      .fork()
      .find(MachineEntity, {}, { orderBy: [{ createdAt: "asc" }, { id: "asc" }] });
    return all.map(fromEntity).filter((m) => hasLabels(m, labels));
  }

  async update(id: string, patch: Partial<MachineRecord>): Promise<MachineRecord | null> {
    const em = this.#ctx.fork();
    const entity = await em.findOne(MachineEntity, { id });
    if (entity === null) return null;
    const { id: _id, createdAt: _createdAt, ...rest } = patch;
    const data = toEntityData({ ...fromEntity(entity), ...rest, updatedAt: rest.updatedAt ?? new Date() });
    em.assign(entity, { ...data, id: entity.id, createdAt: entity.createdAt });
    try {
      await em.flush();
    } catch (err) {
      throw await this.#uniqueError(err, data.name, id);
    }
    return fromEntity(entity);
  }

  async delete(id: string): Promise<boolean> {
    const n = await this.#ctx.fork().nativeDelete(MachineEntity, { id });
    return n > 0;
  }

  /** Turns a unique violation into AlreadyExistsError naming the field; rethrows the rest. */
  async #uniqueError(err: unknown, name: string, id: string): Promise<unknown> {
    if (!(err instanceof UniqueConstraintViolationException)) return err;
    const holder = await this.#ctx.fork().findOne(MachineEntity, { name });
    if (holder !== null && holder.id !== id) {
      return new AlreadyExistsError(`a machine named ${JSON.stringify(name)} already exists`, "name");
    }
    return new FleetError("already_exists", `machine ${JSON.stringify(id)} already exists`, "id", {
      cause: err,
    });
  }
}

function hasLabels(machine: MachineRecord, labels: Record<string, string>): boolean {
  for (const [key, value] of Object.entries(labels)) {
    if (!Object.hasOwn(machine.labels, key) || machine.labels[key] !== value) return false;
  }
  return true;
}

function toEntityData(m: MachineRecord): Machine {
  return {
    id: m.id,
    name: m.name,
    host: m.host,
    port: m.port,
    username: m.username,
    privateKey: m.privateKey,
    passphrase: m.passphrase,
    password: m.password,
    hostKeyFingerprint: m.hostKeyFingerprint,
    hostKeyAlgorithm: m.hostKeyAlgorithm,
    labels: JSON.stringify(m.labels),
    createdAt: m.createdAt,
    updatedAt: m.updatedAt,
  };
}

function fromEntity(e: Machine): MachineRecord {
  return {
    id: e.id,
    name: e.name,
    host: e.host,
    port: e.port,
    username: e.username,
    privateKey: e.privateKey ?? null,
    passphrase: e.passphrase ?? null,
    password: e.password ?? null,
    hostKeyFingerprint: e.hostKeyFingerprint ?? null,
    hostKeyAlgorithm: e.hostKeyAlgorithm ?? null,
    labels: JSON.parse(e.labels) as Record<string, string>,
    createdAt: requireDate(e.createdAt),
    updatedAt: requireDate(e.updatedAt),
  };
}

function fromRow(r: MachineRow): MachineRecord {
  return {
    id: r.id,
    name: r.name,
    host: r.host,
    port: r.port,
    username: r.username,
    privateKey: r.private_key,
    passphrase: r.passphrase,
    password: r.password,
    hostKeyFingerprint: r.host_key_fingerprint,
    hostKeyAlgorithm: r.host_key_algorithm,
    labels: JSON.parse(r.labels) as Record<string, string>,
    createdAt: toDate(r.created_at),
    updatedAt: toDate(r.updated_at),
  };
}

function requireDate(value: Date | null): Date {
  if (value === null) throw new FleetError("internal", "a stored machine timestamp is null");
  return value;
}
