/**
 * Event-loop delay while 100 commands run at once on the built-in local
 * machine, from a process that holds about 300 MB of heap (a busy service):
 * the local transport as it is (spawns in a spawner process) against a
 * direct `child_process.spawn` from the process itself (how it was before).
 *
 *   node bench/local-spawn.ts                 both, BENCH_LOCAL_ROUNDS rounds (2), interleaved
 *   node bench/local-spawn.ts --mode=direct   one measurement, printed as JSON (used by the above)
 *
 * Each command is three execs in a row, as a detached command costs on the
 * local machine (start, collect, cleanup): `sh -c 'echo …'`. Not part of
 * `npm run bench`; see bench/README.md for figures.
 */
import { spawn } from "node:child_process";
import type { ChildProcessByStdio } from "node:child_process";
import type { Readable, Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { monitorEventLoopDelay } from "node:perf_hooks";
import type { MachineTarget, RemoteProcess } from "../src/exec/ports.ts";
import { createLocalTransport } from "../src/ssh/local-transport.ts";

type Mode = "direct" | "spawner";
const COMMANDS = 100;
const EXECS_PER_COMMAND = 3;
const HEAP_MB = 300;

interface Result {
  mode: Mode;
  heapMB: number;
  rssMB: number;
  wallMs: number;
  maxDelayMs: number;
  p99DelayMs: number;
  meanDelayMs: number;
  /** Time the loop spent in stalls longer than 100 ms. */
  stalledMs: number;
}

const local: MachineTarget = {
  id: "mach_local",
  host: "localhost",
  port: 0,
  username: "",
  privateKey: null,
  passphrase: null,
  password: null,
  hostKeyFingerprint: null,
  hostKeyAlgorithm: null,
  hostKeyPolicy: null,
  local: true,
};

/** The previous implementation, reduced to what the measurement needs. */
function directExec(commandLine: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child: ChildProcessByStdio<Writable, Readable, Readable> = spawn("/bin/sh", ["-c", commandLine], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.resume();
    child.stdin.on("error", () => {});
    child.stdin.end();
    child.once("error", reject);
    child.once("close", () => resolve(out));
  });
}

async function viaTransport(exec: (cmd: string) => Promise<RemoteProcess>, commandLine: string): Promise<string> {
  const proc = await exec(commandLine);
  let out = "";
  proc.stdout.on("data", (d: Buffer) => (out += d.toString()));
  proc.stderr.resume();
  await proc.done;
  return out;
}

async function measure(mode: Mode): Promise<Result> {
  // A heap of small objects, like a service's caches and ORM identity maps.
  const hold: { i: number; s: string; a: number[] }[] = [];
  while (process.memoryUsage().heapUsed < HEAP_MB * 1024 * 1024) {
    for (let i = 0; i < 10_000; i++) hold.push({ i, s: `value-${i}-${hold.length}`, a: [i, i + 1, i + 2] });
  }
  const transport = createLocalTransport();
  const exec = mode === "direct" ? directExec : (cmd: string) => viaTransport((c) => transport.exec(local, c), cmd);

  let stalledMs = 0;
  let last = performance.now();
  const ticker = setInterval(() => {
    const now = performance.now();
    const gap = now - last - 10;
    if (gap > 100) stalledMs += gap;
    last = now;
  }, 10);
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  const t0 = performance.now();
  const outputs = await Promise.all(
    Array.from({ length: COMMANDS }, async (_, i) => {
      let out = "";
      for (let k = 0; k < EXECS_PER_COMMAND; k++) out += await exec(`echo ${i}-${k}`);
      return out;
    }),
  );
  const wallMs = performance.now() - t0;
  h.disable();
  clearInterval(ticker);
  outputs.forEach((out, i) => {
    if (out !== `${i}-0\n${i}-1\n${i}-2\n`) throw new Error(`wrong output of command ${i}: ${JSON.stringify(out)}`);
  });
  await transport.close();
  const mem = process.memoryUsage();
  const result: Result = {
    mode,
    heapMB: Math.round(mem.heapUsed / 1e6),
    rssMB: Math.round(mem.rss / 1e6),
    wallMs: Math.round(wallMs),
    maxDelayMs: Math.round(h.max / 1e6),
    p99DelayMs: Math.round(h.percentile(99) / 1e6),
    meanDelayMs: Math.round(h.mean / 1e6),
    stalledMs: Math.round(stalledMs),
  };
  hold.length = 0;
  return result;
}

function runChild(mode: Mode): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--max-old-space-size=2048", fileURLToPath(import.meta.url), `--mode=${mode}`], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve(JSON.parse(out) as Result) : reject(new Error(`${mode} run exited with ${code}`))));
  });
}

const modeArg = process.argv.find((a) => a.startsWith("--mode="))?.slice("--mode=".length);
if (modeArg === "direct" || modeArg === "spawner") {
  process.stdout.write(JSON.stringify(await measure(modeArg)));
} else {
  const rounds = Number(process.env.BENCH_LOCAL_ROUNDS ?? 2);
  const results: Result[] = [];
  for (let r = 0; r < rounds; r++) {
    for (const mode of ["direct", "spawner"] as const) {
      const res = await runChild(mode);
      results.push(res);
      process.stderr.write(`${JSON.stringify(res)}\n`);
    }
  }
  console.log(`${COMMANDS} commands x ${EXECS_PER_COMMAND} execs at once, ~${HEAP_MB} MB heap, load ${(await import("node:os")).loadavg().map((l) => l.toFixed(1)).join(" ")}`);
  console.log("| mode | heap MB | RSS MB | wall ms | max loop delay ms | p99 ms | mean ms | stalled >100 ms, total ms |");
  console.log("|---|---|---|---|---|---|---|---|");
  for (const r of results) {
    console.log(`| ${r.mode} | ${r.heapMB} | ${r.rssMB} | ${r.wallMs} | ${r.maxDelayMs} | ${r.p99DelayMs} | ${r.meanDelayMs} | ${r.stalledMs} |`);
  }
}
