/**
 * One command on many machines: every per-machine run is an ordinary command
 * (history, follow, cancel) sharing a batch id. `maxConcurrency` bounds how
 * many run at once; once more than `maxErrors` failed, nothing new is
 * launched and the rest are recorded as `skipped`.
 *
 * Admission: a batch takes places for its first wave (min(machines,
 * max_concurrency)) among the process's active commands and pending starts
 * before anything is stored, or is refused as a whole (429). Its later items
 * wait within the batch and reuse the places of items that ended; so
 * max_concurrency is capped at those two limits.
 */
import type { CommandLease } from "./admission.ts";
import { assertRunAs, assertSelectionInScope, SYSTEM_CALLER, type Caller } from "./caller.ts";
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from "./errors.ts";
import type { CommandEngine } from "./command-engine.ts";
import { newId } from "./ids.ts";
import { isTerminal, type BatchRecord, type CommandRecord, type MachineRecord, type Stores } from "./ports.ts";
import { allMachines, machineInScope, type Scope } from "./scope.ts";
import { parseLimit, type ValidExecute } from "./validate.ts";

export interface BatchInput {
  machineIds: string[];
  selector: Record<string, string> | null;
  command: string;
  cwd: string | null;
  env: Record<string, string>;
  timeoutMs: number | null;
  user: string | null;
  maxConcurrency: unknown;
  maxErrors: unknown;
}

export interface BatchConfig {
  /** Default of max_concurrency. */
  defaultConcurrency: number;
  /** Upper bound of machines in one batch. */
  maxMachines: number;
}

/** Ended commands of a batch by how they ended. */
export interface BatchSummary {
  batchId: string;
  /** `completed` with exit code 0. */
  succeeded: number;
  /** `completed` with a non-zero exit code, or `failed` (never started). */
  failed: number;
  /** `skipped`: never launched. */
  skipped: number;
  timedOut: number;
  cancelled: number;
  lost: number;
  /** What `max_errors` counts: every ended command that did not succeed and was not skipped. */
  errors: number;
}

interface Prepared {
  batch: BatchRecord;
  machines: MachineRecord[];
  records: CommandRecord[];
  env: Record<string, string>;
  /** Places of its commands in flight (admission). */
  lease: CommandLease;
  /** Gives back the caller's per-token places (idempotent). */
  release: () => void;
  /** Who asked for it: a hang-up of a waiting caller cancels in its name. */
  requestedBy: string;
}

interface ActiveBatch {
  cancelled: boolean;
  cancel(by: string): Promise<void>;
}

/** Whether a finished command counts as a success of its batch. */
export function succeeded(c: CommandRecord): boolean {
  return c.status === "completed" && c.exitCode === 0;
}

/** Whether a finished command counts against the batch's `max_errors`. */
export function isError(c: CommandRecord): boolean {
  return isTerminal(c.status) && c.status !== "skipped" && !succeeded(c);
}

export function summarize(batchId: string, commands: CommandRecord[]): BatchSummary {
  const s: BatchSummary = { batchId, succeeded: 0, failed: 0, skipped: 0, timedOut: 0, cancelled: 0, lost: 0, errors: 0 };
  for (const c of commands) {
    if (!isTerminal(c.status)) continue;
    if (isError(c)) s.errors++;
    switch (c.status) {
      case "skipped":
        s.skipped++;
        break;
      case "timed_out":
        s.timedOut++;
        break;
      case "cancelled":
        s.cancelled++;
        break;
      case "lost":
        s.lost++;
        break;
      default:
        if (succeeded(c)) s.succeeded++;
        else s.failed++;
    }
  }
  return s;
}

export class BatchRunner {
  private readonly active = new Map<string, ActiveBatch>();

  private readonly engine: CommandEngine;
  private readonly stores: Stores;
  private readonly config: BatchConfig;

  constructor(engine: CommandEngine, stores: Stores, config: BatchConfig) {
    this.engine = engine;
    this.stores = stores;
    this.config = config;
  }

