/**
 * Drives the scripts of remote-script.ts over a Transport: start a job and
 * stream its output, re-attach to one, collect how it ended, cancel it.
 */
import type { Readable } from "node:stream";
import { TargetError, type TargetErrorReason } from "./errors.ts";
import { signalNumber } from "./signals.ts";
import type { ExitInfo, MachineTarget, OutputStreamName, RemoteProcess, Transport } from "./ports.ts";
import {
  SCRIPT_COMMAND_LINE,
  attachScript,
  cancelScript,
  cleanupScript,
  collectScript,
  directFastCommandLine,
  directFastScript,
  directScript,
  killGroupScript,
  newNonce,
  parseHeader,
  startScript,
  type Header,
  type StartSpec,
} from "./remote-script.ts";

/** Receives output in arrival order; awaiting it applies backpressure. */
export type OutputSink = (stream: OutputStreamName, data: Buffer) => Promise<void>;

export type JobEnd =
  /** The command ended; `waitStatus` as the shell reports it (128+n for signal n). */
  | { kind: "ended"; waitStatus: number; timedOut: boolean; cancelled: boolean }
  /** Nothing was started on the target. */
  | { kind: "not_started"; reason: TargetErrorReason; message: string }
  /** A job with this id already exists on the target (a start was retried): re-attach. */
  | { kind: "exists" }
  /** The job's directory is gone: its outcome cannot be known. */
  | { kind: "gone" }
  /** The supervisor died without recording a status. */
  | { kind: "dead" }
  /** The connection dropped while following; the job may still be running. */
  | { kind: "disconnected"; error: TargetError };

const MAX_NOISE = 64 * 1024;

/**
 * Strips what precedes the script's own marker line on one stream (login
 * banners and the like) and hands the header line to `onHeader`.
 */
class MarkerSplitter {
  private buffer: Buffer = Buffer.alloc(0);
  private found = false;
  noise = "";
  private readonly nonce: string;
  private readonly onHeader: (line: string) => void;

  constructor(nonce: string, onHeader: (line: string) => void) {
    this.nonce = nonce;
    this.onHeader = onHeader;
  }

  get seen(): boolean {
    return this.found;
  }

  /** Returns the bytes that follow the marker line (empty until it was seen). */
  push(data: Buffer): Buffer {
    if (this.found) return data;
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, data]) : data;
    let start = 0;
    for (;;) {
      const nl = this.buffer.indexOf(10, start);
      if (nl < 0) break;
      const line = this.buffer.subarray(start, nl).toString("utf8");
      start = nl + 1;
      if (line.startsWith(this.nonce)) {
        this.found = true;
        this.onHeader(line);
        const rest = this.buffer.subarray(start);
        this.buffer = Buffer.alloc(0);
        return rest;
      }
      if (this.noise.length < MAX_NOISE) this.noise += line + "\n";
    }
    this.buffer = this.buffer.subarray(start);
    if (this.buffer.length > MAX_NOISE) {
      this.noise += this.buffer.subarray(0, 200).toString("utf8");
      this.buffer = Buffer.alloc(0);
    }
    return Buffer.alloc(0);
  }

  /** What was on the stream when no marker came. */
  leftover(): string {
    return (this.noise + this.buffer.toString("utf8")).trim();
  }
}

async function pump(stream: Readable, splitter: MarkerSplitter, name: OutputStreamName, sink: OutputSink | null): Promise<void> {
  for await (const chunk of stream) {
    const data = splitter.push(chunk as Buffer);
    if (data.length > 0 && sink) await sink(name, data);
  }
}

interface ScriptRun {
  header: Header | null;
  /** How the channel ended; null when the connection dropped. */
  exit: ExitInfo | null;
  stderrText: string;
  /** Set when the connection dropped before the channel closed. */
  lost: TargetError | null;
}

