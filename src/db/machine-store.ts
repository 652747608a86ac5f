/**
 * MachineStore through MikroORM entities (one EntityManager fork per call),
 * except `get`, which every command start does: a prepared statement.
 * Fleets hold at most thousands of machines, so label matching loads the
 * machines and filters in memory: simple, and exact for any key or value.
 * Credentials are sealed on the way in and opened on the way out
 * (`machine-secrets.ts`): records hold clear text, rows never do.
 */
import { UniqueConstraintViolationException } from "@mikro-orm/core";
import type { InferEntity } from "@mikro-orm/core";
import { AlreadyExistsError, FleetError } from "../exec/errors.ts";
import type { HostKeyPolicy, MachineListQuery, MachineRecord, MachineStore } from "../exec/ports.ts";
import type { CommandHotPath } from "./command-hot-path.ts";
import { toDate, type DbContext } from "./db-context.ts";
import { MachineEntity } from "./entities.ts";
import { SecretOpenError } from "../secrets/index.ts";
import type { MachineSecretCodec, SecretColumn } from "./machine-secrets.ts";
import type { MachineRow } from "./tables.ts";

type Machine = InferEntity<typeof MachineEntity>;

export class OrmMachineStore implements MachineStore {
  readonly #ctx: DbContext;
  readonly #hot: CommandHotPath;
  readonly #secrets: MachineSecretCodec;

  constructor(ctx: DbContext, hot: CommandHotPath, secrets: MachineSecretCodec) {
    this.#ctx = ctx;
    this.#hot = hot;
    this.#secrets = secrets;
  }

