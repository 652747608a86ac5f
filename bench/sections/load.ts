/**
 * Section "load": the service under many concurrent commands.
 *
 * - detached: N detached commands at once (POST /v1/commands/async) across M
 *   machines, each printing ~100 lines/s, with F followers on REST NDJSON
 *   that must each see every byte; then every stored output and exit code is
 *   checked and the targets are checked for leftovers.
 * - attached: N concurrent Execute (POST /v1/commands) of `sleep S`.
 * - profile (`--profile`, instead of the two above): 100 detached commands
 *   with output on 10 machines under `node --cpu-prof`, summarized.
 *
 * Each scenario runs its own service process (so VmHWM is its own peak) and
 * a /healthz poller in a separate process (every 100 ms, measured from when
 * each poll was due). The event loop figures come from the service's own
 * `fleetrun_event_loop_lag_seconds` histogram when it exports one.
 */
import { readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { expectedStderr, expectedStdout, histogramDelta, jobDirsLeft, mapLimit, parseHistogram, printerCommand, processesMatching, quantiles, type HistogramBuckets, type PrinterSpec, type Quantiles } from "../../test/fixtures/load.ts";
import { formatProfile, summarizeProfile, type ProfileSummary } from "../lib/cpu-profile.ts";
import { followNdjson, homeOf, memoryOf, requestJson, startPollerProcess, type FollowResult } from "../lib/load-client.ts";
import { machineBusyMs, processCpuMs } from "../lib/proc.ts";
import { registerFleet, startServiceProcess, ROOT, type FleetTarget, type ServiceProcess } from "../lib/service.ts";
import type { Check, Measurement, SectionResult } from "../lib/types.ts";

export interface LoadScale {
  machines: number;
  commands: number;
  /** Lines per command, printed `perTick` at a time every `tickSeconds`. */
  lines: number;
  perTick: number;
  tickSeconds: number;
  followers: number;
  attached: number;
  attachedSleepSeconds: number;
}

/** 1,000 commands on 50 machines, 100 lines/s for 10 s, 200 followers; 1,000 attached `sleep 10`. */
export const FULL_SCALE: LoadScale = { machines: 50, commands: 1000, lines: 1000, perTick: 10, tickSeconds: 0.1, followers: 200, attached: 1000, attachedSleepSeconds: 10 };
/** `--quick`: a tenth of it. */
export const QUICK_SCALE: LoadScale = { machines: 10, commands: 100, lines: 500, perTick: 10, tickSeconds: 0.1, followers: 20, attached: 100, attachedSleepSeconds: 5 };
/** `--profile`: the case measured from outside: 100 commands, 200 lines over 4 s, on 10 machines. */
export const PROFILE_SCALE: LoadScale = { machines: 10, commands: 100, lines: 200, perTick: 5, tickSeconds: 0.1, followers: 0, attached: 0, attachedSleepSeconds: 0 };

export function machinesNeeded(mode: "full" | "quick" | "profile"): number {
  return (mode === "full" ? FULL_SCALE : mode === "quick" ? QUICK_SCALE : PROFILE_SCALE).machines;
}

export interface LoadOptions {
  fleet: FleetTarget;
  user: string;
  /** A directory for the services' data (one SQLite directory per scenario below it). */
  workDir: string;
  token: string;
  mode: "full" | "quick" | "profile";
  /** Where `--profile` writes the .cpuprofile. */
  profileDir: string;
  log: (line: string) => void;
  /** Returns false for a scenario to leave out (BENCH_SKIP: load-detached, load-attached). */
  enabled: (name: string) => boolean;
}

const HEALTHZ_INTERVAL_MS = 100;
const HEALTHZ_P99_TARGET_MS = 100;
const START_TARGET_MS = 1000;
const COMMAND_TIMEOUT_MS = 1_800_000;
/** Give up waiting for the commands to end after this (the figures so far are reported). */
const COMPLETE_DEADLINE_MS = 900_000;
const LEFTOVER_DEADLINE_MS = 30_000;
const LAG_METRIC = "fleetrun_event_loop_lag_seconds";

interface Common {
  /** os.loadavg() when the scenario started: other work on the box skews every figure. */
  loadAverage: number[];
  healthz: Quantiles;
  healthzFailures: number;
  eventLoop: Quantiles | null;
  starts: Quantiles;
  refused: number;
  otherAnswers: string[];
  accepted: number;
  rssBefore: number;
  peakRss: number;
  serviceCpuMs: number | null;
  machineCpuMs: number;
  wallMs: number;
}

interface DetachedResult extends Common {
  ended: number;
  storedOk: number;
  storedProblems: string[];
  followersOk: number;
  followers: number;
  followerProblems: string[];
  leftoverProcesses: number;
  leftoverDirs: number;
  profile: ProfileSummary | null;
  profileFile: string | null;
}

interface AttachedResult extends Common {
  completedOk: number;
  problems: string[];
}

async function scrapeLag(svc: ServiceProcess, token: string): Promise<HistogramBuckets | null> {
  const r = await requestJson(svc.url, token, "GET", "/metrics").catch(() => null);
  return r && r.status === 200 ? parseHistogram(r.text, LAG_METRIC) : null;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

async function startScenarioService(opts: LoadOptions, name: string, nodeArgs: string[] = []): Promise<{ svc: ServiceProcess; ids: string[] }> {
  const svc = await startServiceProcess({ dataDir: path.join(opts.workDir, `load-${name}`), token: opts.token, nodeArgs });
  const ids = await registerFleet(svc, opts.fleet, opts.user);
  return { svc, ids };
}

async function runDetached(opts: LoadOptions, scale: LoadScale, profile: boolean): Promise<DetachedResult> {
  const { log } = opts;
  const run = `frbench${Date.now().toString(36)}`;
  const fleet = { ...opts.fleet, addresses: opts.fleet.addresses.slice(0, scale.machines) };
  const { svc, ids: machineIds } = await startScenarioService({ ...opts, fleet }, profile ? "profile" : "detached", profile ? ["--cpu-prof", `--cpu-prof-dir=${opts.profileDir}`] : []);
  let stopped = false;
  try {
    const specs: { spec: PrinterSpec; machineId: string }[] = [];
    for (let k = 0; k < scale.commands; k++) {
      specs.push({
        machineId: machineIds[k % machineIds.length] as string,
        spec: { mark: `${run}-${k}`, index: k, lines: scale.lines, perTick: scale.perTick, tickSeconds: scale.tickSeconds, exitCode: (k * 37) % 251 },
      });
    }
    const loadAverage = os.loadavg();
    const lag0 = await scrapeLag(svc, opts.token);
    const mem0 = memoryOf(svc.pid);
    const poller = await startPollerProcess(svc.url, HEALTHZ_INTERVAL_MS);
    const cpu0 = processCpuMs(svc.pid);
    const busy0 = machineBusyMs();
    const windowStart = process.hrtime.bigint() / 1000n;
    const t0 = performance.now();
    log(`  starting ${scale.commands} detached commands on ${scale.machines} machines (${scale.lines} lines each, ${(scale.lines / scale.perTick) * scale.tickSeconds} s), ${scale.followers} followers…`);

    const followers: Promise<FollowResult & { k: number }>[] = [];
    const answers = await Promise.all(
      specs.map(async ({ spec, machineId }) => {
        const s0 = performance.now();
        const r = await requestJson(svc.url, opts.token, "POST", "/v1/commands/async", { machine_id: machineId, command: printerCommand(spec), timeout: COMMAND_TIMEOUT_MS }).catch(
          (e: Error) => ({ status: 0, headers: {}, body: null, text: e.message }),
        );
        const ms = performance.now() - s0;
        const id = r.status === 202 ? (r.body?.data?.id as string) : null;
        if (id !== null && followers.length < scale.followers) followers.push(followNdjson(svc.url, opts.token, id).then((f) => ({ ...f, k: spec.index })));
        return { spec, machineId, status: r.status, ms, id, text: r.text.slice(0, 200), retryAfter: (r.headers as Record<string, unknown>)["retry-after"] };
      }),
    );
    const accepted = answers.filter((a) => a.id !== null);
    const refused = answers.filter((a) => a.status === 429);
    const otherAnswers = answers.filter((a) => a.status !== 202 && a.status !== 429).map((a) => `${a.status} ${a.text}`);
    const startsQ = quantiles(answers.map((a) => a.ms));
    log(`  starts answered in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${accepted.length} accepted, ${refused.length} refused (429), ${otherAnswers.length} other; answer p99 ${startsQ.p99.toFixed(0)} ms, max ${startsQ.max.toFixed(0)} ms`);

    // Wait until every accepted command ended (history pages, one per machine every 2 s).
    const want = new Map(accepted.map((a) => [a.id as string, a]));
    const ended = new Set<string>();
    const deadline = performance.now() + COMPLETE_DEADLINE_MS;
    let lastLog = performance.now();
    while (ended.size < want.size && performance.now() < deadline) {
      await mapLimit(machineIds, 4, async (m) => {
        const r = await requestJson(svc.url, opts.token, "GET", `/v1/machines/${m}/commands?limit=1000`).catch(() => null);
        for (const item of (r?.body?.data ?? []) as { id: string; status: string }[]) {
          if (want.has(item.id) && item.status !== "queued" && item.status !== "running") ended.add(item.id);
        }
      });
      if (performance.now() - lastLog > 30_000) {
        log(`  … ${ended.size}/${want.size} ended after ${((performance.now() - t0) / 1000).toFixed(0)} s`);
        lastLog = performance.now();
      }
      if (ended.size < want.size) await new Promise((r) => setTimeout(r, 2000));
    }
    const followed = await Promise.all(followers);
    const wallMs = performance.now() - t0;
    const windowEnd = process.hrtime.bigint() / 1000n;
    const busy1 = machineBusyMs();
    const cpu1 = processCpuMs(svc.pid);
    const health = await poller.stop();
    const lag1 = await scrapeLag(svc, opts.token);
    const mem1 = memoryOf(svc.pid);
    log(`  ${ended.size}/${want.size} ended after ${(wallMs / 1000).toFixed(1)} s; checking stored output, exit codes and leftovers…`);

    // Every byte each follower saw, every stored output and exit code.
    const followerProblems: string[] = [];
    for (const f of followed) {
      const spec = specs[f.k]?.spec as PrinterSpec;
      const p: string[] = [];
      if (f.problem) p.push(f.problem);
      if (!f.contiguous) p.push("offsets not contiguous or bytes skipped");
      if (f.stdout !== expectedStdout(spec)) p.push(`stdout ${Buffer.byteLength(f.stdout)} bytes, want ${expectedStdout(spec).length}`);
      if (f.stderr !== expectedStderr(spec)) p.push("stderr differs");
      if (f.end?.exit_code !== spec.exitCode) p.push(`end exit_code ${f.end?.exit_code}, want ${spec.exitCode}`);
      if (p.length > 0) followerProblems.push(`#${f.k}: ${p.join("; ")}`);
    }
    const storedProblems: string[] = [];
    await mapLimit(accepted, 8, async (a) => {
      const r = await requestJson(svc.url, opts.token, "GET", `/v1/commands/${a.id}`).catch(() => null);
      const c = r?.body?.data;
      const p: string[] = [];
      if (c?.status !== "completed") p.push(`status ${c?.status} ${c?.error?.code ?? ""}`);
      if (c?.exit_code !== a.spec.exitCode) p.push(`exit ${c?.exit_code}, want ${a.spec.exitCode}`);
      if (c?.stdout !== expectedStdout(a.spec)) p.push(`stdout ${c?.stdout_bytes} bytes, want ${expectedStdout(a.spec).length}`);
      if (c?.stderr !== expectedStderr(a.spec)) p.push("stderr differs");
      if (p.length > 0) storedProblems.push(`${a.id} #${a.spec.index}: ${p.join("; ")}`);
    });

    // Leftovers on the targets (all on this host): processes naming a job or a printer, job directories.
    const jobsDir = path.join(homeOf(opts.user), ".fleetrun/jobs");
    const markers = [...want.keys(), ...specs.map((s) => `${s.spec.mark} `)];
    const leftDeadline = performance.now() + LEFTOVER_DEADLINE_MS;
    let procs: string[] = [];
    let dirs: string[] = [];
    for (;;) {
      procs = processesMatching(markers);
      dirs = jobDirsLeft(jobsDir, [...want.keys()]);
      if ((procs.length === 0 && dirs.length === 0) || performance.now() > leftDeadline) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    if (procs.length > 0) log(`  ${procs.length} processes of these jobs left, e.g. ${procs[0]}`);

    let profileSummary: ProfileSummary | null = null;
    let profileFile: string | null = null;
    if (profile) {
      await svc.stop();
      stopped = true;
      profileFile =
        readdirSync(opts.profileDir)
          .filter((f) => f.endsWith(".cpuprofile") && f.includes(`.${svc.pid}.`))
          .map((f) => path.join(opts.profileDir, f))[0] ?? null;
      if (profileFile) profileSummary = summarizeProfile(profileFile, { startUs: Number(windowStart), endUs: Number(windowEnd) }, 25);
    }
    // Clean up what the service left (the bench's own commands), after counting it.
    for (const line of procs) {
      const pid = Number(line.split(" ")[0]);
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
    for (const id of dirs) rmSync(path.join(jobsDir, id), { recursive: true, force: true });

    return {
      loadAverage,
      healthz: quantiles(health.latenciesMs),
      healthzFailures: health.failures + health.unanswered,
      eventLoop: lag1 ? histogramDelta(lag0, lag1) : null,
      starts: startsQ,
      refused: refused.length,
      otherAnswers,
      accepted: accepted.length,
      rssBefore: mem0?.rss ?? Number.NaN,
      peakRss: mem1?.peak ?? Number.NaN,
      serviceCpuMs: cpu0 !== null && cpu1 !== null ? cpu1 - cpu0 : null,
      machineCpuMs: busy1 - busy0,
      wallMs,
      ended: ended.size,
      storedOk: accepted.length - storedProblems.length,
      storedProblems,
      followers: followed.length,
      followersOk: followed.length - followerProblems.length,
      followerProblems,
      leftoverProcesses: procs.length,
      leftoverDirs: dirs.length,
      profile: profileSummary,
      profileFile,
    };
  } finally {
    if (!stopped) await svc.stop();
  }
}

async function runAttached(opts: LoadOptions, scale: LoadScale): Promise<AttachedResult> {
  const fleet = { ...opts.fleet, addresses: opts.fleet.addresses.slice(0, scale.machines) };
  const { svc, ids: machineIds } = await startScenarioService({ ...opts, fleet }, "attached");
  try {
    const loadAverage = os.loadavg();
    const lag0 = await scrapeLag(svc, opts.token);
    const mem0 = memoryOf(svc.pid);
    const poller = await startPollerProcess(svc.url, HEALTHZ_INTERVAL_MS);
    const cpu0 = processCpuMs(svc.pid);
    const busy0 = machineBusyMs();
    const t0 = performance.now();
    opts.log(`  ${scale.attached} concurrent POST /v1/commands \`sleep ${scale.attachedSleepSeconds}\` on ${scale.machines} machines…`);
    const answers = await Promise.all(
      Array.from({ length: scale.attached }, async (_, k) => {
        const s0 = performance.now();
        const r = await requestJson(svc.url, opts.token, "POST", "/v1/commands", {
          machine_id: machineIds[k % machineIds.length],
          command: `sleep ${scale.attachedSleepSeconds}`,
          timeout: COMMAND_TIMEOUT_MS,
        }).catch((e: Error) => ({ status: 0, headers: {}, body: null, text: e.message }));
        return { k, status: r.status, ms: performance.now() - s0, body: r.body, text: r.text.slice(0, 200) };
      }),
    );
    const wallMs = performance.now() - t0;
    const busy1 = machineBusyMs();
    const cpu1 = processCpuMs(svc.pid);
    const health = await poller.stop();
    const lag1 = await scrapeLag(svc, opts.token);
    const mem1 = memoryOf(svc.pid);
    const problems: string[] = [];
    let completedOk = 0;
    for (const a of answers) {
      if (a.status === 429) continue;
      const c = a.body?.data;
      if (a.status === 200 && c?.status === "completed" && c?.exit_code === 0) completedOk++;
      else problems.push(`#${a.k}: ${a.status} ${c?.status ?? ""} ${c?.error?.code ?? ""} ${a.status === 200 ? "" : a.text}`);
    }
    const refused = answers.filter((a) => a.status === 429).length;
    opts.log(`  answered within ${(wallMs / 1000).toFixed(1)} s: ${completedOk} completed with exit 0, ${refused} refused (429), ${problems.length} other`);
    return {
      loadAverage,
      healthz: quantiles(health.latenciesMs),
      healthzFailures: health.failures + health.unanswered,
      eventLoop: lag1 ? histogramDelta(lag0, lag1) : null,
      starts: quantiles(answers.map((a) => a.ms)),
      refused,
      otherAnswers: problems,
      accepted: answers.length - refused,
      rssBefore: mem0?.rss ?? Number.NaN,
      peakRss: mem1?.peak ?? Number.NaN,
      serviceCpuMs: cpu0 !== null && cpu1 !== null ? cpu1 - cpu0 : null,
      machineCpuMs: busy1 - busy0,
      wallMs,
      completedOk,
      problems,
    };
  } finally {
    await svc.stop();
  }
}

function lagText(q: Quantiles | null): string {
  if (q === null) return `n/a (the service exports no ${LAG_METRIC})`;
  const b = (v: number) => (Number.isFinite(v) ? `≤ ${v >= 1000 ? `${v / 1000} s` : `${v} ms`}` : "> largest bucket");
  return `p50 ${b(q.p50)}, p99 ${b(q.p99)}, max ${b(q.max)} (${q.n} samples of the service's ${LAG_METRIC}, bucket bounds)`;
}

function commonNotes(name: string, r: Common): string[] {
  return [
    `${name}: machine load average ${r.loadAverage.map((v) => v.toFixed(1)).join(" / ")} (1/5/15 min) when it started, on ${os.cpus().length} CPUs`,
    `${name}: ${r.accepted} accepted, ${r.refused} refused with 429${r.otherAnswers.length ? `, ${r.otherAnswers.length} other answers, e.g. ${r.otherAnswers[0]}` : ""}; wall ${(r.wallMs / 1000).toFixed(1)} s, service CPU ${r.serviceCpuMs === null ? "n/a" : `${(r.serviceCpuMs / 1000).toFixed(1)} s`}, machine CPU ${(r.machineCpuMs / 1000).toFixed(1)} s`,
    `${name}: event loop ${lagText(r.eventLoop)}`,
    `${name}: service RSS ${mib(r.rssBefore)} before, peak (VmHWM) ${mib(r.peakRss)}; ${r.accepted > 0 ? `${((r.peakRss - r.rssBefore) / r.accepted / 1024).toFixed(0)} KiB per command above the idle RSS` : ""}; /healthz failures ${r.healthzFailures}`,
  ];
}

export async function runLoad(opts: LoadOptions): Promise<SectionResult> {
  const measurements: Measurement[] = [];
  const checks: Check[] = [];
  const notes: string[] = [];
  const data: Record<string, unknown> = { mode: opts.mode };

  if (opts.mode === "profile") {
    const scale = PROFILE_SCALE;
    opts.log(`load profile: ${scale.commands} detached commands with output on ${scale.machines} machines, service under --cpu-prof…`);
    const r = await runDetached(opts, scale, true);
    data.profile = r;
    measurements.push({ name: "/healthz (profiled)", detail: `every ${HEALTHZ_INTERVAL_MS} ms during the load, from when each poll was due`, samples: [], median: r.healthz.p50, p99: r.healthz.p99, max: r.healthz.max });
    measurements.push({ name: "start answers (profiled)", detail: "POST /v1/commands/async, all at once", samples: [], median: r.starts.p50, p99: r.starts.p99, max: r.starts.max });
    notes.push(...commonNotes("profiled run", r));
    notes.push(`profiled run: ${r.ended}/${r.accepted} ended, stored output and exit code right for ${r.storedOk}, ${r.leftoverProcesses} leftover processes, ${r.leftoverDirs} job directories`);
    if (r.profileFile && r.profile) {
      notes.push(`CPU profile: ${path.relative(ROOT, r.profileFile)} (window: first start to last end)`);
      notes.push(
        `the profiler samples wall time: ${(r.profile.totalMs / 1000).toFixed(1)} s of non-idle samples against ${r.serviceCpuMs === null ? "n/a" : `${(r.serviceCpuMs / 1000).toFixed(1)} s`} of service CPU; the difference is time the main thread was busy (in JavaScript or a system call) but not on a CPU`,
      );
      notes.push("service CPU profile during the load:\n" + formatProfile(r.profile, "the load window"));
    } else notes.push("no CPU profile was written (the service did not exit cleanly?)");
    return { title: `Load, profiled: ${scale.commands} detached commands printing ${scale.lines} lines on ${scale.machines} machines`, measurements, checks, notes, ...(r.profile ? { profile: r.profile } : {}), data };
  }

  const scale = opts.mode === "full" ? FULL_SCALE : QUICK_SCALE;
  if (opts.enabled("load-detached")) {
    const r = await runDetached(opts, scale, false);
    data.detached = { ...r, storedProblems: r.storedProblems.slice(0, 20), followerProblems: r.followerProblems.slice(0, 20) };
    const label = `${scale.commands} detached`;
    measurements.push({ name: `/healthz, ${label}`, detail: `every ${HEALTHZ_INTERVAL_MS} ms from a separate process, measured from when each poll was due`, samples: [], median: r.healthz.p50, p99: r.healthz.p99, max: r.healthz.max });
    measurements.push({ name: `start answers, ${label}`, detail: `POST /v1/commands/async, all ${scale.commands} at once`, samples: [], median: r.starts.p50, p99: r.starts.p99, max: r.starts.max });
    checks.push({ name: `/healthz p99, ${label}`, value: r.healthz.p99, unit: "ms", target: `< ${HEALTHZ_P99_TARGET_MS} ms`, met: r.healthz.p99 < HEALTHZ_P99_TARGET_MS });
    checks.push({ name: `slowest start answer, ${label}`, value: r.starts.max, unit: "ms", target: `< ${START_TARGET_MS} ms`, met: r.starts.max < START_TARGET_MS });
    checks.push({ name: `starts refused (429), ${label}`, value: r.refused, unit: "n", target: "(info)", met: true });
    checks.push({ name: `commands ended, ${label}`, value: r.ended, unit: "n", target: `= ${r.accepted} accepted`, met: r.ended === r.accepted });
    checks.push({ name: `stored output + exit code right`, value: r.storedOk, unit: "n", target: `= ${r.accepted}`, met: r.storedOk === r.accepted });
    checks.push({ name: `followers that saw every byte`, value: r.followersOk, unit: "n", target: `= ${r.followers}`, met: r.followersOk === r.followers && r.followers > 0 });
    checks.push({ name: `leftover processes + job dirs`, value: r.leftoverProcesses + r.leftoverDirs, unit: "n", target: "= 0", met: r.leftoverProcesses + r.leftoverDirs === 0 });
    notes.push(...commonNotes(label, r));
    notes.push(`${label}: ${scale.lines} lines per command (${scale.perTick} every ${scale.tickSeconds} s), ${scale.followers} REST NDJSON followers from offset 0`);
    if (r.storedProblems.length) notes.push(`${label}: ${r.storedProblems.length} stored outputs wrong, e.g. ${r.storedProblems[0]}`);
    if (r.followerProblems.length) notes.push(`${label}: ${r.followerProblems.length} followers wrong, e.g. ${r.followerProblems[0]}`);
  }
  if (opts.enabled("load-attached")) {
    const r = await runAttached(opts, scale);
    data.attached = { ...r, problems: r.problems.slice(0, 20), otherAnswers: r.otherAnswers.slice(0, 20) };
    const label = `${scale.attached} attached`;
    measurements.push({ name: `/healthz, ${label}`, detail: `every ${HEALTHZ_INTERVAL_MS} ms from a separate process`, samples: [], median: r.healthz.p50, p99: r.healthz.p99, max: r.healthz.max });
    measurements.push({ name: `Execute answers, ${label}`, detail: `POST /v1/commands \`sleep ${scale.attachedSleepSeconds}\`, all at once (includes the ${scale.attachedSleepSeconds} s)`, samples: [], median: r.starts.p50, p99: r.starts.p99, max: r.starts.max });
    checks.push({ name: `Execute completed, exit 0, ${label}`, value: r.completedOk, unit: "n", target: `= ${r.accepted} accepted`, met: r.completedOk === r.accepted });
    checks.push({ name: `Execute refused (429), ${label}`, value: r.refused, unit: "n", target: "(info)", met: true });
    checks.push({ name: `/healthz p99, ${label}`, value: r.healthz.p99, unit: "ms", target: `< ${HEALTHZ_P99_TARGET_MS} ms`, met: r.healthz.p99 < HEALTHZ_P99_TARGET_MS });
    notes.push(...commonNotes(label, r));
    if (r.problems.length) notes.push(`${label}: ${r.problems.length} wrong, e.g. ${r.problems[0]}`);
  }
  return { title: `Load: ${scale.commands} detached commands with output and ${scale.attached} attached on ${scale.machines} machines${opts.mode === "quick" ? " (--quick)" : ""}`, measurements, checks, notes, data };
}