/** Runs one script; streams what follows the markers to `sink`. */
async function runScript(
  transport: Transport,
  target: MachineTarget,
  nonce: string,
  script: string,
  sink: OutputSink | null,
  signal?: AbortSignal,
  onHeader?: (h: Header) => void,
  mark?: (stage: string) => void,
  commandLine: string = SCRIPT_COMMAND_LINE,
): Promise<ScriptRun> {
  let header: Header | null = null;
  const out = new MarkerSplitter(nonce, (line) => {
    mark?.("first_byte");
    header = parseHeader(nonce, line);
    if (header) onHeader?.(header);
  });
  const err = new MarkerSplitter(nonce, () => {});
  let proc: RemoteProcess;
  try {
    proc = await transport.exec(target, commandLine, { stdin: script, ...(signal ? { signal } : {}) });
  } catch (e) {
    if (e instanceof TargetError) throw e;
    throw new TargetError("spawn_failed", `could not start the job: ${(e as Error).message}`, target.id, { cause: e });
  }
  mark?.("channel_open");
  let lost: TargetError | null = null;
  let exit: ExitInfo | null = null;
  const pumps = Promise.all([pump(proc.stdout, out, "stdout", sink), pump(proc.stderr, err, "stderr", sink)]);
  try {
    [, exit] = await Promise.all([pumps, proc.done]);
    mark?.("exit");
  } catch (e) {
    proc.close();
    await pumps.catch(() => {});
    lost = e instanceof TargetError ? e : new TargetError("connection_lost", (e as Error).message, target.id, { cause: e });
  }
  return { header, exit, stderrText: err.leftover(), lost };
}

/** Reads how a job ended; removes it on the target once it has ended. */
export async function collectJob(transport: Transport, target: MachineTarget, jobDir: string): Promise<JobEnd> {
  const nonce = newNonce();
  const run = await runScript(transport, target, nonce, collectScript(nonce, jobDir), null);
  if (run.lost) return { kind: "disconnected", error: run.lost };
  const h = run.header as Header | null;
  if (!h) {
    return { kind: "disconnected", error: new TargetError("spawn_failed", run.stderrText || "no answer from the target", target.id) };
  }
  if (h.kind === "gone") return { kind: "gone" };
  if (h.kind !== "status") return { kind: "dead" };
  if (h.status === "dead") return { kind: "dead" };
  if (h.status === "running") {
    return { kind: "disconnected", error: new TargetError("connection_lost", "the job is still running", target.id) };
  }
  return { kind: "ended", waitStatus: h.status, timedOut: h.timedOut, cancelled: h.cancelled };
}

/**
 * Starts the job described by `spec` and follows it to its end. Resolves
 * with how it ended; `onStarted` runs once the job exists on the target.
 */
export async function runJob(
  transport: Transport,
  target: MachineTarget,
  spec: Omit<StartSpec, "nonce">,
  sink: OutputSink,
  onStarted: () => void,
  signal?: AbortSignal,
): Promise<JobEnd> {
  const nonce = newNonce();
  const run = await runScript(transport, target, nonce, startScript({ ...spec, nonce }), sink, signal, (h) => {
    if (h.kind === "started") onStarted();
  });
  const h = run.header as Header | null;
  if (!h) {
    // The script may have run before the connection dropped: re-attaching tells.
    if (run.lost) return { kind: "disconnected", error: run.lost };
    return { kind: "not_started", reason: "spawn_failed", message: run.stderrText || "the target did not run the start script" };
  }
  if (h.kind === "exists") return { kind: "exists" };
  if (h.kind === "error") {
    return { kind: "not_started", reason: h.reason as TargetErrorReason, message: run.stderrText };
  }
  if (run.lost) return { kind: "disconnected", error: run.lost };
  return collectJob(transport, target, spec.jobDir);
}

/** Follows an existing job from the given offsets to its end. */
export async function attachJob(
  transport: Transport,
  target: MachineTarget,
  jobDir: string,
  offsets: { stdout: number; stderr: number },
  sink: OutputSink,
  signal?: AbortSignal,
): Promise<JobEnd> {
  const nonce = newNonce();
  const script = attachScript({ nonce, jobDir, stdoutOffset: offsets.stdout, stderrOffset: offsets.stderr });
  const run = await runScript(transport, target, nonce, script, sink, signal);
  const h = run.header as Header | null;
  if (run.lost) return { kind: "disconnected", error: run.lost };
  if (!h) return { kind: "disconnected", error: new TargetError("spawn_failed", run.stderrText || "no answer from the target", target.id) };
  if (h.kind === "gone") return { kind: "gone" };
  return collectJob(transport, target, jobDir);
}

