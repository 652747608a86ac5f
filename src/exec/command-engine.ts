/**
 * The command lifecycle: accept, persist, run on the target, stream and
 * store output, cancel, time out, re-attach after a lost connection or a
 * restart, and record exactly one terminal state.
 *
 *   queued ──> running ──> completed | timed_out | cancelled | lost
 *     │           └──────> failed (nothing started on the target)
 *     └──> cancelled | skipped | failed
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { Admission, CommandLease, CommandSlot, FollowerPermit } from "./admission.ts";
import { assertRunAs, SYSTEM_CALLER, visibleMachine, type Caller } from "./caller.ts";
import { FailedPreconditionError, NotFoundError, ServiceStoppingError, TargetError, UnavailableError } from "./errors.ts";
import { newId } from "./ids.ts";
import { OutputBus } from "./output-bus.ts";
import { FlushClock } from "./flush-clock.ts";
import { OutputLog } from "./output-log.ts";
import { joinStoredOutput } from "./output-seam.ts";
import {
  isTerminal,
  type CommandRecord,
  type CommandStatus,
  type MachineRecord,
  type MachineTarget,
  type OutputStreamName,
  type RunnerState,
  type Stores,
  type Transport,
} from "./ports.ts";
import { attachJob, cancelJob, cleanupJob, killGroup, runDirect, runJob, type JobEnd } from "./remote-job.ts";
import { jobDirFor } from "./remote-script.ts";
import { signalName } from "./signals.ts";
import type { Scope } from "./scope.ts";
import { StageTrace } from "./stage-trace.ts";
import { validateExecOptions, type ExecLimits, type ExecuteInput, type ValidExecute } from "./validate.ts";

export interface EngineConfig extends ExecLimits {
  /** SIGTERM → SIGKILL delay for cancel and timeout. */
  graceMs: number;
  /** Stored output per stream (head and tail kept). */
  outputCapPerStream: number;
  /** Extra time, past a command's timeout, that re-attach attempts go on for a detached command. */
  detachedReattachSlackMs: number;
}

/** Receives lifecycle events, for metrics and logs. */
export interface EngineObserver {
  commandStarted?(cmd: CommandRecord): void;
  commandEnded?(cmd: CommandRecord): void;
  warn?(message: string, fields: Record<string, unknown>): void;
  /**
   * When set, every command whose caller waits is timed stage by stage
   * (each stage's ms since the previous one) and handed over once answered.
   */
  commandStages?(cmd: CommandRecord, stages: Record<string, number>): void;
}

export interface EngineDeps {
  stores: Stores;
  ssh: Transport;
  local: Transport;
  /** The built-in machine, when enabled. */
  localMachine: MachineRecord | null;
  config: EngineConfig;
  /** Limits on commands, pending starts, handshakes and followers. */
  admission: Admission;
  observer?: EngineObserver;
}

/** Hooks of {@link CommandEngine.shutdown}. */
export interface ShutdownOptions {
  /** Aborted to cut the grace period short (a second signal): waiting callers' commands are cancelled at once. */
  stopNow?: AbortSignal;
  /** Called once, before the grace period, with the number of commands whose caller waits. */
  onWaiting?(commands: number): void;
}

export type WatchEvent =
  | { kind: "output"; stream: OutputStreamName; offset: number; data: Buffer }
  | { kind: "skipped"; offset: number; bytes: number }
  | { kind: "end"; command: CommandView };

/** A command with its stored output. */
export interface CommandView extends CommandRecord {
  stdout: Buffer;
  stderr: Buffer;
}

interface Run {
  record: CommandRecord;
  target: MachineTarget;
  sync: boolean;
  /** Set once the job exists on the target. */
  remoteStarted: boolean;
  cancelRequested: boolean;
  /** Resolves with the terminal record. */
  finished: Promise<CommandRecord>;
  log: OutputLog | null;
  /** Light path: the service's own timeout fired. */
  timedOut: boolean;
  /** Light path: a SIGTERM reached the command's group. */
  killSent: boolean;
  /** Its place in the admission limits, given back when it ends. */
  slot: CommandSlot | null;
  /** Left by a previous process and taken over at start. */
  recovered?: boolean;
  /** Stage timestamps, when the observer asks for them. */
  trace?: StageTrace | null;
}

/**
 * Slack of the light path's target-side watchdog behind the service's own
 * timer and its SIGKILL. The watchdog (coreutils `timeout -k`) fires at
 * timeout + grace + slack: its first alarm stays armed after the service's
 * SIGTERM and would otherwise cut the grace period short.
 */
const WATCHDOG_SLACK_MS = 2_000;

/** A waiting caller's output up to this size per stream is handed over from memory. */
const MIRROR_OUTPUT_UP_TO = 64 * 1024;

/** A light-path command still running after this long gets its process group stored. */
const PERSIST_PGID_AFTER_MS = 1_000;

