/**
 * The `Transport` port for the built-in local machine: processes run on the
 * service's own host through `/bin/sh -c`, without SSH.
 *
 * As with the SSH transport, callers must read both `stdout` and `stderr`;
 * `done` settles once the process exited and both pipes closed.
 */
import { spawn } from "node:child_process";
import os from "node:os";
import type { ChildProcessByStdio } from "node:child_process";
import type { Readable, Writable } from "node:stream";
import { TargetError } from "../exec/errors.ts";
import type { ExecOptions, ExitInfo, MachineTarget, ProbeResult, RemoteProcess, Transport } from "../exec/ports.ts";

export function createLocalTransport(): Transport {
  const live = new Set<ChildProcessByStdio<Writable, Readable, Readable>>();
  let closed = false;

  const exec = (target: MachineTarget, commandLine: string, options: ExecOptions = {}): Promise<RemoteProcess> => {
    if (closed) return Promise.reject(new TargetError("unreachable", "transport closed", target.id));
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    return new Promise((resolve, reject) => {
      let child: ChildProcessByStdio<Writable, Readable, Readable>;
      try {
        // In the home directory, as sshd starts a session: `cwd` defaults to it and a relative one starts there.
        child = spawn("/bin/sh", ["-c", commandLine], { cwd: os.homedir(), detached: false, stdio: ["pipe", "pipe", "pipe"] });
      } catch (err) {
        reject(new TargetError("spawn_failed", `cannot start /bin/sh: ${(err as Error).message}`, target.id, { cause: err }));
        return;
      }
      let started = false;
      const done = new Promise<ExitInfo>((resolveDone, rejectDone) => {
        child.once("close", (code, signal) => {
          live.delete(child);
          options.signal?.removeEventListener("abort", onAbort);
          // Node reports a signal as `SIGTERM`; the port wants `TERM`.
          resolveDone({ code, signal: signal === null ? null : signal.replace(/^SIG/, "") });
        });
        child.once("error", (err) => {
          if (!started) return; // reported through exec's rejection below
          rejectDone(new TargetError("spawn_failed", `local process failed: ${err.message}`, target.id, { cause: err }));
        });
      });
      done.catch(() => {});

      // Closing the "channel": the pipes go away, the process is not killed
      // (like closing an SSH channel).
      const closePipes = (): void => {
        child.stdin.destroy();
        child.stdout.destroy();
        child.stderr.destroy();
      };
      const onAbort = (): void => closePipes();

      child.once("spawn", () => {
        started = true;
        live.add(child);
        // The process may exit before reading its stdin: ignore EPIPE.
        child.stdin.on("error", () => {});
        child.stdout.on("error", () => {});
        child.stderr.on("error", () => {});
        if (options.stdin !== undefined) child.stdin.end(options.stdin);
        else child.stdin.end();
        options.signal?.addEventListener("abort", onAbort, { once: true });
        resolve({ stdout: child.stdout, stderr: child.stderr, done, close: closePipes });
      });
      child.once("error", (err) => {
        if (started) return;
        reject(new TargetError("spawn_failed", `cannot start /bin/sh: ${err.message}`, target.id, { cause: err }));
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
      return { connections: 0, channels: live.size };
    },
    async close() {
      closed = true;
    },
  };
}
