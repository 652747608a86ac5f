/**
 * Section "latency": sequential `true` on one machine, one at a time:
 * fleetrun Execute over REST (warm) against ssh2 on one open connection and
 * the OpenSSH client with and without connection multiplexing.
 */
import { execFile, spawn } from "node:child_process";
import path from "node:path";
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

  // fleetrun: Execute over REST on a warm service (pooled connection).
  {
    const svc = await startServiceProcess({ dataDir: opts.dataDir, token: opts.token });
    try {
      const [id] = await registerFleet(svc, { ...fleet, addresses: [host] }, opts.user);
      const samples = await series("fleetrun Execute (REST)", count, log, async () => {
        const t0 = now();
        const r = await svc.rest("POST", "/v1/commands", { machine_id: id, command: "true" });
        const ms = now() - t0;
        if (r.status !== 200 || r.body?.data?.status !== "completed" || r.body?.data?.exit_code !== 0) {
          throw new Error(`Execute failed: ${r.status} ${r.text.slice(0, 300)}`);
        }
        return ms;
      });
      measurements.push(row("fleetrun Execute", `POST /v1/commands {"command":"true"} on one machine, one at a time, warm (after ${WARMUP} warm-up calls)`, samples));
    } finally {
      await svc.stop();
    }
  }

  // ssh2 on one open connection.
  {
    const client = await connect({ host, port: fleet.port, username: opts.user, privateKey: fleet.clientKey.privateKey, fingerprint: ed.fingerprint });
    const close = onCleanup("ssh2 latency connection", () => void client.end());
    try {
      const samples = await series("ssh2 exec, one connection", count, log, async () => {
        const t0 = now();
        const r = await exec(client, "true");
        const ms = now() - t0;
        if (r.code !== 0) throw new Error(`ssh2 exec true: exit ${r.code} ${r.stderr}`);
        return ms;
      });
      measurements.push(row("ssh2 exec (pooled)", "ssh2 exec('true') on one open connection, TCP_NODELAY", samples));
    } finally {
      await close();
    }
  }

  // OpenSSH: a new connection per command, both key exchanges.
  for (const [name, extra, detail] of [
    ["ssh host true", [] as string[], "a new OpenSSH connection per command (default KEX sntrup761x25519)"],
    ["ssh host true, curve25519", CURVE25519, "a new OpenSSH connection per command, -o KexAlgorithms=curve25519-sha256"],
  ] as const) {
    const argv = ["ssh", ...sshOptions(files, fleet.port, [...extra]), "-l", opts.user, host, "true"];
    const samples = await series(name, count, log, async () => {
      const r = await execFileTimed(argv);
      if (r.code !== 0) throw new Error(`${name}: exit ${r.code} ${r.stderr}`);
      return r.ms;
    });
    measurements.push(row(name, detail, samples));
  }

  // OpenSSH multiplexed over a ControlMaster.
  {
    const sock = path.join(files.dir, "cm.sock");
    const mux = ["-o", `ControlPath=${sock}`];
    const master = spawn("ssh", [...sshOptions(files, fleet.port, CURVE25519), ...mux, "-o", "ControlMaster=yes", "-N", "-l", opts.user, host], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let masterErr = "";
    master.stderr.on("data", (d: Buffer) => (masterErr += d.toString()));
    const exited = new Promise<void>((r) => master.once("exit", () => r()));
    const stopMaster = onCleanup("ssh control master", async () => {
      if (master.exitCode === null && master.signalCode === null) master.kill("SIGTERM");
      await exited;
    });
    try {
      const deadline = Date.now() + 20_000;
      for (;;) {
        const r = await execFileTimed(["ssh", ...sshOptions(files, fleet.port), ...mux, "-O", "check", "-l", opts.user, host]);
        if (r.code === 0) break;
        if (master.exitCode !== null || Date.now() > deadline) throw new Error(`ControlMaster did not come up: ${masterErr}`);
        await new Promise((res) => setTimeout(res, 50));
      }
      const argv = ["ssh", ...sshOptions(files, fleet.port), ...mux, "-o", "ControlMaster=no", "-l", opts.user, host, "true"];
      const samples = await series("ssh host true, ControlMaster", count, log, async () => {
        const r = await execFileTimed(argv);
        if (r.code !== 0) throw new Error(`ssh via ControlMaster: exit ${r.code} ${r.stderr}`);
        return r.ms;
      });
      measurements.push(row("ssh host true, ControlMaster", "OpenSSH multiplexed over an open ControlMaster connection (includes the ssh client's own start-up)", samples));
    } finally {
      await stopMaster();
    }
  }

  const checks: Check[] = [];
  const fr = measurements.find((m) => m.name === "fleetrun Execute");
  const s2 = measurements.find((m) => m.name === "ssh2 exec (pooled)");
  if (fr && s2) checks.push({ name: "fleetrun Execute / ssh2 pooled exec", value: fr.median / s2.median, unit: "x", target: "(info)", met: true });
  return {
    title: `Sequential latency: ${count} × \`true\` on one machine`,
    measurements,
    checks,
    notes: ["Each variant runs its warm-up calls first; the OpenSSH rows include the client process start-up of every call."],
  };
}