/** A machine's leftover job directories are swept at most this often (per service process). */
const SWEEP_EVERY_MS = 24 * 3_600_000;

/** A leftover job directory must be this much older than the longest a command can take. */
const SWEEP_MARGIN_MS = 24 * 3_600_000;

const ACTIVE: CommandStatus[] = ["queued", "running"];

/** After a second signal, how long cancelled waiting callers' commands get to end before they are recorded `lost`. */
const STOP_NOW_WAIT_MS = 1_000;

export class CommandEngine {
  private readonly runs = new Map<string, Run>();
  /** When a detached start last swept each machine's leftover job directories. */
  private readonly lastSweep = new Map<string, number>();
  readonly bus = new OutputBus();
  /** Flushes every running command's output together. */
  private readonly flushClock = new FlushClock();
  private accepting = true;
  /** Aborted when the service starts to stop: every follower ends at once. */
  private readonly stopFollowers = new AbortController();

  private readonly deps: EngineDeps;

  constructor(deps: EngineDeps) {
    this.deps = deps;
  }

  get config(): EngineConfig {
    return this.deps.config;
  }

  get admission(): Admission {
    return this.deps.admission;
  }

  /** True once {@link shutdown} began: new commands are refused and followers are ended. */
  get stopping(): boolean {
    return !this.accepting;
  }

  /** Commands this process is running (for metrics and shutdown). */
  get activeRuns(): number {
    return this.runs.size;
  }

  /**
   * The machine, or NotFoundError; with a `scope`, a machine out of it is
   * not found either, with the same message.
   */
  async resolveMachine(machineId: string, field = "machine_id", scope?: Scope): Promise<MachineRecord> {
    const m = await this.findMachine(machineId);
    if (scope !== undefined) return visibleMachine(scope, m, machineId, field);
    if (!m) throw new NotFoundError("machine", machineId, field);
    return m;
  }

  /** The built-in machine, when enabled. */
  get localMachine(): MachineRecord | null {
    return this.deps.localMachine;
  }

  /** The machine (the built-in one included), or null. */
  async findMachine(machineId: string): Promise<MachineRecord | null> {
    const local = this.deps.localMachine;
    if (local && machineId === local.id) return local;
    return this.deps.stores.machines.get(machineId);
  }

  private targetOf(m: MachineRecord): MachineTarget {
    return { ...m, local: this.deps.localMachine !== null && m.id === this.deps.localMachine.id };
  }

  private transportFor(target: MachineTarget): Transport {
    return target.local ? this.deps.local : this.deps.ssh;
  }

  validate(input: Omit<ExecuteInput, "machineId">, prefix = ""): ValidExecute {
    return validateExecOptions(input, this.deps.config, prefix);
  }

  /** A new command record in `queued`, not stored yet. */
  newRecord(machineId: string, opts: ValidExecute, requestedBy: string, sync: boolean, batchId: string | null = null): CommandRecord {
    return {
      id: newId("cmd"),
      machineId,
      command: opts.command,
      cwd: opts.cwd,
      envKeys: Object.keys(opts.env).sort(),
      user: opts.user,
      timeoutMs: opts.timeoutMs,
      status: "queued",
      exitCode: null,
      signal: null,
      stdoutBytes: 0,
      stderrBytes: 0,
      stdoutTruncated: false,
      stderrTruncated: false,
      logBytes: 0,
      durationMs: null,
      createdAt: new Date(),
      startedAt: null,
      finishedAt: null,
      errorCode: null,
      errorMessage: null,
      batchId,
      requestedBy,
      cancelledBy: null,
      runner: null,
      sync,
    };
  }

  /** Throws `UnavailableError` once the service is stopping. */
  assertAccepting(): void {
    if (!this.accepting) throw new UnavailableError("the service is shutting down");
  }

