/**
 * `npm run bench`: fleetrun side by side with bare ssh2, parallel-ssh,
 * Ansible and OpenSSH on one loopback fleet of real sshd processes, plus
 * sequential latency, throughput and history paging. See bench/README.md.
 *
 * Environment: BENCH_MACHINES (200; 10 with only latency/throughput named),
 * BENCH_RUNS (3), BENCH_THROUGHPUT_ROUNDS (3), BENCH_USER (root;
 * or frtest), BENCH_SKIP (comma list of: login, fanout, warm, latency, throughput, history,
 * history-sqlite, history-postgres, fleetrun, ssh2, pssh, openssh,
 * openssh-curve, ansible, load, load-detached, load-attached),
 * BENCH_HISTORY_ROWS (1000000), BENCH_PROFILE=1 (CPU profile of one extra cold
 * fleetrun run).
 *
 * Arguments: section names to run only those (login, fanout, warm, latency,
 * throughput, history, load); `--quick` for the load section's smaller variant;
 * `--profile` = BENCH_PROFILE=1, and for `load` a profiled run instead of the
 * load scenarios. `npm run bench -- load --profile` profiles the service
 * under 100 detached commands with output on 10 machines.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { startSshFleet } from "../test/fixtures/sshd.ts";
import { installSignalHandlers, onCleanup, runCleanups } from "./lib/cleanup.ts";
import { formatSection } from "./lib/report.ts";
import { ROOT } from "./lib/service.ts";
import { ensureTools, versionOf, writeToolFiles } from "./lib/tools.ts";
import type { SectionResult } from "./lib/types.ts";
import { runFanout } from "./sections/fanout.ts";
import { runHistory } from "./sections/history.ts";
import { runLatency } from "./sections/latency.ts";
import { machinesNeeded, runLoad } from "./sections/load.ts";
import { runLoginShell } from "./sections/login-shell.ts";
import { runThroughput } from "./sections/throughput.ts";
import { runWarmFloor } from "./sections/warm-floor.ts";

const TOKEN = "bench-admin-token-0123456789abcdef";

function intEnv(name: string, def: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === "") return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be an integer from ${min} to ${max}, got ${raw}`);
  return n;
}

function log(line: string): void {
  process.stderr.write(line + "\n");
}

const SECTIONS = ["login", "fanout", "warm", "latency", "throughput", "history", "load"];

async function main(): Promise<void> {
  installSignalHandlers();
  const args = process.argv.slice(2);
  for (const a of args) {
    if (a.startsWith("-") ? a !== "--quick" && a !== "--profile" : !SECTIONS.includes(a)) {
      throw new Error(`unknown argument ${a}: give section names (${SECTIONS.join(", ")}), --quick or --profile`);
    }
  }
  const only = args.filter((a) => !a.startsWith("-"));
  const quick = args.includes("--quick");
  const skip = new Set((process.env.BENCH_SKIP ?? "").split(",").map((s) => s.trim()).filter(Boolean));
  const enabled = (name: string) => !skip.has(name) && (only.length === 0 || !SECTIONS.includes(name) || only.includes(name));
  const profile = process.env.BENCH_PROFILE === "1" || args.includes("--profile");
  const loadMode = profile ? "profile" : quick ? "quick" : "full";
  const onlyLoad = only.length > 0 && only.every((s) => s === "load");
  const onlySmall = only.length > 0 && only.every((s) => s === "latency" || s === "throughput");
  const machines = intEnv("BENCH_MACHINES", onlyLoad ? machinesNeeded(loadMode) : onlySmall ? 10 : 200, 1, 240);
  const runs = intEnv("BENCH_RUNS", 3, 1, 50);
  const historyRows = intEnv("BENCH_HISTORY_ROWS", 1_000_000, 1_000, 20_000_000);
  const user = process.env.BENCH_USER ?? "root";
  if (user !== "frtest" && user !== "root") throw new Error(`BENCH_USER must be frtest or root (the fleet authorizes its key for those), got ${user}`);

  const work = mkdtempSync(path.join(os.tmpdir(), "fleetrun-bench-"));
  onCleanup("bench temp dir", () => rmSync(work, { recursive: true, force: true }));
  const resultsDir = path.join(ROOT, "bench/results");
  mkdirSync(resultsDir, { recursive: true });

  const installed = enabled("fanout") ? ensureTools(log) : [];
  const env = {
    date: new Date().toISOString(),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? "",
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    loadAverageAtStart: os.loadavg(),
    node: process.version,
    openssh: versionOf(["ssh", "-V"]),
    parallelSsh: versionOf(["parallel-ssh", "--version"]),
    ansible: versionOf(["ansible", "--version"]),
    installedByBench: installed,
  };
  log(`fleetrun bench: ${machines} machines as ${user}, ${runs} runs, ${env.cpus} CPUs, Node ${env.node}, ${env.openssh}`);

  const sections: { key: string; result: SectionResult; baseline?: string }[] = [];
  const needFleet = ["login", "fanout", "warm", "latency", "throughput", "load"].some(enabled);
  if (enabled("load") && machines < machinesNeeded(loadMode)) throw new Error(`the load section needs ${machinesNeeded(loadMode)} machines; BENCH_MACHINES is ${machines}`);
  // The fleet is only needed by the first two sections; history runs after it is stopped.
  if (needFleet) {
    log(`starting ${machines} loopback sshd machines…`);
    const fleet = await startSshFleet({ count: machines, maxStartups: "1000:30:2000", maxSessions: 64 });
    const stopFleet = onCleanup("ssh fleet", () => fleet.stop());
    log(`fleet up: ${fleet.addresses[0]} … ${fleet.addresses.at(-1)} port ${fleet.port}`);
    const files = writeToolFiles(work, fleet, user);

    if (enabled("login")) {
      log("target check: SSH session cost per login user…");
      const result = await runLoginShell({ fleet, users: ["frtest", "root"], benchUser: user, log });
      sections.push({ key: "login", result });
      process.stdout.write(formatSection(result) + "\n");
    }

    if (enabled("fanout")) {
      const profileDir = profile ? path.join(resultsDir, "profiles") : null;
      if (profileDir) mkdirSync(profileDir, { recursive: true });
      const dataDir = path.join(work, "fanout-data");
      const result = await runFanout({ fleet, files, runs, user, dataDir, token: TOKEN, profileDir, log, enabled });
      sections.push({ key: "fanout", result, baseline: "bare ssh2 fan-out" });
      process.stdout.write(formatSection(result, "bare ssh2 fan-out") + "\n");
    }
    if (enabled("warm")) {
      log("warm floor: plain exec and fleetrun's remote scripts on open ssh2 connections…");
      const result = await runWarmFloor({ fleet, user, runs, log });
      sections.push({ key: "warm", result, baseline: "ssh2 warm, plain exec" });
      process.stdout.write(formatSection(result, "ssh2 warm, plain exec") + "\n");
    }
    if (enabled("latency")) {
      log("sequential latency…");
      const result = await runLatency({ fleet, files, user, dataDir: path.join(work, "latency-data"), token: TOKEN, count: 50, log });
      sections.push({ key: "latency", result, baseline: "ssh2 exec (pooled)" });
      process.stdout.write(formatSection(result, "ssh2 exec (pooled)") + "\n");
    }
    if (enabled("throughput")) {
      if (profile) mkdirSync(path.join(resultsDir, "profiles"), { recursive: true });
      log("throughput: commands in flight over 10 machines…");
      const result = await runThroughput({
        fleet,
        user,
        dataDir: path.join(work, "throughput-data"),
        token: TOKEN,
        machines: Math.min(10, machines),
        levels: [8, 32, 128],
        commandsFor: (level) => Math.max(200, level * 6),
        rounds: intEnv("BENCH_THROUGHPUT_ROUNDS", 3, 1, 20),
        profileDir: profile ? path.join(resultsDir, "profiles") : null,
        log,
      });
      sections.push({ key: "throughput", result });
      process.stdout.write(formatSection(result) + "\n");
    }
    if (enabled("load")) {
      const profileDir = path.join(resultsDir, "profiles");
      mkdirSync(profileDir, { recursive: true });
      log(`load (${loadMode})…`);
      const result = await runLoad({ fleet, user, workDir: work, token: TOKEN, mode: loadMode, profileDir, log, enabled });
      sections.push({ key: "load", result });
      process.stdout.write(formatSection(result) + "\n");
    }
    await stopFleet();
  }

  if (enabled("history")) {
    const result = await runHistory({ rows: historyRows, count: 50, log, enabled });
    sections.push({ key: "history", result });
    process.stdout.write(formatSection(result) + "\n");
  }

  const json = {
    environment: env,
    options: { machines, runs, user, historyRows, profile, quick, only, skip: [...skip] },
    sections: Object.fromEntries(sections.map((s) => [s.key, s.result])),
  };
  const file = path.join(resultsDir, "latest.json");
  writeFileSync(file, JSON.stringify(json, null, 2) + "\n");
  log(`\nresults written to ${path.relative(ROOT, file)}`);
}

main()
  .catch((err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => runCleanups());
