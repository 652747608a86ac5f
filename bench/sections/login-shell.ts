/**
 * Section "login": what one SSH session costs on the target per login user,
 * before any tool is compared. sshd runs every command through the user's
 * login shell, and bash sources ~/.bashrc for commands that arrive over SSH:
 * a heavy ~/.bashrc (e.g. `pyenv init`) is paid by every tool on every
 * command, and can dwarf what is being compared.
 */
import { onCleanup } from "../lib/cleanup.ts";
import { connect, exec } from "../lib/ssh2-client.ts";
import { now, summarize } from "../lib/stats.ts";
import type { Measurement, SectionResult } from "../lib/types.ts";

export interface LoginShellOptions {
  fleet: { port: number; addresses: string[]; clientKey: { privateKey: string }; hostKeys: { algorithm: string; fingerprint: string }[] };
  users: string[];
  /** The user the comparison runs as. */
  benchUser: string;
  log: (line: string) => void;
}

const WARMUP = 2;
const COUNT = 10;

export async function runLoginShell(opts: LoginShellOptions): Promise<SectionResult> {
  const ed = opts.fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519");
  if (!ed) throw new Error("the fleet serves no ed25519 host key");
  const host = opts.fleet.addresses[0] as string;
  const measurements: Measurement[] = [];
  for (const user of opts.users) {
    const client = await connect({ host, port: opts.fleet.port, username: user, privateKey: opts.fleet.clientKey.privateKey, fingerprint: ed.fingerprint });
    const close = onCleanup(`ssh2 login check (${user})`, () => void client.end());
    try {
      const samples: number[] = [];
      for (let i = 0; i < WARMUP + COUNT; i++) {
        const t0 = now();
        const r = await exec(client, "true");
        if (r.code !== 0) throw new Error(`exec true as ${user}: exit ${r.code} ${r.stderr}`);
        if (i >= WARMUP) samples.push(now() - t0);
      }
      const s = summarize(samples);
      measurements.push({ name: `session as ${user}`, detail: `ssh2 exec('true') on one open connection as ${user} (login shell start-up included)`, samples, median: s.median, p95: s.p95 });
      opts.log(`  session as ${user.padEnd(8)} median ${s.median.toFixed(1)} ms`);
    } finally {
      await close();
    }
  }
  return {
    title: `Target check: one SSH session, per login user (median of ${COUNT})`,
    measurements,
    checks: [],
    notes: [
      `The comparison runs as ${opts.benchUser} (BENCH_USER). sshd starts every command through the login shell; bash reads ~/.bashrc for commands over SSH, so whatever that file does is paid by every tool on every command.`,
    ],
  };
}
