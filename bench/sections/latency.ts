/**
 * Section "latency": sequential `true` on one machine, one at a time:
 * fleetrun Execute over gRPC and REST (warm) against ssh2 on one open
 * connection (the floor) and the OpenSSH client with and without connection
 * multiplexing; and where one Execute's time goes, stage by stage (a second
 * service at log level debug, whose engine logs each command's stages).
 */
import { execFile, spawn } from "node:child_process";
import path from "node:path";
import { SCRIPT_COMMAND_LINE, directFastCommandLine, directFastScript, newNonce } from "../../src/exec/remote-script.ts";
import { CommandService, CommandStatus } from "../../src/gen/fleetrun/v1/command_pb.js";
import { GrpcClient } from "../../test/fixtures/service.ts";
import { onCleanup } from "../lib/cleanup.ts";
import { registerFleet, startServiceProcess } from "../lib/service.ts";
import { connect, exec } from "../lib/ssh2-client.ts";
import { now, summarize } from "../lib/stats.ts";
import { CURVE25519, sshOptions, type ToolFiles } from "../lib/tools.ts";
import type { Check, Measurement, SectionResult } from "../lib/types.ts";

export interface LatencyOptions {
  fleet: { port: number; addresses: string[]; clientKey: { privateKey: string }; hostKeys: { algorithm: string; fingerprint: string }[] };
  files: ToolFiles;
  dataDir: string;
  token: string;
  /** Sequential commands per variant. */
  count: number;
  /** Login user on the machine. */
  user: string;
  log: (line: string) => void;
}

const WARMUP = 5;
/** Execute at most this many times the floor (median of sequential `true`). */
const LATENCY_TARGET = 1.4;
/** ... and at least this much faster than OpenSSH over a ControlMaster. */
const CONTROLMASTER_TARGET = 1.8;
const COMMAND_TIMEOUT_MS = 30_000;

function execFileTimed(argv: string[]): Promise<{ ms: number; code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const t0 = now();
    execFile(argv[0] as string, argv.slice(1), { timeout: COMMAND_TIMEOUT_MS }, (err, _stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? ((err as { code: number }).code) : null) : 0;
      resolve({ ms: now() - t0, code, stderr: String(stderr) });
    });
  });
}

async function series(label: string, count: number, log: (l: string) => void, once: () => Promise<number>): Promise<number[]> {
  for (let i = 0; i < WARMUP; i++) await once();
  const samples: number[] = [];
  for (let i = 0; i < count; i++) samples.push(await once());
  const s = summarize(samples);
  log(`  ${label.padEnd(28)} median ${s.median.toFixed(1)} ms  p95 ${s.p95.toFixed(1)} ms`);
  return samples;
}

/** An OpenSSH ControlMaster to `host`, and the argv of `ssh … true` through it. */
async function startControlMaster(files: ToolFiles, port: number, user: string, host: string): Promise<{ argv: string[]; stop: () => Promise<void> }> {
  const sock = path.join(files.dir, "cm.sock");
  const mux = ["-o", `ControlPath=${sock}`];
  const master = spawn("ssh", [...sshOptions(files, port, CURVE25519), ...mux, "-o", "ControlMaster=yes", "-N", "-l", user, host], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let masterErr = "";
  master.stderr.on("data", (d: Buffer) => (masterErr += d.toString()));
  const exited = new Promise<void>((r) => master.once("exit", () => r()));
  const stop = onCleanup("ssh control master", async () => {
    if (master.exitCode === null && master.signalCode === null) master.kill("SIGTERM");
    await exited;
  });
  const deadline = Date.now() + 20_000;
  for (;;) {
    const r = await execFileTimed(["ssh", ...sshOptions(files, port), ...mux, "-O", "check", "-l", user, host]);
    if (r.code === 0) break;
    if (master.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`ControlMaster did not come up: ${masterErr}`);
    }
    await new Promise((res) => setTimeout(res, 50));
  }
  return { argv: ["ssh", ...sshOptions(files, port), ...mux, "-o", "ControlMaster=no", "-l", user, host, "true"], stop };
}

function row(name: string, detail: string, samples: number[]): Measurement {
  const s = summarize(samples);
  return { name, detail, samples, median: s.median, p95: s.p95 };
}