  /**
   * Validates, checks the caller's scope (every machine must be in it, or the
   * batch runs on none), resolves machines and stores the batch and its
   * queued commands. Nothing runs yet.
   */
  async prepare(input: BatchInput, caller: Caller, sync: boolean): Promise<Prepared> {
    this.engine.assertAccepting();
    const opts: ValidExecute = this.engine.validate(input);
    assertRunAs(caller.scope, opts.user);
    const requestedBy = caller.name;
    let machines: MachineRecord[];
    if (input.machineIds.length > 0 && input.selector) {
      throw new InvalidArgumentError("selector", "give either machine_ids or selector, not both");
    }
    if (input.machineIds.length > 0) {
      const ids = [...new Set(input.machineIds)];
      for (const id of ids) if (id === "") throw new InvalidArgumentError("machine_ids", "must not contain empty ids");
      const found = new Map<string, MachineRecord>();
      for (const id of ids) {
        try {
          // Out of scope is unknown to the caller, with the same message.
          found.set(id, await this.engine.resolveMachine(id, "machine_ids", caller.scope));
        } catch (e) {
          if (!(e instanceof NotFoundError)) throw e;
        }
      }
      const missing = ids.filter((id) => !found.has(id));
      if (missing.length > 0) {
        const e = new NotFoundError("machine", missing.join(", "), "machine_ids");
        throw Object.assign(e, { message: `unknown machine id(s): ${missing.join(", ")}` });
      }
      machines = ids.map((id) => found.get(id)!);
    } else if (input.selector && Object.keys(input.selector).length > 0) {
      machines = await this.stores.machines.selectByLabels(input.selector);
      if (machines.length === 0) throw new InvalidArgumentError("selector", "matches no machine");
      assertSelectionInScope(caller.scope, machines);
    } else {
      throw new InvalidArgumentError("machine_ids", "give machine_ids or selector.labels");
    }
    if (machines.length > this.config.maxMachines) {
      throw new InvalidArgumentError("machine_ids", `at most ${this.config.maxMachines} machines per batch`);
    }
    const total = machines.length;
    const { maxActiveCommands, maxPendingStarts } = this.engine.admission.limits;
    const maxConcurrency = Math.min(
      Math.max(1, parseLimit("max_concurrency", input.maxConcurrency, total, this.config.defaultConcurrency)),
      maxActiveCommands,
      maxPendingStarts,
    );
    const maxErrors =
      input.maxErrors === null || input.maxErrors === undefined || input.maxErrors === ""
        ? total
        : parseLimit("max_errors", input.maxErrors, total, total);
    const batch: BatchRecord = {
      id: newId("batch"),
      command: opts.command,
      status: "running",
      machineIds: machines.map((m) => m.id),
      maxConcurrency,
      maxErrors,
      requestedBy,
      createdAt: new Date(),
      finishedAt: null,
    };
    const records = machines.map((m) => this.engine.newRecord(m.id, opts, requestedBy, sync, batch.id));
    // Refused as a whole, before anything is stored, when its first wave does not fit.
    const wave = Math.min(total, maxConcurrency);
    const release = caller.holdCommands?.(wave) ?? (() => {});
    let lease: CommandLease;
    try {
      lease = this.engine.admitBatch(wave);
    } catch (err) {
      release();
      throw err;
    }
    try {
      await this.stores.batches.insert(batch);
      await this.stores.commands.insertMany(records);
    } catch (err) {
      lease.seal();
      release();
      throw err;
    }
    return { batch, machines, records, env: opts.env, lease, release, requestedBy };
  }