  /**
   * Runs a command and resolves with its terminal state. Aborting `signal`
   * (the caller hung up, or its deadline passed) cancels the command.
   */
  async execute(input: ExecuteInput, caller: Caller, signal?: AbortSignal): Promise<CommandView> {
    const stages = this.deps.observer?.commandStages;
    const trace = stages ? new StageTrace() : null;
    const { run } = await this.admitAndLaunch(input, caller, true, trace);
    const onAbort = () => {
      this.requestCancel(run, caller.name).catch(() => {});
    };
    if (signal) {
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
    try {
      const done = await run.finished;
      const view = await this.view(done);
      if (trace && stages) {
        trace.mark("output_read");
        stages(done, trace.durations());
      }
      return view;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Starts a command and resolves once it is stored (queued or running). */
  async start(input: ExecuteInput, caller: Caller): Promise<CommandRecord> {
    const { run } = await this.admitAndLaunch(input, caller, false);
    run.finished.catch(() => {});
    return { ...run.record };
  }

  /**
   * Checks, admits, stores and launches one command. The caller's scope is
   * checked before anything is stored (run-as first, then the machine, which
   * is not found when out of scope); then the per-token and the process-wide
   * limits take their places, given back when the command ends.
   */
  private async admitAndLaunch(input: ExecuteInput, caller: Caller, sync: boolean, trace: StageTrace | null = null): Promise<{ run: Run }> {
    this.assertAccepting();
    const opts = this.validate(input);
    assertRunAs(caller.scope, opts.user);
    // Refused at once when full: no database work for a call that cannot be taken.
    this.deps.admission.precheck(1);
    const machine = await this.resolveMachine(input.machineId, "machine_id", caller.scope);
    const release = caller.holdCommands?.(1) ?? (() => {});
    let slot: CommandSlot;
    const record = this.newRecord(machine.id, opts, caller.name, sync);
    try {
      slot = this.admitOne(machine);
      trace?.mark("admitted");
      await this.insertAdmitted(record, slot);
      trace?.mark("queued_stored");
    } catch (err) {
      release();
      throw err;
    }
    const run = this.launch(record, machine, opts.env, sync, slot, trace);
    run.finished.then(release, release);
    return { run };
  }

  /**
   * Admission of one start on `machine`, before anything is stored: its
   * place, or ResourceExhaustedError (too many commands or pending starts,
   * or its SSH handshake would wait in a full queue).
   */
  private admitOne(machine: MachineRecord): CommandSlot {
    const target = this.targetOf(machine);
    const transport = this.transportFor(target);
    const lease = this.deps.admission.admitCommands(1, transport.reserveStart ? () => transport.reserveStart!(target) : undefined);
    const slot = lease.slot();
    lease.seal();
    return slot;
  }

  private async insertAdmitted(record: CommandRecord, slot: CommandSlot): Promise<void> {
    try {
      await this.deps.stores.commands.insert(record);
    } catch (err) {
      slot.end();
      throw err;
    }
  }

  /**
   * Admission of a batch's first wave of `n` commands, before anything is
   * stored: places for them all, or ResourceExhaustedError. A batch is also
   * refused while the SSH handshake queue is full; its later items take
   * their turn in it.
   */
  admitBatch(n: number): CommandLease {
    this.assertAccepting();
    const ssh = this.deps.ssh;
    return this.deps.admission.admitCommands(n, () => {
      const h = ssh.handshakeStats?.();
      return h !== undefined && h.queued >= h.maxQueued ? null : { release() {} };
    });
  }

  /**
   * Runs an already stored `queued` record in the background. The returned
   * run's `finished` resolves with the terminal record (it never rejects).
   * `slot` is its admitted place, given back when it ends.
   */
  launch(
    record: CommandRecord,
    machine: MachineRecord,
    env: Record<string, string>,
    sync: boolean,
    slot: CommandSlot | null = null,
    trace: StageTrace | null = null,
  ): Run {
    const run = newRun(record, this.targetOf(machine), sync);
    run.slot = slot;
    run.trace = trace;
    this.track(run, this.drive(run, env), "internal", "internal error while running the command");
    return run;
  }

  /**
   * Registers `run` as running in this process until `work` settles; a
   * failure of `work` itself still ends in a recorded terminal state.
   */
  private track(run: Run, work: Promise<CommandRecord>, errorCode: string, errorMessage: string): void {
    const id = run.record.id;
    this.runs.set(id, run);
    run.finished = work
      .catch(async (err: unknown) => {
        if (!this.accepting && !run.sync) {
          // Most likely the stop itself (transport or store closing): leave it for the next start to re-attach.
          return { ...run.record };
        }
        this.deps.observer?.warn?.("command engine error", { command_id: id, error: String(err) });
        return this.finish(run, "lost", { errorCode, errorMessage }).catch(() => run.record);
      })
      .finally(() => {
        this.runs.delete(id);
        this.bus.forget(id);
        run.slot?.end();
      });
  }

  private async drive(run: Run, env: Record<string, string>): Promise<CommandRecord> {
    const { record } = run;
    const commands = this.deps.stores.commands;
    if (run.cancelRequested) return this.finish(run, "cancelled", {}, ["queued"]);
    if (run.sync) return this.driveDirect(run, env);
    const startedAt = new Date();
    const jobDir = jobDirFor(record.id);
    const ok = await commands.transition(record.id, ["queued"], {
      status: "running",
      startedAt,
      runner: { jobDir, user: record.user, starting: true },
    });
    if (!ok) {
      const now = await commands.get(record.id);
      return now ?? record;
    }
    Object.assign(run.record, { status: "running", startedAt, runner: { jobDir, user: record.user, starting: true } });
    this.deps.observer?.commandStarted?.(run.record);
    const log = OutputLog.fresh(commands, record.id, this.logOptions(record.id));
    run.log = log;
    const transport = this.runTransport(run);
    let end: JobEnd;
    try {
      end = await runJob(
        transport,
        run.target,
        {
          jobDir,
          command: record.command,
          cwd: record.cwd,
          env,
          user: record.user,
          timeoutMs: record.timeoutMs,
          graceMs: this.deps.config.graceMs,
          sweepAfterMinutes: this.sweepDue(run.target.id),
        },
        (stream, data) => log.append(stream, data),
        () => {
          this.onRemoteStarted(run);
          this.markOnTarget(run);
        },
      );
    } catch (err) {
      end = toNotStarted(err);
    }
    if (end.kind === "exists") {
      this.onRemoteStarted(run);
      this.markOnTarget(run);
      end = await this.follow(run, { kind: "disconnected", error: new TargetError("connection_lost", "job already existed", record.id) });
    } else if (end.kind === "disconnected") {
      end = await this.follow(run, end);
    }
    return this.conclude(run, end);
  }

  /**
   * The light path for a waiting caller: one channel, output straight from
   * the command, no files on the target. The service enforces the timeout
   * (a watchdog on the target backs it up); it cannot be re-attached, so a
   * dropped connection or a restart makes it `lost` (after killing it).
   */
  private async driveDirect(run: Run, env: Record<string, string>): Promise<CommandRecord> {
    const { record } = run;
    const commands = this.deps.stores.commands;
    const startedAt = new Date();
    const runner = { mode: "direct" as const, jobDir: "", user: record.user };
    const ok = await commands.transition(record.id, ["queued"], { status: "running", startedAt, runner });
    if (!ok) return (await commands.get(record.id)) ?? record;
    run.trace?.mark("running_stored");
    Object.assign(run.record, { status: "running", startedAt, runner });
    this.deps.observer?.commandStarted?.(run.record);
    const log = OutputLog.fresh(commands, record.id, { ...this.logOptions(record.id), mirrorUpTo: MIRROR_OUTPUT_UP_TO });
    run.log = log;
    let timer: NodeJS.Timeout | null = null;
    let persist: NodeJS.Timeout | null = null;
    let end: JobEnd;
    try {
      end = await runDirect(
        this.runTransport(run),
        run.target,
        {
          command: record.command,
          cwd: record.cwd,
          env,
          user: record.user,
          timeoutMs: record.timeoutMs,
          graceMs: this.deps.config.graceMs,
          watchdogMs: record.timeoutMs + this.deps.config.graceMs + WATCHDOG_SLACK_MS,
        },
        (stream, data) => log.append(stream, data),
        (pgid, leaderStart) => {
          run.record.runner = { ...runner, ...(pgid ? { pgid } : {}), ...(leaderStart ? { pgidStart: leaderStart } : {}) };
          // Remembered so that a restart can still kill what a dead caller left;
          // only for commands that last (short ones spare the write).
          persist = setTimeout(() => {
            commands.transition(record.id, ["running"], { runner: run.record.runner }).catch(() => {});
          }, PERSIST_PGID_AFTER_MS);
          timer = setTimeout(() => {
            run.timedOut = true;
            this.sendCancel(run).catch(() => {});
          }, record.timeoutMs);
          this.onRemoteStarted(run);
        },
        run.trace ? (stage) => run.trace?.mark(stage) : undefined,
      );
    } catch (err) {
      end = toNotStarted(err);
    } finally {
      if (timer) clearTimeout(timer);
      if (persist) clearTimeout(persist);
    }
    if (end.kind === "ended") {
      end = { ...end, timedOut: run.timedOut, cancelled: run.cancelRequested && run.killSent && !run.timedOut };
    } else if (end.kind === "disconnected" && run.record.runner?.pgid) {
      // The command may run on: end it rather than leave it behind unobserved.
      await killGroup(this.transportFor(run.target), run.target, groupOf(run.record.runner), record.user, this.deps.config.graceMs).catch(() => {});
    }
    return this.conclude(run, end);
  }

  /**
   * Job directories left on a target (cleanup failed, or the outcome was
   * given up as lost) are swept by a detached start on that machine, at most
   * once a day per machine: those untouched for longer than any command may
   * run and be re-attached, with no supervisor alive. Returns the age in
   * minutes when this start should sweep, else null.
   */
  private sweepDue(machineId: string): number | null {
    const now = Date.now();
    const last = this.lastSweep.get(machineId);
    if (last !== undefined && now - last < SWEEP_EVERY_MS) return null;
    this.lastSweep.set(machineId, now);
    const { maxTimeoutMs, graceMs, detachedReattachSlackMs } = this.deps.config;
    return Math.ceil((maxTimeoutMs + graceMs + detachedReattachSlackMs + SWEEP_MARGIN_MS) / 60_000);
  }

  /** Options of the output log of command `id`. */
  private logOptions(id: string) {
    return {
      capPerStream: this.deps.config.outputCapPerStream,
      clock: this.flushClock,
      onStored: () => this.bus.notify(id),
    };
  }

  /**
   * The transport for a run's start: the first `exec` uses up the handshake
   * reservation taken at admission.
   */
  private runTransport(run: Run): Transport {
    const inner = this.transportFor(run.target);
    const slot = run.slot;
    if (slot === null) return inner;
    return {
      ...inner,
      exec: (target, commandLine, options) => {
        const p = inner.exec(target, commandLine, options);
        slot.dispatched();
        return p;
      },
    };
  }

  /** Records that the job exists on its target (clears `runner.starting`). */
  private markOnTarget(run: Run): void {
    const runner = run.record.runner;
    if (!runner?.starting) return;
    const { starting: _starting, ...onTarget } = runner;
    run.record.runner = onTarget;
    this.deps.stores.commands.transition(run.record.id, ["running"], { runner: onTarget }).catch((err: unknown) => {
      this.deps.observer?.warn?.("could not record that a job started", { command_id: run.record.id, error: String(err) });
    });
  }

  private onRemoteStarted(run: Run): void {
    run.slot?.started();
    if (run.remoteStarted) return;
    run.remoteStarted = true;
    if (run.cancelRequested) this.sendCancel(run).catch(() => {});
  }

  /**
   * Re-attaches after the connection dropped, retrying with backoff while the
   * command could still be running; gives up as `disconnected`.
   */
  private async follow(run: Run, last: JobEnd & { kind: "disconnected" }): Promise<JobEnd> {
    const { record } = run;
    const started = record.startedAt?.getTime() ?? Date.now();
    // Worth trying while the command could still be running on its target.
    const deadline = started + record.timeoutMs + this.deps.config.graceMs + this.deps.config.detachedReattachSlackMs;
    let delay = 250;
    let end: JobEnd = last;
    const transport = this.transportFor(run.target);
    while (end.kind === "disconnected") {
      if (!this.accepting && !run.sync) return end;
      if (Date.now() >= deadline) return end;
      if (end.error.reason !== "connection_lost" || delay > 250) {
        await sleep(Math.min(delay, Math.max(0, deadline - Date.now())));
      }
      delay = Math.min(delay * 2, 15_000);
      if (!this.accepting && !run.sync) return end;
      const log = run.log!;
      try {
        await log.flush();
        end = await attachJob(transport, run.target, record.runner!.jobDir, log.received, (s, d) => log.append(s, d));
        if (end.kind === "ended" || end.kind === "dead") this.markOnTarget(run);
      } catch (err) {
        end = { kind: "disconnected", error: err instanceof TargetError ? err : new TargetError("connection_lost", String(err), record.machineId) };
      }
    }
    return end;
  }

  private async conclude(run: Run, end: JobEnd): Promise<CommandRecord> {
    if (run.log) {
      await run.log.flush();
      run.log.close();
      run.trace?.mark("output_stored");
    }
    switch (end.kind) {
      case "ended": {
        const ws = end.waitStatus;
        const bySignal = ws > 128 && ws < 160 ? signalName(ws - 128) : null;
        if (end.timedOut || end.cancelled) {
          return this.finish(run, end.timedOut ? "timed_out" : "cancelled", {
            exitCode: bySignal ? null : ws,
            signal: bySignal,
          });
        }
        return this.finish(run, "completed", { exitCode: ws, signal: null });
      }
      case "not_started":
        return this.finish(run, "failed", { errorCode: end.reason, errorMessage: end.message || end.reason, startedAt: null });
      case "gone":
        if (run.record.runner?.starting) {
          // The start script never created the job: nothing ran, a retry is safe.
          return this.finish(run, "failed", {
            errorCode: run.recovered ? "service_restarted" : "spawn_failed",
            errorMessage: run.recovered
              ? "the service restarted before the command started on its target; it never started"
              : "the connection dropped before the command started on its target; it never started",
            startedAt: null,
          });
        }
        return this.finish(run, "lost", { errorCode: "remote_state_lost", errorMessage: "the job's state on the target is gone" });
      case "dead":
        return this.finish(run, "lost", {
          errorCode: "remote_state_lost",
          errorMessage: "the job's supervisor on the target died without recording an exit status",
        });
      case "disconnected":
        if (!this.accepting && !run.sync && run.record.runner?.mode !== "direct") {
          // Shutting down: leave it running on the target for the next start to re-attach.
          return { ...run.record };
        }
        return this.finish(run, "lost", { errorCode: "connection_lost", errorMessage: end.error.message });
      case "exists":
        return this.finish(run, "lost", { errorCode: "remote_state_lost", errorMessage: "unexpected job state" });
    }
  }

  /** Records the terminal state (compare-and-set from an active status). */
  private async finish(
    run: Run,
    status: CommandStatus,
    patch: Partial<CommandRecord>,
    from: readonly CommandStatus[] = ACTIVE,
  ): Promise<CommandRecord> {
    const finishedAt = new Date();
    const startedAt = patch.startedAt === null ? null : (run.record.startedAt ?? null);
    const counters = run.log?.counters;
    const full: Partial<CommandRecord> = {
      exitCode: null,
      signal: null,
      ...patch,
      ...(counters ?? {}),
      status,
      finishedAt,
      durationMs: startedAt ? finishedAt.getTime() - startedAt.getTime() : null,
    };
    const ok = await this.deps.stores.commands.transition(run.record.id, from, full);
    run.trace?.mark("terminal_stored");
    if (!ok) {
      const now = await this.deps.stores.commands.get(run.record.id);
      return now ?? run.record;
    }
    Object.assign(run.record, full);
    this.deps.observer?.commandEnded?.(run.record);
    const kept = run.log?.output();
    if (run.record.runner && run.record.runner.mode !== "direct" && run.remoteStarted && status !== "lost") {
      // The outcome is stored: the job's files on the target can go.
      cleanupJob(this.transportFor(run.target), run.target, run.record.runner.jobDir).catch(() => {});
    }
    // A waiting caller gets the output it already has in memory, when small.
    return kept ? { ...run.record, ...kept } : { ...run.record };
  }

  private async requestCancel(run: Run, by: string): Promise<void> {
    run.cancelRequested = true;
    if (run.record.status === "queued") {
      const cancelledBy = run.record.cancelledBy ?? by;
      const ok = await this.deps.stores.commands.transition(run.record.id, ["queued"], {
        status: "cancelled",
        finishedAt: new Date(),
        cancelledBy,
      });
      if (ok) {
        run.record.status = "cancelled";
        run.record.cancelledBy = cancelledBy;
        return;
      }
    }
    await this.noteCanceller(run.record, run, by);
    if (run.remoteStarted) await this.sendCancel(run);
  }

  /**
   * Records who asked to cancel a command that is still active (the first
   * one to ask), before the signal is sent: the terminal state, written
   * later by whichever process follows the command, keeps it.
   */
  private async noteCanceller(record: CommandRecord, run: Run | undefined, by: string): Promise<void> {
    if (record.cancelledBy !== null || (run !== undefined && run.record.cancelledBy !== null)) return;
    if (run !== undefined) run.record.cancelledBy = by;
    await this.deps.stores.commands.transition(record.id, ACTIVE, { cancelledBy: by });
  }

  private sendCancel(run: Run): Promise<void> {
    if (!run.record.runner) return Promise.resolve();
    const runner = run.record.runner;
    if (runner.mode === "direct") {
      if (!runner.pgid) return Promise.resolve();
      // Set before the answer: the command may die of the signal before the kill script replies.
      run.killSent = true;
      const p = killGroup(this.transportFor(run.target), run.target, groupOf(runner), runner.user, this.deps.config.graceMs).then((r) => {
        if (r === "gone") run.killSent = false;
      });
      return p;
    }
    const p = cancelJob(this.transportFor(run.target), run.target, runner.jobDir, runner.user, this.deps.config.graceMs).then(() => {});
    return p;
  }

  /**
   * Cancels a command: withdraws it when queued, otherwise sends SIGTERM to
   * its process group on the target (SIGKILL after the grace period).
   */
  async cancel(id: string, by: string = SYSTEM_CALLER.name): Promise<void> {
    const record = await this.deps.stores.commands.get(id);
    if (!record) throw new NotFoundError("command", id, "id");
    if (isTerminal(record.status)) {
      // Repeating a cancel that took effect is answered like the first one.
      if (record.status === "cancelled") return;
      throw new FailedPreconditionError(`command ${id} already ended (${record.status})`);
    }
    const run = this.runs.get(id);
    if (run) {
      run.cancelRequested = true;
      if (run.record.status === "queued" || !run.remoteStarted) {
        await this.requestCancel(run, by);
        return;
      }
      await this.noteCanceller(record, run, by);
      await this.sendCancel(run);
      return;
    }
    // Not run by this process (e.g. re-attach still pending): act on the target directly.
    if (record.status === "queued") {
      const ok = await this.deps.stores.commands.transition(id, ["queued"], { status: "cancelled", finishedAt: new Date(), cancelledBy: by });
      if (ok) return;
    }
    if (!record.runner) throw new FailedPreconditionError(`command ${id} is not running on its target`);
    const machine = await this.resolveMachine(record.machineId);
    const target = this.targetOf(machine);
    if (record.runner.mode === "direct") {
      if (!record.runner.pgid) throw new FailedPreconditionError(`command ${id} is not running on its target`);
      await this.noteCanceller(record, undefined, by);
      await killGroup(this.transportFor(target), target, groupOf(record.runner), record.runner.user, this.deps.config.graceMs);
      return;
    }
    await this.noteCanceller(record, undefined, by);
    const r = await cancelJob(this.transportFor(target), target, record.runner.jobDir, record.runner.user, this.deps.config.graceMs);
    if (r === "gone") throw new FailedPreconditionError(`command ${id} is not running on its target`);
  }

  async get(id: string): Promise<CommandView> {
    const record = await this.deps.stores.commands.get(id);
    if (!record) throw new NotFoundError("command", id, "id");
    return this.view(record);
  }

  /** Adds the stored stdout and stderr to a record (unless it carries them already). */
  async view(record: CommandRecord | CommandView): Promise<CommandView> {
    if ("stdout" in record && Buffer.isBuffer(record.stdout) && Buffer.isBuffer(record.stderr)) return record;
    const chunks = await this.deps.stores.commands.readOutput(record.id, 0, Number.MAX_SAFE_INTEGER);
    return { ...record, ...joinStoredOutput(chunks, record, Math.floor(this.deps.config.outputCapPerStream / 2)) };
  }

  /**
   * Follows a command's combined output from `offset`: stored chunks first,
   * then live ones as they are stored, then `end`. A gap left by truncation
   * yields `skipped`. Memory stays bounded whatever the reader's speed: it
   * reads from the store at its own pace. Once the service stops, it throws
   * `ServiceStoppingError` carrying the offset the follower has received up
   * to (after the event it last took) instead of going on, and at once for
   * a follower that arrives while the service stops.
   */
  async *watch(id: string, offset: number, signal?: AbortSignal, follower?: FollowerPermit): AsyncGenerator<WatchEvent> {
    // A follower's place (refused with ResourceExhaustedError at the limit) until it stops.
    const permit = follower ?? this.deps.admission.admitFollower();
    try {
      yield* this.followOutput(id, offset, signal);
    } finally {
      permit.release();
    }
  }

  private async *followOutput(id: string, offset: number, signal?: AbortSignal): AsyncGenerator<WatchEvent> {
    const commands = this.deps.stores.commands;
    const stop = this.stopFollowers.signal;
    const wake = signal ? AbortSignal.any([signal, stop]) : stop;
    let record = await commands.get(id);
    if (!record) throw new NotFoundError("command", id, "id");
    let pos = Math.max(0, offset);
    // A follower that arrives while the service stops is told so at once.
    if (stop.aborted) throw new ServiceStoppingError(id, pos);
    for (;;) {
      if (signal?.aborted) return;
      const version = this.bus.version(id);
      const chunks = await commands.readOutput(id, pos, 256 * 1024);
      for (const c of chunks) {
        const end = c.offset + c.data.length;
        if (end <= pos) continue;
        if (c.offset > pos) {
          const from = pos;
          pos = c.offset;
          yield { kind: "skipped", offset: from, bytes: pos - from };
          if (stop.aborted) throw new ServiceStoppingError(id, pos);
        }
        const from = pos;
        pos = end;
        yield { kind: "output", stream: c.stream, offset: from, data: c.data.subarray(from - c.offset) };
        if (stop.aborted) throw new ServiceStoppingError(id, pos);
      }
      if (chunks.length > 0) continue;
      record = await commands.get(id);
      if (!record) return;
      if (isTerminal(record.status)) {
        if (pos < record.logBytes) {
          yield { kind: "skipped", offset: pos, bytes: record.logBytes - pos };
        }
        yield { kind: "end", command: await this.view(record) };
        return;
      }
      if (stop.aborted) throw new ServiceStoppingError(id, pos);
      await this.bus.waitChange(id, version, wake);
    }
  }

  /**
   * At start: re-attaches to commands a previous process left running, and
   * settles those that can no longer run. Resolves once every command has a
   * follower or a terminal state; following goes on in the background.
   */
  async recover(): Promise<{ reattached: number; settled: number }> {
    const active = await this.deps.stores.commands.listActive();
    let reattached = 0;
    let settled = 0;
    for (const record of active) {
      if (this.runs.has(record.id)) continue;
      const fake: Run = this.detachedRun(record);
      if (record.status === "running" && record.runner?.mode === "direct") {
        // Its caller is gone with the previous process, and it cannot be re-attached:
        // end it on the target (best effort) and record that its outcome is unknown.
        try {
          const machine = await this.resolveMachine(record.machineId);
          if (record.runner.pgid) {
            const target = this.targetOf(machine);
            await killGroup(this.transportFor(target), target, groupOf(record.runner), record.runner.user, this.deps.config.graceMs);
          }
        } catch {
          // unreachable or deleted: its target-side watchdog still ends it at its timeout
        }
        await this.finish(fake, "lost", { errorCode: "service_restarted", errorMessage: "the service restarted while the command's caller was waiting" });
        settled++;
        continue;
      }
      if (record.status === "queued" || !record.runner) {
        // Its env never reached the target and is not stored: it cannot start now.
        const status: CommandStatus = record.status === "queued" ? "failed" : "lost";
        await this.finish(fake, status, {
          errorCode: "service_restarted",
          errorMessage: "the service restarted before the command started on its target",
          startedAt: record.status === "queued" ? null : record.startedAt,
        });
        settled++;
        continue;
      }
      let machine: MachineRecord;
      try {
        machine = await this.resolveMachine(record.machineId);
      } catch {
        await this.finish(fake, "lost", { errorCode: "remote_state_lost", errorMessage: "the machine is no longer registered" });
        settled++;
        continue;
      }
      fake.target = this.targetOf(machine);
      fake.log = await OutputLog.restore(this.deps.stores.commands, record.id, record, this.logOptions(record.id));
      fake.remoteStarted = true;
      // It runs on its target already: a place among the active commands, never refused.
      const lease = this.deps.admission.forceCommands(1);
      fake.slot = lease.slot();
      lease.seal();
      fake.slot.started();
      const following = this.follow(fake, { kind: "disconnected", error: new TargetError("connection_lost", "the service restarted", record.machineId) });
      this.track(fake, following.then((end) => this.conclude(fake, end)), "connection_lost", "could not re-attach after a restart");
      reattached++;
    }
    return { reattached, settled };
  }

  /** A run for a record this process did not start (recovery); its target is set once resolved. */
  private detachedRun(record: CommandRecord): Run {
    const unknownTarget: MachineTarget = {
      id: record.machineId,
      host: "",
      port: 0,
      username: "",
      privateKey: null,
      passphrase: null,
      password: null,
      hostKeyFingerprint: null,
      hostKeyAlgorithm: null,
      hostKeyPolicy: null,
    };
    const run = newRun({ ...record }, unknownTarget, false);
    run.recovered = true;
    return run;
  }

  /**
   * Graceful stop. At once: refuse new commands and end every follower
   * (`ServiceStoppingError` with its resume offset). Then let commands whose
   * caller waits finish for up to `graceMs` (cut short by `opts.stopNow`),
   * cancel what is left and wait for it to end (briefly after `stopNow`); one
   * still without a terminal state is recorded `lost`. Detached commands keep
   * running on their targets and are re-attached by the next start.
   */
  async shutdown(graceMs: number, opts: ShutdownOptions = {}): Promise<void> {
    this.accepting = false;
    this.stopFollowers.abort();
    const now = opts.stopNow;
    const syncRuns = () => [...this.runs.values()].filter((r) => r.sync);
    if (syncRuns().length > 0 && graceMs > 0 && !now?.aborted) opts.onWaiting?.(syncRuns().length);
    const deadline = Date.now() + graceMs;
    while (syncRuns().length > 0 && Date.now() < deadline && !now?.aborted) {
      await Promise.race([Promise.all(syncRuns().map((r) => r.finished)), pause(deadline - Date.now(), now)]);
    }
    const left = syncRuns();
    if (left.length === 0) return;
    // Sent without waiting: an unreachable machine must not hold the stop.
    for (const r of left) this.requestCancel(r, SYSTEM_CALLER.name).catch(() => {});
    const ended = Promise.all(left.map((r) => r.finished));
    await Promise.race([ended, pause(this.deps.config.graceMs + 5_000, now)]);
    if (now?.aborted) await Promise.race([ended, pause(STOP_NOW_WAIT_MS)]);
    // Whatever sync command still has no terminal state is recorded honestly.
    for (const r of syncRuns()) {
      await this.finish(r, "lost", { errorCode: "service_restarted", errorMessage: "the service stopped before the command ended" }).catch(() => {});
    }
  }

  /**
   * Resolves once every run of this process has concluded, or after
   * `timeoutMs`, with the number still going. Once stopping and with the
   * transports closed, detached runs conclude quickly (output stored, left
   * for re-attach): wait for that before closing the store.
   */
  async settled(timeoutMs: number): Promise<number> {
    await Promise.race([Promise.all([...this.runs.values()].map((r) => r.finished)), pause(timeoutMs)]);
    return this.runs.size;
  }
}

/** Waits `ms` (at most; less when `signal` aborts). Never rejects, never keeps the process alive. */
function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return sleep(Math.max(0, ms), undefined, { ref: false, ...(signal ? { signal } : {}) }).catch(() => {});
}

/** The light path's process group as the kill script needs it. */
function groupOf(runner: RunnerState): { pgid: number; leaderStart: string | null } {
  return { pgid: runner.pgid ?? 0, leaderStart: runner.pgidStart ?? null };
}

function newRun(record: CommandRecord, target: MachineTarget, sync: boolean): Run {
  return {
    record,
    target,
    sync,
    remoteStarted: false,
    cancelRequested: false,
    finished: Promise.resolve(record),
    log: null,
    timedOut: false,
    killSent: false,
    slot: null,
  };
}

function toNotStarted(err: unknown): JobEnd {
  if (err instanceof TargetError) return { kind: "not_started", reason: err.reason, message: err.message };
  return { kind: "not_started", reason: "spawn_failed", message: String((err as Error)?.message ?? err) };
}