export async function runLatency(opts: LatencyOptions): Promise<SectionResult> {
  const { fleet, files, log, count } = opts;
  const host = fleet.addresses[0] as string;
  const ed = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519");
  if (!ed) throw new Error("the fleet serves no ed25519 host key");
  const measurements: Measurement[] = [];

  // The floor, fleetrun (gRPC and REST, warm: pooled connection) and OpenSSH over a
  // ControlMaster, interleaved call by call so that all see the same box.
  {
    const svc = await startServiceProcess({ dataDir: opts.dataDir, token: opts.token });
    const grpc = new GrpcClient(svc.url, opts.token);
    const client = await connect({ host, port: fleet.port, username: opts.user, privateKey: fleet.clientKey.privateKey, fingerprint: ed.fingerprint });
    const closeClient = onCleanup("ssh2 latency connection", () => void client.end());
    const master = await startControlMaster(files, fleet.port, opts.user, host);
    try {
      const [id] = await registerFleet(svc, { ...fleet, addresses: [host] }, opts.user);
      const variants: { name: string; detail: string; once: () => Promise<number> }[] = [
        {
          name: "ssh2 exec (pooled)",
          detail: "ssh2 exec('true') on one open connection, TCP_NODELAY (the floor)",
          once: async () => {
            const t0 = now();
            const r = await exec(client, "true");
            const ms = now() - t0;
            if (r.code !== 0) throw new Error(`ssh2 exec true: exit ${r.code} ${r.stderr}`);
            return ms;
          },
        },
        {
          name: "ssh2, light-path script",
          detail: "ssh2 exec of fleetrun's light-path command line and script for `true` on the same open connection, no service (the target side of Execute alone)",
          once: async () => {
            const nonce = newNonce();
            const spec = { command: "true", cwd: null, env: {}, timeoutMs: 60_000, graceMs: 5_000, nonce };
            const t0 = now();
            const r = await exec(client, directFastCommandLine({ graceMs: 5_000, watchdogMs: 67_000 }), directFastScript(spec));
            const ms = now() - t0;
            if (r.code !== 0 || !r.stdout.startsWith(nonce + " started")) throw new Error(`light-path script: exit ${r.code} ${r.stdout} ${r.stderr}`);
            return ms;
          },
        },
        {
          name: "ssh2, script without timeout",
          detail: "the same script on `exec /bin/sh -s` (no target-side `timeout`): what the target-side timeout costs, informative",
          once: async () => {
            const nonce = newNonce();
            const spec = { command: "true", cwd: null, env: {}, timeoutMs: 60_000, graceMs: 5_000, nonce };
            const t0 = now();
            const r = await exec(client, SCRIPT_COMMAND_LINE, directFastScript(spec));
            const ms = now() - t0;
            if (r.code !== 0 || !r.stdout.startsWith(nonce + " started")) throw new Error(`script without timeout: exit ${r.code} ${r.stdout} ${r.stderr}`);
            return ms;
          },
        },
        {
          name: "fleetrun Execute (gRPC)",
          detail: `@grpc/grpc-js Execute {command: "true"} on one machine, one at a time, warm (after ${WARMUP} warm-up calls)`,
          once: async () => {
            const t0 = now();
            const r = await grpc.unary(CommandService.method.execute, { machineId: id as string, command: "true" });
            const ms = now() - t0;
            if (r.status !== CommandStatus.COMPLETED || r.exitCode !== 0) throw new Error(`Execute failed: ${r.status} ${r.error?.message ?? ""}`);
            return ms;
          },
        },
        {
          name: "fleetrun Execute (REST)",
          detail: `POST /v1/commands {"command":"true"} on one machine, one at a time, warm (after ${WARMUP} warm-up calls)`,
          once: async () => {
            const t0 = now();
            const r = await svc.rest("POST", "/v1/commands", { machine_id: id, command: "true" });
            const ms = now() - t0;
            if (r.status !== 200 || r.body?.data?.status !== "completed" || r.body?.data?.exit_code !== 0) {
              throw new Error(`Execute failed: ${r.status} ${r.text.slice(0, 300)}`);
            }
            return ms;
          },
        },
        {
          name: "ssh host true, ControlMaster",
          detail: "OpenSSH multiplexed over an open ControlMaster connection (includes the ssh client's own start-up)",
          once: async () => {
            const r = await execFileTimed(master.argv);
            if (r.code !== 0) throw new Error(`ssh via ControlMaster: exit ${r.code} ${r.stderr}`);
            return r.ms;
          },
        },
      ];
      for (let i = 0; i < WARMUP; i++) for (const v of variants) await v.once();
      const samples = variants.map(() => [] as number[]);
      for (let i = 0; i < count; i++) {
        for (const [j, v] of variants.entries()) samples[j]!.push(await v.once());
      }
      for (const [j, v] of variants.entries()) {
        const s = summarize(samples[j]!);
        log(`  ${v.name.padEnd(28)} median ${s.median.toFixed(1)} ms  p95 ${s.p95.toFixed(1)} ms`);
        measurements.push(row(v.name, v.detail, samples[j]!));
      }
    } finally {
      grpc.close();
      await svc.stop();
      await closeClient();
      await master.stop();
    }
  }

  const stages = await stageBreakdown(opts, host, count, log);

  // OpenSSH: a new connection per command, both key exchanges.
  for (const [name, extra, detail] of [
    ["ssh host true", [] as string[], "a new OpenSSH connection per command (default KEX sntrup761x25519)"],
    ["ssh host true, curve25519", CURVE25519, "a new OpenSSH connection per command, -o KexAlgorithms=curve25519-sha256"],
  ] as const) {
    const argv = ["ssh", ...sshOptions(files, fleet.port, [...extra]), "-l", opts.user, host, "true"];
    const samples = await series(name, Math.min(count, 20), log, async () => {
      const r = await execFileTimed(argv);
      if (r.code !== 0) throw new Error(`${name}: exit ${r.code} ${r.stderr}`);
      return r.ms;
    });
    measurements.push(row(name, detail, samples));
  }

  const checks: Check[] = [];
  const s2 = measurements.find((m) => m.name === "ssh2 exec (pooled)");
  const cm = measurements.find((m) => m.name === "ssh host true, ControlMaster");
  const script = measurements.find((m) => m.name === "ssh2, light-path script");
  if (script && s2) checks.push({ name: "light-path script alone / bare ssh2 floor", value: script.median / s2.median, unit: "x", target: "(info)", met: true });
  const bare = measurements.find((m) => m.name === "ssh2, script without timeout");
  if (bare && s2) checks.push({ name: "script without timeout / bare ssh2 floor", value: bare.median / s2.median, unit: "x", target: "(info)", met: true });
  for (const api of ["gRPC", "REST"]) {
    const fr = measurements.find((m) => m.name === `fleetrun Execute (${api})`);
    if (fr && s2) {
      const r = fr.median / s2.median;
      checks.push({ name: `Execute (${api}) / bare ssh2 floor`, value: r, unit: "x", target: `≤ ${LATENCY_TARGET}`, met: r <= LATENCY_TARGET });
    }
    if (fr && cm) {
      const r = cm.median / fr.median;
      checks.push({ name: `ControlMaster / Execute (${api})`, value: r, unit: "x", target: `≥ ${CONTROLMASTER_TARGET}`, met: r >= CONTROLMASTER_TARGET });
    }
  }
  return {
    title: `Sequential latency: ${count} × \`true\` on one machine`,
    measurements,
    checks,
    notes: [
      "The floor, both Execute rows and the ControlMaster row are interleaved call by call (after warm-up calls of each); the OpenSSH rows include the client process start-up of every call; new-connection rows: at most 20 calls.",
      ...stages.lines,
    ],
    data: { stages: stages.medians },
  };
}

