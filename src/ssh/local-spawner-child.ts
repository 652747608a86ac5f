/**
 * The local machine's spawner: a small long-lived Node process that starts
 * `/bin/sh -c <command>` for the service, so that the service's own (large)
 * process never forks. Node's spawn forks the calling process on its main
 * thread; from a process of several hundred MB that blocks the event loop
 * for a long time on every spawn.
 *
 * For each request it spawns the shell with three pipes and hands the pipes'
 * sockets to the service over the IPC channel (SCM_RIGHTS): output flows
 * from the process straight to the service, nothing is relayed here. Then it
 * reports the exit code or signal.
 *
 * It lives as long as its IPC channel: when the service exits, closes the
 * channel or is killed (even with SIGKILL), the channel reaches end-of-file
 * and the spawner exits (within half a second). It ignores SIGINT, SIGTERM and SIGHUP, which a
 * terminal or a service manager sends to the whole process group, so that a
 * service still shutting down gracefully keeps its spawner. The processes it
 * started are not killed when it exits (as before, when the service spawned
 * them itself). Started by `local-transport.ts`; not meant to be run by hand.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import type { Socket } from "node:net";
import type { SpawnRequest, SpawnerReply } from "./local-spawner-protocol.ts";

if (!process.send) {
  process.stderr.write("local-spawner-child: must be started with an IPC channel\n");
  process.exit(2);
}

const reply = (msg: SpawnerReply, handle?: Socket): void => {
  // After the channel closed there is nobody to tell: the process exits below.
  process.send?.(msg, handle, {}, () => {});
};

/**
 * The socket Node created for one of the child's pipes stops reading.
 * Node starts reading a pipe as soon as it wraps it; until the service
 * acknowledges the handed-over socket, bytes read here would be lost (100 of
 * 100 concurrent processes lost output without this). No public API stops
 * the read, hence the internal handle; false when it is missing.
 */
function stopReading(socket: Socket | null): boolean {
  const handle = (socket as unknown as { _handle?: { readStop?: () => number } } | null)?._handle;
  if (typeof handle?.readStop !== "function") return false;
  handle.readStop();
  return true;
}

function start(req: SpawnRequest): void {
  let child: ChildProcess;
  try {
    child = spawn("/bin/sh", ["-c", req.command], { cwd: req.cwd, env: req.env, stdio: ["pipe", "pipe", "pipe"] });
  } catch (err) {
    reply({ t: "failed", id: req.id, message: (err as Error).message });
    return;
  }
  const pipes = [child.stdin, child.stdout, child.stderr] as (Socket | null)[];
  if (child.pid === undefined) {
    // Node reports the failure on the next tick (EAGAIN, EMFILE, ENOENT…).
    for (const p of pipes) p?.destroy();
    child.once("error", (err) => reply({ t: "failed", id: req.id, message: err.message }));
    return;
  }
  child.on("error", () => {
    // After a successful spawn only kill() reports errors; nothing is killed here.
  });
  if (!pipes.every(stopReading)) {
    child.kill("SIGKILL");
    for (const p of pipes) p?.destroy();
    reply({ t: "failed", id: req.id, message: "this Node cannot hand over pipes safely (no readStop on the pipe handle)" });
    return;
  }
  // Handles go out one at a time (each waits for the service's ack), so a
  // quick process may exit while its pipes still wait here. On exit Node
  // destroys the child's stdin and resumes its stdout and stderr (which would
  // read them here); the pipes are ours now, so the child object lets go.
  Object.assign(child, { stdin: null, stdout: null, stderr: null, stdio: [null, null, null] });
  // Node keeps later messages behind queued handles: `exit` always comes last.
  pipes.forEach((socket, fd) => reply({ t: "pipe", id: req.id, fd: fd as 0 | 1 | 2 }, socket!));
  child.once("exit", (code, signal) => reply({ t: "exit", id: req.id, code, signal }));
}

for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, () => {});
process.on("disconnect", () => process.exit(0));
// The channel's end-of-file emits `disconnect` only once no handle waits for
// an ack, and a service that is gone acks nothing: check the channel (and the
// parent, which is gone after kill -9) on a timer as well.
const parent = process.ppid;
setInterval(() => {
  if (!process.connected || process.ppid !== parent) process.exit(0);
}, 500).unref();
// One spawn per turn of the event loop: a spawn blocks this process until
// the shell has started, and the acks that let earlier processes' pipes go
// out must not wait behind every request that arrived at once.
const queue: SpawnRequest[] = [];
const next = (): void => {
  const req = queue.shift();
  if (req) start(req);
  if (queue.length > 0) setImmediate(next);
};
process.on("message", (msg: SpawnRequest) => {
  if (msg?.t !== "spawn") return;
  queue.push(msg);
  if (queue.length === 1) setImmediate(next);
});
