/**
 * Section "warm": the floor under fleetrun's warm batch. One process opens
 * an ssh2 connection to every machine first (not timed), then times, with
 * all machines at once:
 *  - a plain exec of `uptime` (what the bare ssh2 fan-out does, minus the
 *    connection set-up), and
 *  - fleetrun's own remote scripts for the same command (start + follow on
 *    one channel, then collect on a second: src/exec/remote-script.ts),
 *    without the service around them.
 * The gap between the two is the cost of the remote job wrapper on the
 * targets; the gap between the second and fleetrun's warm batch is the
 * service's own overhead.
 */
import { randomBytes } from "node:crypto";
import type { Client } from "ssh2";
import { SCRIPT_COMMAND_LINE, cleanupScript, collectScript, jobDirFor, newNonce, startScript } from "../../src/exec/remote-script.ts";
import { onCleanup } from "../lib/cleanup.ts";
import { connect } from "../lib/ssh2-client.ts";
import { machineBusyMs, processCpuMs } from "../lib/proc.ts";
import { median, now } from "../lib/stats.ts";
import type { Measurement, SectionResult } from "../lib/types.ts";

export interface WarmFloorOptions {
  fleet: { port: number; addresses: string[]; clientKey: { privateKey: string }; hostKeys: { algorithm: string; fingerprint: string }[] };
  user: string;
  runs: number;
  log: (line: string) => void;
}

const CONNECT_CONCURRENCY = 16;
const EXEC_TIMEOUT_MS = 120_000;

function execWithStdin(client: Client, command: string, stdin: string | null): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`exec timed out after ${EXEC_TIMEOUT_MS} ms`)), EXEC_TIMEOUT_MS);
    client.exec(command, (err, channel) => {
      if (err) {
        clearTimeout(timer);
        reject(err);
        return;
      }
      let stdout = "";
      let code: number | null = null;
      channel.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
      channel.stderr.on("data", () => {});
      channel.on("exit", (c: number | null) => (code = c));
      channel.on("error", (e: Error) => {
        clearTimeout(timer);
        reject(e);
      });
      channel.on("close", () => {
        clearTimeout(timer);
        resolve({ code, stdout });
      });
      if (stdin !== null) channel.end(stdin);
      else channel.end();
    });
  });
}

/** Job directories the scripts variant made, removed (untimed) after each round, as the service does once it stored an outcome. */
const madeJobs: { client: Client; jobDir: string }[] = [];

async function removeMadeJobs(): Promise<void> {
  await Promise.all(
    madeJobs.splice(0).map(({ client, jobDir }) => execWithStdin(client, SCRIPT_COMMAND_LINE, cleanupScript(newNonce(), jobDir)).catch(() => undefined)),
  );
}

/** fleetrun's start script for `uptime`, then its collect script; true when the job ended with status 0. */
async function viaScripts(client: Client): Promise<boolean> {
  const jobDir = jobDirFor(`cmd_bench${randomBytes(8).toString("hex")}`);
  madeJobs.push({ client, jobDir });
  const nonce = newNonce();
  const start = await execWithStdin(
    client,
    SCRIPT_COMMAND_LINE,
    startScript({ nonce, jobDir, command: "uptime", cwd: null, env: {}, user: null, timeoutMs: 3_600_000, graceMs: 5_000 }),
  );
  if (!start.stdout.includes(`${nonce} started`) || !start.stdout.includes("load average")) return false;
  const n2 = newNonce();
  const collect = await execWithStdin(client, SCRIPT_COMMAND_LINE, collectScript(n2, jobDir));
  return collect.stdout.includes(`${n2} status 0`);
}

export async function runWarmFloor(opts: WarmFloorOptions): Promise<SectionResult> {
  const { fleet, log } = opts;
  const ed = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519");
  if (!ed) throw new Error("the fleet serves no ed25519 host key");
  const n = fleet.addresses.length;

  const clients: Client[] = [];
  const closeAll = onCleanup("warm-floor ssh2 connections", () => {
    for (const c of clients) c.end();
  });
  try {
    let next = 0;
    await Promise.all(
      Array.from({ length: CONNECT_CONCURRENCY }, async () => {
        for (;;) {
          const host = fleet.addresses[next++];
          if (host === undefined) return;
          clients.push(await connect({ host, port: fleet.port, username: opts.user, privateKey: fleet.clientKey.privateKey, fingerprint: ed.fingerprint }));
        }
      }),
    );
    log(`  ${n} ssh2 connections open`);

    const variants: { key: string; name: string; detail: string; once: (c: Client) => Promise<boolean> }[] = [
      {
        key: "plain",
        name: "ssh2 warm, plain exec",
        detail: `exec('uptime') on ${n} already open ssh2 connections at once`,
        once: async (c) => (await execWithStdin(c, "uptime", null)).code === 0,
      },
      {
        key: "scripts",
        name: "ssh2 warm, fleetrun scripts",
        detail: `fleetrun's remote start script (sh -s, job dir, setsid supervisor, flock, tail -f follow) + collect script for uptime, on ${n} open connections at once, no service`,
        once: viaScripts,
      },
    ];
    const measurements: Measurement[] = [];
    for (const v of variants) {
      const samples: number[] = [];
      const cpu: number[] = [];
      const machine: number[] = [];
      let okRuns = 0;
      // One untimed round first (JIT, caches on the targets).
      await Promise.all(clients.map((c) => v.once(c).catch(() => false)));
      await removeMadeJobs();
      for (let r = 0; r < opts.runs; r++) {
        const cpu0 = processCpuMs(process.pid) ?? 0;
        const busy0 = machineBusyMs();
        const t0 = now();
        const ok = await Promise.all(clients.map((c) => v.once(c).catch(() => false)));
        samples.push(now() - t0);
        cpu.push((processCpuMs(process.pid) ?? 0) - cpu0);
        machine.push(machineBusyMs() - busy0);
        const good = ok.filter(Boolean).length;
        await removeMadeJobs();
        if (good === n) okRuns++;
        log(`  ${v.key.padEnd(8)} ${((samples.at(-1) ?? 0) / 1000).toFixed(2)} s  ok ${good}/${n}`);
      }
      measurements.push({ name: v.name, detail: v.detail, samples, median: median(samples), clientCpuMs: cpu, machineCpuMs: machine, okRuns: `${okRuns}/${opts.runs}` });
    }
    return {
      title: `Warm floor: uptime on ${n} open connections (median of ${opts.runs})`,
      measurements,
      checks: [],
      notes: ["Compare with 'fleetrun warm' in the cold-batch table: scripts vs plain is the wrapper's cost on the targets, fleetrun warm vs scripts is the service's own."],
    };
  } finally {
    await closeAll();
  }
}
