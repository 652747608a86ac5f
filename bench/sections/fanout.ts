/**
 * Section "fanout": a cold batch of `uptime` on every machine, fleetrun
 * against the bare ssh2 floor and the usual OpenSSH-based tools.
 */
import { readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { formatProfile, summarizeProfile, type ProfileSummary } from "../lib/cpu-profile.ts";
import { listenerChildren, machineBusyMs, processCpuMs, run, type RunResult } from "../lib/proc.ts";
import { registerFleet, startServiceProcess, NODE, ROOT, type ServiceProcess } from "../lib/service.ts";
import { median, now } from "../lib/stats.ts";
import { CURVE25519, sshOptions, type ToolFiles } from "../lib/tools.ts";
import type { Check, Measurement, SectionResult } from "../lib/types.ts";

export interface FanoutFleet {
  port: number;
  addresses: string[];
  clientKey: { privateKey: string };
  hostKeys: { algorithm: string; fingerprint: string }[];
  workDir: string;
}

export interface FanoutOptions {
  fleet: FanoutFleet;
  files: ToolFiles;
  runs: number;
  /** Login user on every machine. */
  user: string;
  /** Directory for the service's data (SQLite) */
  dataDir: string;
  token: string;
  /** Write a CPU profile of one extra cold fleetrun run into this directory. */
  profileDir: string | null;
  log: (line: string) => void;
  /** Returns false for a tool to leave out (BENCH_SKIP). */
  enabled: (tool: string) => boolean;
}

const TOOL_TIMEOUT_MS = 300_000;
const IDLE_DEADLINE_MS = 20_000;

interface Sample {
  wallMs: number;
  clientCpuMs: number | null;
  machineCpuMs: number;
  ok: number;
  /** A short reason when not every machine answered. */
  problem: string | null;
}

/** Waits until the fleet's sshd listeners have no per-connection children left. */
async function waitFleetIdle(fleet: FanoutFleet, log: (line: string) => void): Promise<void> {
  const deadline = Date.now() + IDLE_DEADLINE_MS;
  for (;;) {
    const left = listenerChildren(fleet.workDir).length;
    if (left === 0) return;
    if (Date.now() > deadline) {
      log(`  (fleet still has ${left} sshd session processes after ${IDLE_DEADLINE_MS} ms; measuring anyway)`);
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

function fromRun(r: RunResult, ok: number, total: number): Omit<Sample, "machineCpuMs"> {
  const problem =
    r.timedOut ? `timed out after ${TOOL_TIMEOUT_MS} ms` : ok === total ? null : `${total - ok} of ${total} failed (exit ${r.code}): ${firstLine(r.stderr)}`;
  return { wallMs: r.wallMs, clientCpuMs: r.cpuMs, ok, problem };
}

function firstLine(text: string): string {
  return (text.split("\n").find((l) => l.trim() !== "") ?? "").slice(0, 200);
}

function count(text: string, re: RegExp): number {
  return text.split("\n").filter((l) => re.test(l)).length;
}

async function measured(fn: () => Promise<Omit<Sample, "machineCpuMs">>): Promise<Sample> {
  const busy0 = machineBusyMs();
  const s = await fn();
  return { ...s, machineCpuMs: machineBusyMs() - busy0 };
}

export async function runFanout(opts: FanoutOptions): Promise<SectionResult> {
  const { fleet, files, log } = opts;
  const n = fleet.addresses.length;
  const ed = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519");
  if (!ed) throw new Error("the fleet serves no ed25519 host key");

  // Machines are registered once; every cold run is a fresh service process
  // over the same data dir, so no pooled SSH connection exists yet.
  log(`registering ${n} machines…`);
  let ids: string[] = [];
  {
    const svc = await startServiceProcess({ dataDir: opts.dataDir, token: opts.token });
    try {
      ids = await registerFleet(svc, fleet, opts.user);
    } finally {
      await svc.stop();
    }
  }
  const batchBody = { machine_ids: ids, command: "uptime", max_concurrency: n };

  const batch = async (svc: ServiceProcess): Promise<Omit<Sample, "machineCpuMs">> => {
    const cpu0 = processCpuMs(svc.pid);
    const t0 = now();
    const r = await svc.rest("POST", "/v1/commands/batch", batchBody);
    const wallMs = now() - t0;
    const cpu1 = processCpuMs(svc.pid);
    const ok = r.status === 200 ? Number(r.body?.meta?.succeeded ?? 0) : 0;
    let problem: string | null = null;
    if (r.status !== 200) problem = `HTTP ${r.status}: ${r.text.slice(0, 200)}`;
    else if (ok !== n) {
      const bad = Object.values(r.body.data as Record<string, { status: string; error: { code: string; message: string } | null }>).find(
        (c) => c.status !== "completed",
      );
      problem = `${n - ok} of ${n} not ok, e.g. ${bad?.status} ${bad?.error?.code ?? ""} ${bad?.error?.message ?? ""}`;
    }
    return { wallMs, clientCpuMs: cpu0 !== null && cpu1 !== null ? cpu1 - cpu0 : null, ok, problem };
  };

  const specFile = path.join(files.dir, "ssh2-fanout.json");
  writeFileSync(
    specFile,
    JSON.stringify({ hosts: fleet.addresses, port: fleet.port, username: opts.user, privateKeyFile: files.keyFile, fingerprint: ed.fingerprint, command: "uptime" }),
  );
  const ssh2Wall: number[] = [];

  const tools: { key: string; name: string; detail: string; note?: string; run: () => Promise<Omit<Sample, "machineCpuMs">> }[] = [
    {
      key: "ssh2",
      name: "bare ssh2 fan-out",
      detail: `bench/ssh2-fanout.ts: ssh2 connect + exec uptime on ${n} hosts at once, TCP_NODELAY, pinned ed25519 (time from first connect; process start-up excluded)`,
      run: async () => {
        const r = await run([NODE, path.join(ROOT, "bench/ssh2-fanout.ts"), specFile], { timeoutMs: TOOL_TIMEOUT_MS });
        const line = r.stdout.trim().split("\n").at(-1) ?? "";
        let parsed: { ms: number; ok: number; errors: string[] } | null = null;
        try {
          parsed = JSON.parse(line) as { ms: number; ok: number; errors: string[] };
        } catch {
          parsed = null;
        }
        if (parsed === null) return { wallMs: r.wallMs, clientCpuMs: r.cpuMs, ok: 0, problem: `no result: ${firstLine(r.stderr)}` };
        ssh2Wall.push(r.wallMs);
        return {
          wallMs: parsed.ms,
          clientCpuMs: r.cpuMs,
          ok: parsed.ok,
          problem: parsed.ok === n ? null : `${n - parsed.ok} failed: ${parsed.errors[0] ?? ""}`,
        };
      },
    },
    {
      key: "pssh",
      name: "parallel-ssh",
      detail: `parallel-ssh -p ${n} -h hosts -l ${opts.user} -x "<ssh options>" uptime (OpenSSH client, default KEX)`,
      run: async () => {
        const r = await run(
          ["parallel-ssh", "-p", String(n), "-t", "120", "-h", files.hostsFile, "-l", opts.user, "-x", sshOptions(files, fleet.port).join(" "), "uptime"],
          { timeoutMs: TOOL_TIMEOUT_MS },
        );
        return fromRun(r, count(r.stdout, /\[SUCCESS\]/), n);
      },
    },
    {
      key: "openssh",
      name: "OpenSSH xargs -P",
      detail: `xargs -P ${n} ssh <options> ${opts.user}@HOST uptime (default KEX: sntrup761x25519)`,
      run: async () => {
        const r = await run(["xargs", "-a", files.hostsFile, "-P", String(n), "-I{}", "ssh", ...sshOptions(files, fleet.port), "-l", opts.user, "{}", "uptime"], {
          timeoutMs: TOOL_TIMEOUT_MS,
        });
        return fromRun(r, count(r.stdout, /load average/), n);
      },
    },
    {
      key: "openssh-curve",
      name: "OpenSSH xargs -P, curve25519",
      detail: `as above with -o KexAlgorithms=curve25519-sha256 (the KEX ssh2 negotiates)`,
      run: async () => {
        const r = await run(
          ["xargs", "-a", files.hostsFile, "-P", String(n), "-I{}", "ssh", ...sshOptions(files, fleet.port, CURVE25519), "-l", opts.user, "{}", "uptime"],
          { timeoutMs: TOOL_TIMEOUT_MS },
        );
        return fromRun(r, count(r.stdout, /load average/), n);
      },
    },
    {
      key: "ansible",
      name: "Ansible",
      detail: `ansible all -i inventory -m command -a uptime -f ${n} -o (pipelining on, python3 given, host key checking off; includes Ansible's own Python start-up)`,
      run: async () => {
        const r = await run(["ansible", "all", "-i", files.inventoryFile, "-m", "command", "-a", "uptime", "-f", String(n), "-o"], {
          timeoutMs: TOOL_TIMEOUT_MS,
          env: {
            ...process.env,
            ANSIBLE_HOST_KEY_CHECKING: "False",
            ANSIBLE_PIPELINING: "True",
            ANSIBLE_HOME: path.join(files.dir, "ansible-home"),
            ANSIBLE_LOCAL_TEMP: path.join(files.dir, "ansible-tmp"),
            ANSIBLE_SSH_ARGS: "-F /dev/null -o ControlMaster=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            ANSIBLE_TIMEOUT: "60",
            ANSIBLE_NOCOLOR: "1",
            ANSIBLE_DEPRECATION_WARNINGS: "False",
          },
        });
        return fromRun(r, count(r.stdout, /\| CHANGED \| rc=0/), n);
      },
    },
  ];

  const samples = new Map<string, Sample[]>();
  const push = (key: string, s: Sample) => {
    const list = samples.get(key) ?? [];
    list.push(s);
    samples.set(key, list);
    log(`  ${key.padEnd(16)} ${(s.wallMs / 1000).toFixed(2).padStart(7)} s  ok ${s.ok}/${n}${s.problem ? `  PROBLEM: ${s.problem}` : ""}`);
  };

  for (let round = 1; round <= opts.runs; round++) {
    log(`round ${round}/${opts.runs}`);
    if (opts.enabled("fleetrun")) {
      await waitFleetIdle(fleet, log);
      const svc = await startServiceProcess({ dataDir: opts.dataDir, token: opts.token });
      try {
        push("fleetrun-cold", await measured(() => batch(svc)));
        push("fleetrun-warm", await measured(() => batch(svc)));
      } finally {
        await svc.stop();
      }
    }
    for (const tool of tools) {
      if (!opts.enabled(tool.key)) continue;
      await waitFleetIdle(fleet, log);
      push(tool.key, await measured(tool.run));
    }
  }

  let profileNote: string | null = null;
  let profile: ProfileSummary | null = null;
  if (opts.profileDir !== null && opts.enabled("fleetrun")) {
    await waitFleetIdle(fleet, log);
    const svc = await startServiceProcess({
      dataDir: opts.dataDir,
      token: opts.token,
      nodeArgs: ["--cpu-prof", `--cpu-prof-dir=${opts.profileDir}`],
    });
    try {
      const t0 = process.hrtime.bigint() / 1000n;
      const s = await measured(() => batch(svc));
      const t1 = process.hrtime.bigint() / 1000n;
      log(`  profiled cold run: ${(s.wallMs / 1000).toFixed(2)} s (profiler overhead included; not counted)`);
      await svc.stop();
      const file = readdirSync(opts.profileDir)
        .filter((f) => f.endsWith(".cpuprofile") && f.includes(`.${svc.pid}.`))
        .map((f) => path.join(opts.profileDir as string, f))[0];
      if (file) {
        profile = summarizeProfile(file, { startUs: Number(t0), endUs: Number(t1) });
        profileNote = `CPU profile of one extra cold run (${(s.wallMs / 1000).toFixed(2)} s with the profiler on): ${path.relative(ROOT, file)}; summary below.`;
      }
    } finally {
      await svc.stop();
    }
  }

  const rows: { key: string; name: string; detail: string }[] = [
    { key: "fleetrun-cold", name: "fleetrun cold", detail: `POST /v1/commands/batch, ${n} machines, max_concurrency ${n}, fresh service process (no pooled connection)` },
    { key: "fleetrun-warm", name: "fleetrun warm", detail: "the same batch again right after (pooled connections)" },
    ...tools.map((t) => ({ key: t.key, name: t.name, detail: t.detail })),
  ];
  const measurements: Measurement[] = [];
  for (const row of rows) {
    const list = samples.get(row.key);
    if (!list || list.length === 0) continue;
    const good = list.filter((s) => s.problem === null);
    const use = good.length > 0 ? good : list;
    measurements.push({
      name: row.name,
      detail: row.detail,
      samples: use.map((s) => s.wallMs),
      median: median(use.map((s) => s.wallMs)),
      clientCpuMs: use.flatMap((s) => (s.clientCpuMs === null ? [] : [s.clientCpuMs])),
      machineCpuMs: use.map((s) => s.machineCpuMs),
      okRuns: `${good.length}/${list.length}`,
      ...(good.length < list.length ? { note: list.find((s) => s.problem)?.problem ?? "" } : {}),
    });
  }

  const med = (key: string): number | null => {
    const list = samples.get(key)?.filter((s) => s.problem === null);
    return list && list.length > 0 ? median(list.map((s) => s.wallMs)) : null;
  };
  const checks: Check[] = [];
  const cold = med("fleetrun-cold");
  const warm = med("fleetrun-warm");
  const ssh2 = med("ssh2");
  const pssh = med("pssh");
  if (cold !== null && ssh2 !== null) {
    const v = cold / ssh2;
    checks.push({ name: "fleetrun cold / bare ssh2", value: v, unit: "x", target: "≤ 1.3", met: v <= 1.3 });
  }
  if (cold !== null && pssh !== null) {
    const v = pssh / cold;
    checks.push({ name: "parallel-ssh / fleetrun cold", value: v, unit: "x", target: "≥ 3", met: v >= 3 });
  }
  if (ssh2 !== null && pssh !== null) {
    // The most any client can reach on this box: the floor's own lead over parallel-ssh.
    checks.push({ name: "parallel-ssh / bare ssh2 (ceiling)", value: pssh / ssh2, unit: "x", target: "(info)", met: true });
  }
  if (warm !== null) checks.push({ name: "fleetrun warm batch", value: warm, unit: "ms", target: "< 1500 ms", met: warm < 1500 });
  for (const key of ["openssh", "openssh-curve", "ansible"]) {
    const v = med(key);
    if (v !== null && cold !== null) {
      checks.push({ name: `${rows.find((r) => r.key === key)?.name} / fleetrun cold`, value: v / cold, unit: "x", target: "(info)", met: true });
    }
  }

  const notes = [
    "Every run uses the same loopback fleet; before each cold run the bench waits until the fleet has no SSH session left.",
    "CPU columns: 'client' is the tool's own processes (for fleetrun: the service process), 'machine' is all busy CPU on the host during the run (client + sshd + the commands), summed over both cores.",
    "OpenSSH 9.x negotiates sntrup761x25519-sha512 by default (about 120 ms of client CPU per connection here); ssh2 negotiates curve25519-sha256. The curve25519 row is the like-for-like OpenSSH figure.",
  ];
  if (ssh2Wall.length > 0) notes.push(`bare ssh2 including Node start-up: median ${(median(ssh2Wall) / 1000).toFixed(2)} s.`);
  if (profileNote) notes.push(profileNote);
  if (profile) notes.push("service CPU profile during the cold batch:\n" + formatProfile(profile));
  return { title: `Cold batch: uptime on ${n} machines (median of ${opts.runs})`, measurements, checks, notes, ...(profile ? { profile } : {}) };
}
