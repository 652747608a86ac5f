/**
 * The `Transport` port for the built-in local machine: processes run on the
 * service's own host through `/bin/sh -c`, without SSH.
 *
 * The service never forks: Node's spawn forks the calling process on its
 * main thread, and from a service of a few hundred MB each spawn blocks the
 * event loop for a long time. Processes are started by a small spawner
 * process (`local-spawner-child.ts`), started on the first exec and again on
 * the next exec after it died. It hands each process's stdin, stdout and
 * stderr pipes over the IPC channel, so output flows straight from the
 * process to the service, then reports how the process ended. It exits when
 * the service does (even after kill -9), without killing what it started.
 *
 * As with the SSH transport, callers must read both `stdout` and `stderr`;
 * `done` settles once the process exited and both pipes closed. When the
 * spawner dies (or the transport closes) first, the pipes close and `done`
 * rejects with `connection_lost`, as an SSH channel does when its connection
 * drops; the processes themselves are not killed.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import os from "node:os";
import type { Socket } from "node:net";
import { fileURLToPath } from "node:url";
import { TargetError } from "../exec/errors.ts";
import type { ExecOptions, ExitInfo, MachineTarget, ProbeResult, RemoteProcess, Transport } from "../exec/ports.ts";
import type { SpawnRequest, SpawnerReply } from "./local-spawner-protocol.ts";

const SPAWNER_SCRIPT = fileURLToPath(new URL("./local-spawner-child.ts", import.meta.url));
/** The spawner holds a few messages at a time: a small heap is plenty. */
const SPAWNER_NODE_FLAGS = ["--max-old-space-size=32", "--max-semi-space-size=1"];
/** How long close() waits for the spawner to exit on its own before SIGKILL. */
const SPAWNER_EXIT_WAIT_MS = 2_000;

/** One process, from the spawn request until `done` settled. */
interface LocalProc {
  id: number;
  target: MachineTarget;
  options: ExecOptions;
  /** `starting`: pipes not all received; `running`: handed to the caller; `abandoned`: aborted while starting. */
  phase: "starting" | "running" | "abandoned";
  pipes: [Socket | null, Socket | null, Socket | null];
  exit: ExitInfo | null;
  done: Promise<ExitInfo>;
  /** stdout and stderr not yet closed. */
  openStreams: number;
  resolveExec(proc: RemoteProcess): void;
  rejectExec(err: unknown): void;
  resolveDone(info: ExitInfo): void;
  rejectDone(err: unknown): void;
  onAbort(): void;
}

interface Spawner {
  child: ChildProcess;
  procs: Map<number, LocalProc>;
  exited: Promise<void>;
  gone: boolean;
}

type SpawnerState = { kind: "none" } | { kind: "up"; spawner: Spawner } | { kind: "closed" };