/**
 * The light path: runs the command with its output straight on the channel
 * while the caller waits. `onStarted` receives the command's process group.
 * On an SSH target without a run-as user the login shell execs straight into
 * the target-side `timeout` (see `directFastCommandLine`); otherwise a
 * script on `sh -s` checks the run-as user and cwd first.
 */
export async function runDirect(
  transport: Transport,
  target: MachineTarget,
  spec: Omit<StartSpec, "nonce" | "jobDir"> & { watchdogMs: number },
  sink: OutputSink,
  onStarted: (pgid: number | null, leaderStart: string | null) => void,
  mark?: (stage: string) => void,
): Promise<JobEnd> {
  const nonce = newNonce();
  const fast = !target.local && spec.user === null;
  const script = fast ? directFastScript({ ...spec, nonce }) : directScript({ ...spec, nonce });
  const commandLine = fast ? directFastCommandLine(spec) : SCRIPT_COMMAND_LINE;
  mark?.("script_built");
  const run = await runScript(
    transport,
    target,
    nonce,
    script,
    sink,
    undefined,
    (h) => {
      if (h.kind === "started") onStarted(h.pgid, h.leaderStart);
    },
    mark,
    commandLine,
  );
  const h = run.header as Header | null;
  if (h?.kind === "error") return { kind: "not_started", reason: h.reason as TargetErrorReason, message: run.stderrText };
  if (!h) {
    if (run.lost) return { kind: "disconnected", error: run.lost };
    return { kind: "not_started", reason: "spawn_failed", message: run.stderrText || "the target did not run the command script" };
  }
  // The script ends as the command's `timeout`, which dies of the signal that
  // killed the command: sshd then reports the signal instead of a status.
  const bySignal = run.exit?.signal ? signalNumber(run.exit.signal) : null;
  if (run.exit && run.exit.code === null && bySignal !== null) {
    return { kind: "ended", waitStatus: 128 + bySignal, timedOut: false, cancelled: false };
  }
  if (run.lost || !run.exit || run.exit.code === null) {
    return { kind: "disconnected", error: run.lost ?? new TargetError("connection_lost", "the channel closed without an exit status", target.id) };
  }
  return { kind: "ended", waitStatus: run.exit.code, timedOut: false, cancelled: false };
}

/** SIGTERM to a process group by id, SIGKILL after `graceMs` (the light path's cancel and timeout). */
export async function killGroup(
  transport: Transport,
  target: MachineTarget,
  group: { pgid: number; leaderStart: string | null },
  user: string | null,
  graceMs: number,
): Promise<"sent" | "gone"> {
  const nonce = newNonce();
  const run = await runScript(transport, target, nonce, killGroupScript(nonce, group.pgid, group.leaderStart, user, graceMs), null);
  if (run.lost) throw run.lost;
  const h = run.header as Header | null;
  return h?.kind === "sent" ? "sent" : "gone";
}

/** Removes an ended job from its target. */
export async function cleanupJob(transport: Transport, target: MachineTarget, jobDir: string): Promise<void> {
  const nonce = newNonce();
  await runScript(transport, target, nonce, cleanupScript(nonce, jobDir), null);
}

/** Sends SIGTERM to the job's process group (SIGKILL follows after `graceMs`). */
export async function cancelJob(
  transport: Transport,
  target: MachineTarget,
  jobDir: string,
  user: string | null,
  graceMs: number,
): Promise<"sent" | "done" | "gone"> {
  const nonce = newNonce();
  const run = await runScript(transport, target, nonce, cancelScript(nonce, jobDir, user, graceMs), null);
  if (run.lost) throw run.lost;
  const h = run.header as Header | null;
  if (!h) throw new TargetError("spawn_failed", run.stderrText || "no answer from the target", target.id);
  if (h.kind === "sent" || h.kind === "done") return h.kind;
  return "gone";
}
