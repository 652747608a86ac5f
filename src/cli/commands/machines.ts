/**
 * `fleetrun machines list|get|add|test|rm|label`: the registry of SSH targets.
 * Secrets (private key, passphrase, password) are read from files or stdin,
 * never taken from the command line, and never printed.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { CreateMachineRequestSchema } from "../../gen/fleetrun/v1/machine_pb.js";
import { HostKeyPolicy, TestMachineResponseSchema } from "../../gen/fleetrun/v1/machine_pb.js";
import { encodeMessage } from "../../rest/json-codec.ts";
import { UsageError } from "../errors.ts";
import { EXIT } from "../exit-codes.ts";
import { formatLabels, printJson, renderFields, renderTable } from "../output.ts";
import { formatDuration, parseIntFlag, parseLabelChanges, parseSelector } from "../parse.ts";
import { listAllMachines, openSession, resolveMachine } from "../session.ts";
import type { GlobalOptions } from "../session.ts";
import { MACHINE_HEAD, machineFields, machineJson, machineRow } from "../views.ts";

type Opts = Record<string, unknown>;

export async function listAction(_args: string[], opts: Opts, globals: GlobalOptions): Promise<number> {
  const selector = typeof opts.selector === "string" ? Object.entries(parseSelector([opts.selector])).map(([k, v]) => `${k}=${v}`).join(",") : undefined;
  const s = openSession(globals);
  try {
    const machines = await listAllMachines(s.fleet, selector);
    if (s.out.mode !== "table") printJson(s.out, machines.map(machineJson), machines.map(machineJson));
    else if (machines.length === 0) s.out.note(selector ? `no machine carries ${selector}` : "no machines yet: fleetrun machines add --help");
    else s.out.write(renderTable(s.out, MACHINE_HEAD, machines.map(machineRow)));
    return EXIT.ok;
  } finally {
    s.fleet.close();
  }
}

export async function getAction(args: string[], _opts: Opts, globals: GlobalOptions): Promise<number> {
  const s = openSession(globals);
  try {
    const m = await resolveMachine(s.fleet, args[0]!);
    if (s.out.mode === "table") s.out.write(renderFields(s.out, machineFields(m)));
    else printJson(s.out, machineJson(m));
    return EXIT.ok;
  } finally {
    s.fleet.close();
  }
}

interface AddOptions {
  host: string;
  port: string;
  user: string;
  key?: string;
  passphraseFile?: string;
  passwordFile?: string;
  fingerprint?: string;
  hostKeyAlgorithm?: string;
  tofu?: boolean;
  insecureAcceptAny?: boolean;
  label: string[];
}

/** `~/x` as the shell would expand it (for quoted paths). */
function expandHome(file: string): string {
  return file === "~" || file.startsWith("~/") ? path.join(os.homedir(), file.slice(1)) : file;
}

