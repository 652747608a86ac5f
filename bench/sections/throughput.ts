/**
 * Section "throughput": `true` with N commands in flight spread over the
 * fleet's machines, for a fixed number of commands per level: fleetrun
 * Execute over gRPC (@grpc/grpc-js, one HTTP/2 connection) against the
 * floor, bare ssh2 exec on pooled open connections at the same concurrency.
 * Levels are interleaved (floor, fleetrun, floor, fleetrun…) so that both see
 * the same box.
 */
import { readdirSync } from "node:fs";
import path from "node:path";
import type { Client } from "ssh2";
import { CommandService, CommandStatus } from "../../src/gen/fleetrun/v1/command_pb.js";
import { GrpcClient } from "../../test/fixtures/service.ts";
import { onCleanup } from "../lib/cleanup.ts";
import { formatProfile, summarizeProfile, type ProfileSummary } from "../lib/cpu-profile.ts";
import { machineBusyMs, processCpuMs } from "../lib/proc.ts";
import { registerFleet, startServiceProcess } from "../lib/service.ts";
import { connect, exec } from "../lib/ssh2-client.ts";
import { now } from "../lib/stats.ts";
import type { Check, Measurement, SectionResult } from "../lib/types.ts";

export interface ThroughputOptions {
  fleet: { port: number; addresses: string[]; clientKey: { privateKey: string }; hostKeys: { algorithm: string; fingerprint: string }[] };
  dataDir: string;
  token: string;
  user: string;
  /** Machines the commands are spread over. */
  machines: number;
  /** Concurrency levels. */
  levels: number[];
  /** Commands per level and tool (at least 4 × the level). */
  commandsFor: (level: number) => number;
  /** Rounds per level (the median rate is reported). */
  rounds: number;
  /** When set: one more run at 32 in flight with the service under --cpu-prof, summarized. */
  profileDir: string | null;
  log: (line: string) => void;
}

/** Channels per pooled floor connection, as fleetrun's pool uses them. */
const CHANNELS_PER_CONNECTION = 8;
const TARGET = 0.8;

/** Runs `total` calls of `one(i)` with `level` in flight; returns commands per second. */
async function drive(level: number, total: number, one: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const t0 = now();
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= total) return;
      await one(i);
    }
  };
  await Promise.all(Array.from({ length: level }, worker));
  return total / ((now() - t0) / 1000);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] as number;
}

