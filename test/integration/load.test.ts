/**
 * A bounded load test: many detached commands with output at once, over SSH
 * machines of the test fleet and the built-in local machine, while /healthz
 * is polled every 100 ms.
 *
 * Always asserted (correctness): every start is answered 202 or 429 with
 * Retry-After; every accepted command completes with its exact stdout and
 * stderr and its own exit code; a refused one is never stored or run; no
 * process of these jobs and no job directory is left on the targets.
 *
 * Asserted only with FLEETRUN_LOAD_STRICT=1 (responsiveness): /healthz p99
 * under 100 ms and every start answered within 1 s. The measured figures are
 * printed on every run either way.
 *
 * The service runs in this process (test/fixtures/service.ts), so the event
 * loop delay below is the service's (plus this test's own light client
 * work), measured with perf_hooks.monitorEventLoopDelay.
 *
 * Measured 2026-12-02 (2 cores shared with other test runs, load average
 * ~30), service before the load fixes: 300 accepted, all correct; /healthz
 * p50 16 s, p99 184 s; start answers p50 80 s, max 319 s; event loop delay
 * p50 0.53 s, p99 6.1 s, max 8.0 s.
 */
import os from "node:os";
import path from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import {
  expectedStderr,
  expectedStdout,
  formatQuantiles,
  jobDirsLeft,
  mapLimit,
  printerCommand,
  processesMatching,
  quantiles,
  startHealthzPoller,
  type PrinterSpec,
  type Quantiles,
} from "../fixtures/load.ts";
import { registerMachine, startService, type TestService } from "../fixtures/service.ts";

/** SSH machines of the shared test fleet (indexes from FIRST_MACHINE_INDEX). */
const SSH_MACHINES = 10;
/** Detached commands spread over those machines. */
const SSH_COMMANDS = 200;
/** Detached commands on the built-in local machine. */
const LOCAL_COMMANDS = 100;
/** Each command prints LINES lines, PER_TICK at a time, TICK_SECONDS apart: 200 lines over 4 s. */
const LINES = 200;
const PER_TICK = 5;
const TICK_SECONDS = 0.1;
const HEALTHZ_INTERVAL_MS = 100;
/** Responsiveness limits (FLEETRUN_LOAD_STRICT=1). */
const HEALTHZ_P99_LIMIT_MS = 100;
const START_ANSWER_LIMIT_MS = 1000;
/** Every accepted command must have ended within this after the last start was answered. */
const COMPLETE_DEADLINE_MS = 120_000;
/** ... and its processes and job directory be gone within this after that. */
const CLEANUP_DEADLINE_MS = 30_000;
const COMMAND_TIMEOUT_MS = 600_000;
/**
 * The starts themselves are not bounded (how long they take is what is
 * measured). With the service as of 2026-12-02 on a busy 2-core machine the
 * whole test took 7.5 min (starts answered after up to 5.3 min); once starts
 * answer within a second it takes well under a minute.
 */
const TEST_TIMEOUT_MS = 600_000;
const FIRST_MACHINE_INDEX = 9;
const STRICT = process.env.FLEETRUN_LOAD_STRICT === "1";