/** A secret from a file, or from stdin for `-`; one trailing newline dropped. */
function readSecret(file: string, flag: string): string {
  try {
    const text = fs.readFileSync(file === "-" ? 0 : expandHome(file), "utf8");
    return text.replace(/\r?\n$/, "");
  } catch (e) {
    throw new UsageError(`${flag}: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/**
 * The host-key part of a new machine: a pin (`--fingerprint`), trust on first
 * use (`--tofu`), or no check at all (`--insecure-accept-any`): one of them,
 * said out loud.
 */
export function hostKeyFields(opts: Pick<AddOptions, "fingerprint" | "hostKeyAlgorithm" | "tofu" | "insecureAcceptAny">): Partial<MessageInitShape<typeof CreateMachineRequestSchema>> {
  const chosen = [opts.fingerprint !== undefined, opts.tofu === true, opts.insecureAcceptAny === true].filter(Boolean).length;
  if (chosen !== 1) {
    throw new UsageError("give the host key with --fingerprint SHA256:… (ssh-keyscan HOST | ssh-keygen -lf -), or choose --tofu (or --insecure-accept-any)");
  }
  if (opts.fingerprint === undefined) {
    if (opts.hostKeyAlgorithm !== undefined) throw new UsageError("--host-key-algorithm goes with --fingerprint");
    return { hostKeyPolicy: opts.tofu === true ? HostKeyPolicy.TOFU : HostKeyPolicy.INSECURE_ACCEPT_ANY };
  }
  return {
    hostKeyFingerprint: opts.fingerprint,
    hostKeyPolicy: HostKeyPolicy.PINNED,
    ...(opts.hostKeyAlgorithm !== undefined ? { hostKeyAlgorithm: opts.hostKeyAlgorithm } : {}),
  };
}

export async function addAction(args: string[], raw: Opts, globals: GlobalOptions): Promise<number> {
  const opts = raw as unknown as AddOptions;
  if (opts.key === undefined && opts.passwordFile === undefined) throw new UsageError("give a private key (--key ~/.ssh/id_ed25519) or a password (--password-file FILE)");
  if (opts.passphraseFile !== undefined && opts.key === undefined) throw new UsageError("--passphrase-file goes with --key");
  if (opts.passphraseFile === "-" && opts.passwordFile === "-") throw new UsageError("only one of --passphrase-file and --password-file can read stdin");
  const labels: Record<string, string> = {};
  for (const l of opts.label) {
    const eq = l.indexOf("=");
    if (eq <= 0) throw new UsageError(`--label: expected KEY=VALUE, got ${JSON.stringify(l)}`);
    labels[l.slice(0, eq)] = l.slice(eq + 1);
  }
  const request: MessageInitShape<typeof CreateMachineRequestSchema> = {
    name: args[0]!,
    host: opts.host,
    port: parseIntFlag(opts.port, "--port", 1, 65535),
    username: opts.user,
    labels,
    ...hostKeyFields(opts),
    ...(opts.key !== undefined ? { privateKey: readSecret(opts.key, "--key") + "\n" } : {}),
    ...(opts.passphraseFile !== undefined ? { passphrase: readSecret(opts.passphraseFile, "--passphrase-file") } : {}),
    ...(opts.passwordFile !== undefined ? { password: readSecret(opts.passwordFile, "--password-file") } : {}),
  };
  const s = openSession(globals);
  try {
    const m = await s.fleet.machines.createMachine(request);
    if (s.out.mode !== "table") printJson(s.out, machineJson(m));
    else s.out.write(renderFields(s.out, machineFields(m)));
    if (m.hostKeyPolicy === HostKeyPolicy.TOFU) {
      s.out.note(`fleetrun: ${m.name} pins the host key its first connection sees: run fleetrun machines test ${m.name} and compare the key with ssh-keygen -lf on the host`);
    } else if (m.hostKeyPolicy === HostKeyPolicy.INSECURE_ACCEPT_ANY) {
      s.out.note(`fleetrun: ${m.name} accepts any host key: whoever can intercept its connections can pose as it`);
    }
    return EXIT.ok;
  } finally {
    s.fleet.close();
  }
}

export async function testAction(args: string[], _opts: Opts, globals: GlobalOptions): Promise<number> {
  const s = openSession(globals);
  try {
    const m = await resolveMachine(s.fleet, args[0]!);
    const r = await s.fleet.machines.testMachine({ id: m.id }, { timeoutMs: 120_000 });
    if (s.out.mode !== "table") printJson(s.out, { id: m.id, name: m.name, ...encodeMessage(TestMachineResponseSchema, r) });
    const pinned = r.hostKeyPinned ? ", pinned now" : "";
    const key = r.hostKeyFingerprint !== undefined ? `host key ${r.hostKeyFingerprint}${r.hostKeyAlgorithm ? ` (${r.hostKeyAlgorithm}${pinned})` : pinned}` : "";
    if (r.ok) {
      if (s.out.mode === "table") s.out.write(`${s.out.paint("green", "ok")}: ${m.name} (${m.id}) answered in ${formatDuration(Number(r.latency ?? 0n))}${key ? `, ${key}` : ""}\n`);
      return EXIT.ok;
    }
    s.out.note(`fleetrun: ${m.name} (${m.id}): ${r.error?.code ?? "failed"}: ${r.error?.message ?? ""}${key ? ` (${key})` : ""}`);
    return EXIT.someFailed;
  } finally {
    s.fleet.close();
  }
}

export async function rmAction(args: string[], opts: Opts, globals: GlobalOptions): Promise<number> {
  const s = openSession(globals);
  try {
    const m = await resolveMachine(s.fleet, args[0]!);
    const r = await s.fleet.machines.deleteMachine({ id: m.id, force: opts.force === true }, { timeoutMs: 120_000 });
    if (s.out.mode !== "table") printJson(s.out, { id: m.id, name: m.name, deleted: r.deleted });
    else s.out.write(`deleted ${m.name} (${m.id})\n`);
    return EXIT.ok;
  } finally {
    s.fleet.close();
  }
}

export async function labelAction(args: string[], _opts: Opts, globals: GlobalOptions): Promise<number> {
  const [ref, ...changes] = args;
  const { set, remove } = parseLabelChanges(changes);
  const s = openSession(globals);
  try {
    const m = await resolveMachine(s.fleet, ref!);
    const updated = await s.fleet.machines.updateMachine({ id: m.id, mergeLabels: set, removeLabels: remove });
    if (s.out.mode !== "table") printJson(s.out, machineJson(updated));
    else s.out.write(`${updated.name}: ${formatLabels(updated.labels)}\n`);
    return EXIT.ok;
  } finally {
    s.fleet.close();
  }
}
