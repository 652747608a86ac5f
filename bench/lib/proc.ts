/**
 * Child processes with a deadline, their CPU time, and CPU accounting of
 * processes and the whole machine from /proc.
 */
import { spawn } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { now } from "./stats.ts";

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  wallMs: number;
  /** User + system CPU of the command and all its waited-for descendants, ms. */
  cpuMs: number | null;
  timedOut: boolean;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  timeoutMs: number;
  /** Keep at most this many characters of stdout/stderr. @default 4 MiB */
  maxOutput?: number;
}

const SH_TIMES = '"$@"; rc=$?; times >&3; exit $rc';

/**
 * Runs argv through `/bin/sh` (which reports its children's CPU time via
 * `times` on fd 3), kills the process group when `timeoutMs` passes.
 */
export function run(argv: readonly string[], opts: RunOptions): Promise<RunResult> {
  const max = opts.maxOutput ?? 4 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    const t0 = now();
    const child = spawn("/bin/sh", ["-c", SH_TIMES, "sh", ...argv], {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: ["ignore", "pipe", "pipe", "pipe"],
      detached: true,
    });
    let stdout = "";
    let stderr = "";
    let times = "";
    let timedOut = false;
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      if (stdout.length < max) stdout += d;
    });
    child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      if (stderr.length < max) stderr += d;
    });
    const fd3 = child.stdio[3];
    if (fd3 && "setEncoding" in fd3) {
      (fd3 as NodeJS.ReadableStream).setEncoding("utf8");
      (fd3 as NodeJS.ReadableStream).on("data", (d: string) => (times += d));
    }
    const killGroup = (sig: NodeJS.Signals) => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, sig);
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup("SIGTERM");
      setTimeout(() => killGroup("SIGKILL"), 2000).unref();
    }, opts.timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, wallMs: now() - t0, cpuMs: parseTimes(times), timedOut });
    });
  });
}

/** The children line of `times` ("0m1.230000s 0m0.450000s") in ms. */
function parseTimes(text: string): number | null {
  const lines = text.trim().split("\n");
  const last = lines[1];
  if (last === undefined) return null;
  let total = 0;
  for (const m of last.matchAll(/(\d+)m([\d.]+)s/g)) total += Number(m[1]) * 60_000 + Number(m[2]) * 1000;
  return total;
}

const TICK_MS = 10; // CLK_TCK is 100 on Linux

/** User + system CPU of one live process, ms; null when it is gone. */
export function processCpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (Number(fields[11]) + Number(fields[12])) * TICK_MS;
  } catch {
    return null;
  }
}

/** Busy CPU time of the whole machine (all cores, excluding idle and iowait), ms. */
export function machineBusyMs(): number {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = v;
  return (user + nice + system + irq + softirq + steal) * TICK_MS;
}

/** Pids whose command line contains `marker`, and all their direct children. */
export function listenerChildren(marker: string): number[] {
  const parents = new Set<number>();
  const ppidOf = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    try {
      const cmdline = readFileSync(`/proc/${name}/cmdline`, "utf8");
      if (cmdline.includes(marker)) parents.add(pid);
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      ppidOf.set(pid, Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  for (const [pid, ppid] of ppidOf) if (parents.has(ppid)) out.push(pid);
  return out;
}