const fleet = inject("sshFleet");
const run = `frload${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;

interface Planned {
  spec: PrinterSpec;
  machineId: string;
  command: string;
}

interface Started extends Planned {
  status: number;
  answerMs: number;
  id: string | null;
  retryAfter: string | null;
  /** The start of the answer's body, for messages. */
  text: string;
}

interface Measured {
  healthz: Quantiles;
  healthzFailures: number;
  starts: Quantiles;
  refused: number;
  eventLoop: Quantiles;
  completedAfterMs: number;
}

let measured: Measured | null = null;

/** Progress on stderr while the (long) test runs. */
function progress(line: string): void {
  process.stderr.write(`load: ${line}\n`);
}

function ms(nanoseconds: number): number {
  return nanoseconds / 1e6;
}

describe(`load: ${SSH_COMMANDS} detached commands on ${SSH_MACHINES} SSH machines and ${LOCAL_COMMANDS} on mach_local, ${LINES} lines each`, () => {
  let svc: TestService;
  const machines: string[] = [];

  beforeAll(async () => {
    svc = await startService({ db: "sqlite" });
    for (let i = 0; i < SSH_MACHINES; i++) machines.push(await registerMachine(svc, fleet, { index: FIRST_MACHINE_INDEX + i, user: "root" }));
  });
  afterAll(async () => {
    await svc?.close();
  });

  it("completes every accepted command with its exact output and exit code, stores no refused one, and leaves nothing on the targets", { timeout: TEST_TIMEOUT_MS }, async () => {
    const plan: Planned[] = [];
    const total = SSH_COMMANDS + LOCAL_COMMANDS;
    for (let k = 0; k < total; k++) {
      const machineId = k < SSH_COMMANDS ? (machines[k % SSH_MACHINES] as string) : "mach_local";
      // Exit codes differ between the commands of one machine (and mostly overall).
      const spec: PrinterSpec = { mark: `${run}-${k}`, index: k, lines: LINES, perTick: PER_TICK, tickSeconds: TICK_SECONDS, exitCode: (k * 37) % 251 };
      plan.push({ spec, machineId, command: printerCommand(spec) });
    }

    const loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    const poller = startHealthzPoller(svc.url, HEALTHZ_INTERVAL_MS);
    const loadStart = performance.now();
    const started: Started[] = await Promise.all(
      plan.map(async (p) => {
        const t0 = performance.now();
        const res = await fetch(svc.url + "/v1/commands/async", {
          method: "POST",
          headers: { authorization: `Bearer ${svc.token}`, "content-type": "application/json" },
          body: JSON.stringify({ machine_id: p.machineId, command: p.command, timeout: COMMAND_TIMEOUT_MS }),
        });
        const text = await res.text();
        const answerMs = performance.now() - t0;
        const id = res.status === 202 ? ((JSON.parse(text) as { data: { id: string } }).data.id ?? null) : null;
        return { ...p, status: res.status, answerMs, id, retryAfter: res.headers.get("retry-after"), text: text.slice(0, 300) };
      }),
    );
    const startsDone = performance.now();
    progress(`${started.length} starts answered after ${((startsDone - loadStart) / 1000).toFixed(1)} s`);

    // Every start is either accepted or refused with a time to retry after.
    for (const s of started) expect([202, 429], `start ${s.spec.index}: ${s.text}`).toContain(s.status);
    const accepted = started.filter((s) => s.status === 202);
    const refused = started.filter((s) => s.status === 429);
    for (const s of accepted) expect(s.id).toMatch(/^cmd_/);
    for (const s of refused) expect(Number(s.retryAfter), `Retry-After of refused start ${s.spec.index}`).toBeGreaterThan(0);

    // Wait for every accepted command to end (history pages: one request per machine a second).
    const ids = new Set(accepted.map((s) => s.id as string));
    const ended = new Map<string, string>();
    const deadline = startsDone + COMPLETE_DEADLINE_MS;
    let lastProgress = performance.now();
    for (;;) {
      for (const m of [...machines, "mach_local"]) {
        const r = await svc.rest("GET", `/v1/machines/${m}/commands?limit=1000`);
        expect(r.status).toBe(200);
        for (const item of r.body.data as { id: string; status: string }[]) {
          if (ids.has(item.id) && item.status !== "queued" && item.status !== "running") ended.set(item.id, item.status);
        }
      }
      if (ended.size === ids.size || performance.now() > deadline) break;
      if (performance.now() - lastProgress > 10_000) {
        progress(`${ended.size}/${ids.size} ended after ${((performance.now() - loadStart) / 1000).toFixed(0)} s`);
        lastProgress = performance.now();
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    const completedAfterMs = performance.now() - startsDone;
    const health = await poller.stop();
    loop.disable();

    measured = {
      healthz: quantiles(health.latenciesMs),
      healthzFailures: health.failures,
      starts: quantiles(started.map((s) => s.answerMs)),
      refused: refused.length,
      eventLoop: { n: loop.count, p50: ms(loop.percentile(50)), p99: ms(loop.percentile(99)), max: ms(loop.max) },
      completedAfterMs,
    };
    console.log(
      [
        `load (${accepted.length} accepted, ${refused.length} refused with 429, ${ended.size}/${ids.size} ended ${(completedAfterMs / 1000).toFixed(1)} s after the last start was answered):`,
        `  /healthz every ${HEALTHZ_INTERVAL_MS} ms: ${formatQuantiles(measured.healthz)}, ${health.failures} failed, ${health.unanswered} unanswered at the end`,
        `  start answers: ${formatQuantiles(measured.starts)}`,
        `  event loop delay (this process = the service): ${formatQuantiles(measured.eventLoop)}`,
        `  responsiveness limits (${STRICT ? "asserted" : "not asserted; FLEETRUN_LOAD_STRICT=1 asserts them"}): /healthz p99 < ${HEALTHZ_P99_LIMIT_MS} ms, every start < ${START_ANSWER_LIMIT_MS} ms`,
      ].join("\n"),
    );

    expect(ended.size, `commands still running ${(COMPLETE_DEADLINE_MS / 1000).toFixed(0)} s after the starts`).toBe(ids.size);

    // A refused start was never stored (its printer never ran: checked with the leftovers below).
    if (refused.length > 0) {
      const stored = new Set<string>();
      for (const m of [...machines, "mach_local"]) {
        const r = await svc.rest("GET", `/v1/machines/${m}/commands?limit=1000`);
        for (const item of r.body.data as { command: string }[]) stored.add(item.command);
      }
      expect(refused.filter((s) => stored.has(s.command)).map((s) => s.spec.index), "refused commands stored").toEqual([]);
    }

    // Byte-exact output and the true exit code of every accepted command.
    const wrong: string[] = [];
    await mapLimit(accepted, 8, async (s) => {
      const r = await svc.rest("GET", `/v1/commands/${s.id}`);
      const c = r.body?.data;
      const problems: string[] = [];
      if (c?.status !== "completed") problems.push(`status ${c?.status} ${JSON.stringify(c?.error)}`);
      if (c?.exit_code !== s.spec.exitCode) problems.push(`exit ${c?.exit_code} (want ${s.spec.exitCode})`);
      if (c?.stdout !== expectedStdout(s.spec)) problems.push(`stdout ${c?.stdout_bytes} bytes (want ${expectedStdout(s.spec).length}), differs`);
      if (c?.stderr !== expectedStderr(s.spec)) problems.push(`stderr ${JSON.stringify(String(c?.stderr).slice(0, 200))}`);
      if (problems.length > 0) wrong.push(`${s.id} (#${s.spec.index} on ${s.machineId}): ${problems.join("; ")}`);
    });
    expect(wrong.slice(0, 10), `${wrong.length} commands wrong`).toEqual([]);

    // Nothing of these jobs is left on the targets: no process (supervisor, follower,
    // watchdog: their command lines name the job directory; the printer: its mark)
    // and no job directory. Every target here is this host, logged in as root.
    const markers = [...accepted.map((s) => s.id as string), ...plan.map((p) => `${p.spec.mark} `)];
    const jobsDir = path.join(os.homedir(), ".fleetrun/jobs");
    const cleanDeadline = performance.now() + CLEANUP_DEADLINE_MS;
    let procs: string[] = [];
    let dirs: string[] = [];
    for (;;) {
      procs = processesMatching(markers);
      dirs = jobDirsLeft(jobsDir, [...ids]);
      if ((procs.length === 0 && dirs.length === 0) || performance.now() > cleanDeadline) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(procs.slice(0, 10), `${procs.length} processes of these jobs left`).toEqual([]);
    expect(dirs.slice(0, 10), `${dirs.length} job directories left in ${jobsDir}`).toEqual([]);
  });

  it.runIf(STRICT)(`answers /healthz within ${HEALTHZ_P99_LIMIT_MS} ms at p99 and every start within ${START_ANSWER_LIMIT_MS} ms under that load`, () => {
    expect(measured, "the load test above ran").not.toBeNull();
    const m = measured as Measured;
    expect(m.healthzFailures).toBe(0);
    expect(m.healthz.p99).toBeLessThan(HEALTHZ_P99_LIMIT_MS);
    expect(m.starts.max).toBeLessThan(START_ANSWER_LIMIT_MS);
  });
});