/**
 * One Execute's way through the service, stage by stage: a service at log
 * level debug logs each waiting command's stage durations (engine entry to
 * answer); the rest of the client's time is outside the engine (HTTP/2,
 * auth, limiter, decode and encode). Medians over `count` gRPC calls.
 */
async function stageBreakdown(opts: LatencyOptions, host: string, count: number, log: (l: string) => void): Promise<{ lines: string[]; medians: Record<string, number> }> {
  const svc = await startServiceProcess({ dataDir: opts.dataDir + "-stages", token: opts.token, env: { FLEETRUN_LOG_LEVEL: "debug" } });
  const grpc = new GrpcClient(svc.url, opts.token);
  const perStage = new Map<string, number[]>();
  const client: number[] = [];
  try {
    const [id] = await registerFleet(svc, { ...opts.fleet, addresses: [host] }, opts.user);
    for (let i = 0; i < WARMUP + count; i++) {
      const t0 = now();
      const r = await grpc.unary(CommandService.method.execute, { machineId: id as string, command: "true" });
      const ms = now() - t0;
      if (r.status !== CommandStatus.COMPLETED) throw new Error(`Execute failed: ${r.status}`);
      if (i >= WARMUP) client.push(ms);
    }
    const deadline = Date.now() + 5_000;
    let lines: Record<string, number>[] = [];
    for (;;) {
      lines = svc
        .output()
        .split("\n")
        .filter((l) => l.includes('"command stages"'))
        .map((l) => (JSON.parse(l) as { stages_ms: Record<string, number> }).stages_ms);
      if (lines.length >= WARMUP + count || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const st of lines.slice(WARMUP)) {
      for (const [k, v] of Object.entries(st)) perStage.set(k, [...(perStage.get(k) ?? []), v]);
    }
  } finally {
    grpc.close();
    await svc.stop();
  }
  const medians: Record<string, number> = {};
  for (const [k, v] of perStage) medians[k] = summarize(v).median;
  const clientMedian = summarize(client).median;
  medians.client = clientMedian;
  medians.outside_engine = clientMedian - (medians.total ?? 0);
  const out = [`Stages of one Execute (gRPC), median of ${client.length}, ms since the previous stage (a service at log level debug):`];
  for (const [k, v] of Object.entries(medians)) if (k !== "total" && k !== "client" && k !== "outside_engine") out.push(`    ${k.padEnd(16)} ${v.toFixed(2)}`);
  out.push(`    engine total     ${(medians.total ?? NaN).toFixed(2)}`);
  out.push(`    outside engine   ${medians.outside_engine.toFixed(2)} (client median ${clientMedian.toFixed(2)} − engine total: HTTP/2, auth, limiter, decode, encode)`);
  for (const l of out) log(l);
  return { lines: out, medians };
}