export function createLocalTransport(): Transport {
  let state: SpawnerState = { kind: "none" };
  let nextId = 1;
  let running = 0;

  // While processes are in flight the channel keeps the service alive (their
  // exit status is still to come); otherwise the spawner never does.
  const refresh = (sp: Spawner): void => {
    if (sp.gone) return;
    if (sp.procs.size > 0) sp.child.channel?.ref();
    else sp.child.channel?.unref();
  };

  const closePipes = (proc: LocalProc): void => {
    for (const p of proc.pipes) p?.destroy();
  };

  const forget = (sp: Spawner, proc: LocalProc): void => {
    sp.procs.delete(proc.id);
    proc.options.signal?.removeEventListener("abort", proc.onAbort);
    if (proc.phase === "running") running--;
    refresh(sp);
  };

  const maybeSettle = (sp: Spawner, proc: LocalProc): void => {
    if (proc.exit === null) return;
    if (proc.phase === "abandoned") forget(sp, proc);
    else if (proc.phase === "running" && proc.openStreams === 0) {
      forget(sp, proc);
      proc.resolveDone(proc.exit);
    }
  };

  const started = (sp: Spawner, proc: LocalProc): void => {
    const [stdin, stdout, stderr] = proc.pipes as [Socket, Socket, Socket];
    if (proc.options.signal?.aborted) {
      proc.phase = "abandoned";
      closePipes(proc);
      proc.rejectExec(proc.options.signal.reason);
      maybeSettle(sp, proc);
      return;
    }
    proc.phase = "running";
    running++;
    // The handed-over stdin is a full socket: once written and closed, let go of it.
    stdin.end(proc.options.stdin ?? "", () => stdin.destroy());
    proc.resolveExec({ stdout, stderr, done: proc.done, close: () => closePipes(proc) });
    maybeSettle(sp, proc);
  };

  const onReply = (sp: Spawner, msg: SpawnerReply, handle: unknown): void => {
    const proc = sp.procs.get(msg.id);
    if (!proc) {
      (handle as Socket | undefined)?.destroy();
      return;
    }
    switch (msg.t) {
      case "pipe": {
        const socket = handle as Socket;
        // The process may exit before reading its stdin (EPIPE); read errors end the stream.
        socket.on("error", () => {});
        // A quick process's output pipe may reach end-of-file and close
        // before its other pipes arrive: count from now on.
        if (msg.fd > 0) {
          socket.once("close", () => {
            proc.openStreams--;
            maybeSettle(sp, proc);
          });
        }
        proc.pipes[msg.fd] = socket;
        if (proc.phase === "starting" && proc.pipes.every((p) => p !== null)) started(sp, proc);
        return;
      }
      case "exit":
        // Node reports a signal as `SIGTERM`; the port wants `TERM`.
        proc.exit = { code: msg.code, signal: msg.signal === null ? null : msg.signal.replace(/^SIG/, "") };
        maybeSettle(sp, proc);
        return;
      case "failed":
        closePipes(proc);
        forget(sp, proc);
        proc.rejectExec(new TargetError("spawn_failed", `cannot start /bin/sh: ${msg.message}`, proc.target.id));
        return;
    }
  };

  // The spawner exited, was killed or lost its channel: what it started can
  // no longer report. The next exec starts a new one.
  const spawnerGone = (sp: Spawner, why: string): void => {
    if (sp.gone) return;
    sp.gone = true;
    if (state.kind === "up" && state.spawner === sp) state = { kind: "none" };
    for (const proc of [...sp.procs.values()]) {
      const phase = proc.phase;
      closePipes(proc);
      forget(sp, proc);
      if (phase === "starting") {
        proc.rejectExec(new TargetError("spawn_failed", `cannot start /bin/sh: ${why}`, proc.target.id));
      } else if (phase === "running") {
        proc.rejectDone(new TargetError("connection_lost", `local process lost: ${why}`, proc.target.id));
      }
    }
  };

  const startSpawner = (): Spawner => {
    // The one fork of the service, once per spawner. The spawner gets no
    // environment of its own: each request carries the one for its process.
    const child = spawn(process.execPath, [...SPAWNER_NODE_FLAGS, SPAWNER_SCRIPT], {
      stdio: ["ignore", "ignore", "inherit", "ipc"],
      env: {},
      serialization: "json",
    });
    const sp: Spawner = {
      child,
      procs: new Map(),
      exited: new Promise((resolve) => {
        // Not `close`: after the service disconnects, Node never emits it.
        child.once("exit", () => resolve());
        // A spawner that never started emits no `exit`.
        child.once("error", () => child.pid === undefined && resolve());
      }),
      gone: false,
    };
    child.on("message", (msg: SpawnerReply, handle: unknown) => onReply(sp, msg, handle));
    child.once("exit", (code, signal) => spawnerGone(sp, `the local spawner exited (${signal ?? `code ${code}`})`));
    child.once("disconnect", () => spawnerGone(sp, "the local spawner closed its channel"));
    child.on("error", (err) => spawnerGone(sp, `the local spawner failed: ${err.message}`));
    child.unref();
    refresh(sp);
    return sp;
  };

  const exec = (target: MachineTarget, commandLine: string, options: ExecOptions = {}): Promise<RemoteProcess> => {
    if (state.kind === "closed") return Promise.reject(new TargetError("unreachable", "transport closed", target.id));
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    if (state.kind === "none") {
      try {
        state = { kind: "up", spawner: startSpawner() };
      } catch (err) {
        return Promise.reject(
          new TargetError("spawn_failed", `cannot start the local spawner: ${(err as Error).message}`, target.id, { cause: err }),
        );
      }
    }
    const sp = state.spawner;
    return new Promise<RemoteProcess>((resolveExec, rejectExec) => {
      let resolveDone!: (info: ExitInfo) => void;
      let rejectDone!: (err: unknown) => void;
      const done = new Promise<ExitInfo>((resolve, reject) => {
        resolveDone = resolve;
        rejectDone = reject;
      });
      // Callers that only watch the streams must not see an unhandled rejection.
      done.catch(() => {});
      const proc: LocalProc = {
        id: nextId++,
        target,
        options,
        phase: "starting",
        pipes: [null, null, null],
        exit: null,
        done,
        openStreams: 2,
        resolveExec,
        rejectExec,
        resolveDone: (info) => resolveDone(info),
        rejectDone: (err) => rejectDone(err),
        // Closing the "channel": the pipes go away, the process is not killed
        // (like closing an SSH channel). While starting, `started` checks.
        onAbort: () => {
          if (proc.phase === "running") closePipes(proc);
        },
      };
      sp.procs.set(proc.id, proc);
      refresh(sp);
      options.signal?.addEventListener("abort", proc.onAbort, { once: true });
      const env: Record<string, string> = {};
      for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
      // In the home directory, as sshd starts a session: `cwd` defaults to it and a relative one starts there.
      const req: SpawnRequest = { t: "spawn", id: proc.id, command: commandLine, cwd: os.homedir(), env };
      sp.child.send(req, (err) => {
        if (err) spawnerGone(sp, `the local spawner is gone: ${err.message}`);
      });
    });
  };

  return {
    exec,
    async probe(target) {
      const started = performance.now();
      const proc = await exec(target, "true");
      proc.stdout.resume();
      proc.stderr.resume();
      await proc.done;
      const result: ProbeResult = { latencyMs: performance.now() - started, hostKeyFingerprint: null, hostKeyAlgorithm: null };
      return result;
    },
    forget() {},
    stats() {
      return { connections: 0, channels: running };
    },
    async close() {
      const prev = state;
      state = { kind: "closed" };
      if (prev.kind !== "up") return;
      const sp = prev.spawner;
      spawnerGone(sp, "transport closed");
      // Until it has exited, the spawner keeps the caller of close() alive.
      sp.child.ref();
      // Closing the channel is the spawner's signal to exit.
      if (sp.child.connected) sp.child.disconnect();
      const timer = setTimeout(() => sp.child.kill("SIGKILL"), SPAWNER_EXIT_WAIT_MS);
      await sp.exited;
      clearTimeout(timer);
    },
  };
}