export async function runThroughput(opts: ThroughputOptions): Promise<SectionResult> {
  const { fleet, log } = opts;
  const hosts = fleet.addresses.slice(0, opts.machines);
  if (hosts.length < opts.machines) throw new Error(`the throughput section needs ${opts.machines} machines; the fleet has ${fleet.addresses.length}`);
  const ed = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519");
  if (!ed) throw new Error("the fleet serves no ed25519 host key");
  const maxLevel = Math.max(...opts.levels);

  // The floor: per machine, as many open connections as the top level needs at 8 channels each.
  const perMachine = Math.ceil(Math.ceil(maxLevel / hosts.length) / CHANNELS_PER_CONNECTION);
  const pools: Client[][] = [];
  for (const host of hosts) {
    const conns: Client[] = [];
    for (let i = 0; i < perMachine; i++) {
      conns.push(await connect({ host, port: fleet.port, username: opts.user, privateKey: fleet.clientKey.privateKey, fingerprint: ed.fingerprint }));
    }
    pools.push(conns);
  }
  const closeFloor = onCleanup("ssh2 throughput connections", () => {
    for (const p of pools) for (const c of p) c.end();
  });
  const svc = await startServiceProcess({ dataDir: opts.dataDir, token: opts.token });
  const grpc = new GrpcClient(svc.url, opts.token);
  const measurements: Measurement[] = [];
  const checks: Check[] = [];
  const data: Record<string, { fleetrun: number[]; floor: number[]; serviceCpuMsPerCommand: number[]; machineCpuMsPerCommand: { fleetrun: number[]; floor: number[] } }> = {};
  try {
    const ids = await registerFleet(svc, { ...fleet, addresses: hosts }, opts.user);
    const floorOne = async (i: number) => {
      const m = i % hosts.length;
      const conns = pools[m] as Client[];
      const c = conns[Math.floor(i / hosts.length) % conns.length] as Client;
      const r = await exec(c, "true");
      if (r.code !== 0) throw new Error(`ssh2 exec true: exit ${r.code} ${r.stderr}`);
    };
    const fleetrunOne = async (i: number) => {
      const r = await grpc.unary(CommandService.method.execute, { machineId: ids[i % ids.length] as string, command: "true" });
      if (r.status !== CommandStatus.COMPLETED || r.exitCode !== 0) throw new Error(`Execute true: status ${r.status} exit ${r.exitCode} ${r.error?.message ?? ""}`);
    };
    for (const level of opts.levels) {
      const total = opts.commandsFor(level);
      // Warm-up at this level: the service's pool opens what the level needs (idle ones
      // close after a minute), and its JIT.
      await drive(level, level * 2, fleetrunOne);
      await drive(level, level * 2, floorOne);
      const fr: number[] = [];
      const fl: number[] = [];
      const cpu: number[] = [];
      const mFr: number[] = [];
      const mFl: number[] = [];
      for (let r = 0; r < opts.rounds; r++) {
        let m0 = machineBusyMs();
        fl.push(await drive(level, total, floorOne));
        mFl.push((machineBusyMs() - m0) / total);
        const c0 = processCpuMs(svc.pid) ?? 0;
        m0 = machineBusyMs();
        fr.push(await drive(level, total, fleetrunOne));
        mFr.push((machineBusyMs() - m0) / total);
        cpu.push(((processCpuMs(svc.pid) ?? 0) - c0) / total);
      }
      data[String(level)] = { fleetrun: fr, floor: fl, serviceCpuMsPerCommand: cpu, machineCpuMsPerCommand: { fleetrun: mFr, floor: mFl } };
      log(`      service CPU ${median(cpu).toFixed(2)} ms/command; machine CPU ${median(mFr).toFixed(1)} ms/command (fleetrun) vs ${median(mFl).toFixed(1)} (bare ssh2)`);
      const a = median(fr);
      const b = median(fl);
      log(`  ${String(level).padStart(3)} in flight: fleetrun ${a.toFixed(0)}/s, bare ssh2 ${b.toFixed(0)}/s (${(a / b).toFixed(2)})`);
      // Rates are reported as ms per command so that the table's ratio column reads as time.
      measurements.push({
        name: `fleetrun Execute (gRPC), ${level} in flight`,
        detail: `${total} × Execute {command: "true"} over ${hosts.length} machines, ${level} in flight; ${a.toFixed(0)} commands/s (rounds: ${fr.map((x) => x.toFixed(0)).join(", ")})`,
        samples: fr.map((x) => 1000 / x),
        median: 1000 / a,
        note: `service CPU ${median(cpu).toFixed(2)} ms per command; machine CPU (both cores, everything) ${median(mFr).toFixed(1)} ms per command against ${median(mFl).toFixed(1)} for bare ssh2`,
      });
      measurements.push({
        name: `bare ssh2, ${level} in flight`,
        detail: `${total} × exec('true') on ${perMachine} open connection(s) per machine, ${level} in flight; ${b.toFixed(0)} commands/s (rounds: ${fl.map((x) => x.toFixed(0)).join(", ")})`,
        samples: fl.map((x) => 1000 / x),
        median: 1000 / b,
      });
      checks.push({ name: `fleetrun / bare ssh2 rate, ${level} in flight`, value: a / b, unit: "x", target: `≥ ${TARGET}`, met: a / b >= TARGET });
    }
  } finally {
    grpc.close();
    await svc.stop();
  }
  let profile: ProfileSummary | null = null;
  try {
    if (opts.profileDir) profile = await profiled(opts, hosts, opts.profileDir);
  } finally {
    await closeFloor();
  }
  return {
    title: `Throughput: \`true\` over ${hosts.length} machines at ${opts.levels.join(", ")} in flight`,
    measurements,
    checks,
    notes: [
      "The median column is the time per command (1 / rate) of the median round; the rates are in each row's detail.",
      `Rounds per level: ${opts.rounds}, floor and fleetrun interleaved.`,
      ...(profile ? ["service CPU profile at 32 in flight:\n" + formatProfile(profile, "the run")] : []),
    ],
    data,
    ...(profile ? { profile } : {}),
  };
}

/** One run at 32 in flight with the service under `--cpu-prof`; the profile's summary over the run. */
async function profiled(opts: ThroughputOptions, hosts: string[], profileDir: string): Promise<ProfileSummary | null> {
  const svc = await startServiceProcess({ dataDir: opts.dataDir + "-profile", token: opts.token, nodeArgs: ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] });
  const grpc = new GrpcClient(svc.url, opts.token);
  let window: { startUs: number; endUs: number };
  try {
    const ids = await registerFleet(svc, { ...opts.fleet, addresses: hosts }, opts.user);
    const one = async (i: number) => {
      await grpc.unary(CommandService.method.execute, { machineId: ids[i % ids.length] as string, command: "true" });
    };
    await drive(32, 64, one);
    const t0 = Number(process.hrtime.bigint() / 1000n);
    const rate = await drive(32, opts.commandsFor(32), one);
    window = { startUs: t0, endUs: Number(process.hrtime.bigint() / 1000n) };
    opts.log(`  profiled run at 32 in flight: ${rate.toFixed(0)}/s (profiler on)`);
  } finally {
    grpc.close();
    await svc.stop();
  }
  const file = readdirSync(profileDir)
    .filter((f) => f.endsWith(".cpuprofile") && f.includes(`.${svc.pid}.`))
    .map((f) => path.join(profileDir, f))[0];
  return file ? summarizeProfile(file, window, 25) : null;
}