  async create(machine: MachineRecord): Promise<void> {
    const em = this.#ctx.fork();
    em.create(MachineEntity, this.#toEntityData(machine));
    try {
      await em.flush();
    } catch (err) {
      throw await this.#uniqueError(err, machine.name, machine.id);
    }
  }

  /** Every start reads its machine: a prepared statement, not an entity load. */
  async get(id: string): Promise<MachineRecord | null> {
    const row = await this.#hot.getMachine(id);
    return row === undefined ? null : this.#fromRow(row);
  }

  async getMany(ids: string[]): Promise<MachineRecord[]> {
    if (ids.length === 0) return [];
    const found = await this.#ctx.fork().find(MachineEntity, { id: { $in: [...new Set(ids)] } });
    const byId = new Map(found.map((m) => [m.id, this.#fromEntity(m)]));
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
      return { items: items.map((e) => this.#fromEntity(e)), total };
    }
    const labels = query.labels;
    const all = (await em.find(MachineEntity, {}, { orderBy: [...orderBy] }))
      .map((e) => this.#fromEntity(e))
      .filter((m) => hasLabels(m, labels));
    return { items: all.slice(query.offset, query.offset + query.limit), total: all.length };
  }

  async selectByLabels(labels: Record<string, string>): Promise<MachineRecord[]> {
    const all = await this.#ctx
      .fork()
      .find(MachineEntity, {}, { orderBy: [{ createdAt: "asc" }, { id: "asc" }] });
    return all.map((e) => this.#fromEntity(e)).filter((m) => hasLabels(m, labels));
  }

  async update(id: string, patch: Partial<MachineRecord>): Promise<MachineRecord | null> {
    const em = this.#ctx.fork();
    const entity = await em.findOne(MachineEntity, { id });
    if (entity === null) return null;
    const { id: _id, createdAt: _createdAt, ...rest } = patch;
    const data = this.#toEntityData({ ...this.#fromEntity(entity), ...rest, updatedAt: rest.updatedAt ?? new Date() });
    em.assign(entity, { ...data, id: entity.id, createdAt: entity.createdAt });
    try {
      await em.flush();
    } catch (err) {
      throw await this.#uniqueError(err, data.name, id);
    }
    return this.#fromEntity(entity);
  }

  async pinHostKey(id: string, fingerprint: string, keyType: string): Promise<{ pinned: boolean; fingerprint: string | null }> {
    const em = this.#ctx.fork();
    const n = await em.nativeUpdate(
      MachineEntity,
      { id, hostKeyPolicy: "tofu", hostKeyFingerprint: null },
      { hostKeyFingerprint: fingerprint, hostKeyAlgorithm: keyType, hostKeyPolicy: "pinned", updatedAt: new Date() },
    );
    const row = await this.#hot.getMachine(id);
    return { pinned: n === 1, fingerprint: row?.host_key_fingerprint ?? null };
  }

  async delete(id: string): Promise<boolean> {
    const n = await this.#ctx.fork().nativeDelete(MachineEntity, { id });
    return n > 0;
  }

  #toEntityData(m: MachineRecord): Machine {
    return toEntityData(m, (column, value) => this.#secrets.seal(m.id, column, value));
  }

  #fromEntity(e: Machine): MachineRecord {
    return fromEntity(e, (column, value) => this.#open(e.id, column, value));
  }

  #fromRow(r: MachineRow): MachineRecord {
    return fromRow(r, (column, value) => this.#open(r.id, column, value));
  }

  /**
   * A value that does not open here (another replica sealed it under a key
   * this one lacks, or the row was altered since the start) fails the request
   * with a message naming the machine and the key id, never a bare 500.
   */
  #open(id: string, column: SecretColumn, value: string | null): string | null {
    try {
      return this.#secrets.open(id, column, value);
    } catch (err) {
      if (!(err instanceof SecretOpenError)) throw err;
      throw new FleetError(
        "failed_precondition",
        `the stored ${column} of machine ${id} ${err.message}: every replica needs the same FLEETRUN_SECRET_KEY (or key file)`,
      );
    }
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

function toEntityData(m: MachineRecord, seal: (column: "private_key" | "passphrase" | "password", value: string | null) => string | null): Machine {
  return {
    id: m.id,
    name: m.name,
    host: m.host,
    port: m.port,
    username: m.username,
    privateKey: seal("private_key", m.privateKey),
    passphrase: seal("passphrase", m.passphrase),
    password: seal("password", m.password),
    hostKeyFingerprint: m.hostKeyFingerprint,
    hostKeyAlgorithm: m.hostKeyAlgorithm,
    hostKeyPolicy: m.hostKeyPolicy ?? "pinned",
    labels: JSON.stringify(m.labels),
    createdAt: m.createdAt,
    updatedAt: m.updatedAt,
  };
}

type Open = (column: "private_key" | "passphrase" | "password", value: string | null) => string | null;

function fromEntity(e: Machine, open: Open): MachineRecord {
  return {
    id: e.id,
    name: e.name,
    host: e.host,
    port: e.port,
    username: e.username,
    privateKey: open("private_key", e.privateKey ?? null),
    passphrase: open("passphrase", e.passphrase ?? null),
    password: open("password", e.password ?? null),
    hostKeyFingerprint: e.hostKeyFingerprint ?? null,
    hostKeyAlgorithm: e.hostKeyAlgorithm ?? null,
    hostKeyPolicy: e.hostKeyPolicy as HostKeyPolicy,
    labels: JSON.parse(e.labels) as Record<string, string>,
    createdAt: requireDate(e.createdAt),
    updatedAt: requireDate(e.updatedAt),
  };
}

function fromRow(r: MachineRow, open: Open): MachineRecord {
  return {
    id: r.id,
    name: r.name,
    host: r.host,
    port: r.port,
    username: r.username,
    privateKey: open("private_key", r.private_key),
    passphrase: open("passphrase", r.passphrase),
    password: open("password", r.password),
    hostKeyFingerprint: r.host_key_fingerprint,
    hostKeyAlgorithm: r.host_key_algorithm,
    hostKeyPolicy: r.host_key_policy as HostKeyPolicy,
    labels: JSON.parse(r.labels) as Record<string, string>,
    createdAt: toDate(r.created_at),
    updatedAt: toDate(r.updated_at),
  };
}

function requireDate(value: Date | null): Date {
  if (value === null) throw new FleetError("internal", "a stored machine timestamp is null");
  return value;
}