  /**
   * Runs a prepared batch to its end; `onResult` sees each command as it
   * ends. Aborting `signal` cancels the batch.
   */
  async run(p: Prepared, onResult?: (c: CommandRecord) => void, signal?: AbortSignal): Promise<BatchSummary> {
    const { batch } = p;
    const results = new Map<string, CommandRecord>();
    const running = new Map<string, Promise<CommandRecord>>();
    let next = 0;
    let failures = 0;
    let stopReason: string | null = null;
    const state: ActiveBatch = {
      cancelled: false,
      cancel: async (by: string) => {
        state.cancelled = true;
        stopReason = stopReason ?? "batch_cancelled";
        await Promise.all([...running.keys()].map((id) => this.engine.cancel(id, by).catch(() => {})));
        wake();
      },
    };
    this.active.set(batch.id, state);
    let wake: () => void = () => {};
    const onAbort = () => {
      state.cancel(p.requestedBy).catch(() => {});
    };
    // A caller that hung up while the batch was being prepared launches nothing.
    if (signal?.aborted) onAbort();
    else signal?.addEventListener("abort", onAbort, { once: true });
    try {
      while (next < p.records.length || running.size > 0) {
        while (stopReason === null && running.size < batch.maxConcurrency && next < p.records.length) {
          const record = p.records[next]!;
          const machine = p.machines[next]!;
          next++;
          const r = this.engine.launch(record, machine, p.env, record.sync, p.lease.slot());
          running.set(
            record.id,
            r.finished.then((done) => {
              running.delete(record.id);
              results.set(record.id, done);
              if (isError(done)) failures++;
              if (failures > batch.maxErrors && stopReason === null) stopReason = "error_budget_exhausted";
              onResult?.(done);
              wake();
              return done;
            }),
          );
        }
        // Nothing more to launch: places go back as the last items end.
        if (next >= p.records.length || stopReason !== null) p.lease.seal();
        if (stopReason !== null && next < p.records.length) {
          for (; next < p.records.length; next++) {
            const skipped = await this.skip(p.records[next]!, stopReason);
            results.set(skipped.id, skipped);
            onResult?.(skipped);
          }
        }
        if (running.size === 0) break;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    } finally {
      p.lease.seal();
      p.release();
      signal?.removeEventListener("abort", onAbort);
      this.active.delete(batch.id);
    }
    await this.stores.batches.update(batch.id, {
      status: state.cancelled ? "cancelled" : "completed",
      finishedAt: new Date(),
    });
    return summarize(batch.id, [...results.values()]);
  }

  private async skip(record: CommandRecord, reason: string): Promise<CommandRecord> {
    const message =
      reason === "error_budget_exhausted"
        ? "not launched: the batch's max_errors was exceeded"
        : "not launched: the batch was cancelled";
    const patch = { status: "skipped" as const, finishedAt: new Date(), errorCode: reason, errorMessage: message };
    await this.stores.commands.transition(record.id, ["queued"], patch);
    return (await this.stores.commands.get(record.id)) ?? { ...record, ...patch };
  }

  /** Cancels a running batch: running commands are cancelled, the rest skipped. */
  async cancel(batchId: string, caller: Caller = SYSTEM_CALLER): Promise<void> {
    const batch = await this.visibleBatch(batchId, caller.scope);
    const active = this.active.get(batchId);
    if (active) {
      await active.cancel(caller.name);
      return;
    }
    if (batch.status !== "running") throw new FailedPreconditionError(`batch ${batchId} already ended (${batch.status})`);
    // Not driven by this process (e.g. after a restart): settle what is left.
    for (const c of await this.stores.commands.listByBatch(batchId)) {
      if (c.status === "queued") await this.skip(c, "batch_cancelled");
      else if (c.status === "running") await this.engine.cancel(c.id, caller.name).catch(() => {});
    }
    await this.stores.batches.update(batchId, { status: "cancelled", finishedAt: new Date() });
  }

  async get(batchId: string, scope?: Scope): Promise<{ batch: BatchRecord; commands: CommandRecord[] }> {
    const batch = await this.visibleBatch(batchId, scope);
    return { batch, commands: await this.stores.commands.listByBatch(batchId) };
  }

  /**
   * The batch, or NotFoundError: also when any of its machines is out of
   * `scope` (a batch shows every machine's id and result).
   */
  private async visibleBatch(batchId: string, scope: Scope | undefined): Promise<BatchRecord> {
    const batch = await this.stores.batches.get(batchId);
    if (!batch) throw new NotFoundError("batch", batchId, "id");
    if (scope === undefined || allMachines(scope)) return batch;
    const found = new Map<string, MachineRecord>();
    for (const m of await this.stores.machines.getMany(batch.machineIds)) found.set(m.id, m);
    const local = this.engine.localMachine;
    if (local && batch.machineIds.includes(local.id)) found.set(local.id, local);
    const visible = batch.machineIds.every((id) => machineInScope(scope, { id, labels: found.get(id)?.labels ?? null }));
    if (!visible) throw new NotFoundError("batch", batchId, "id");
    return batch;
  }
}
