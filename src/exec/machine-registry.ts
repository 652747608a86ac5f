/**
 * The machine registry: validation of SSH targets, write-only credentials,
 * delete rules, and connection tests.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { AlreadyExistsError, FailedPreconditionError, FleetError, InvalidArgumentError, NotFoundError, TargetError } from "./errors.ts";
import { newId } from "./ids.ts";
import { HOST_KEY_POLICIES, type HostKeyPolicy, type MachineRecord, type MachineStore, type CommandStore, type Transport } from "./ports.ts";
import { userNameProblem } from "./shell-quote.ts";

export interface MachineInput {
  name?: string | undefined;
  host?: string | undefined;
  port?: number | undefined;
  username?: string | undefined;
  privateKey?: string | undefined;
  passphrase?: string | undefined;
  password?: string | undefined;
  hostKeyFingerprint?: string | undefined;
  hostKeyAlgorithm?: string | undefined;
  hostKeyPolicy?: HostKeyPolicy | undefined;
  labels?: Record<string, string> | undefined;
  clearLabels?: boolean | undefined;
  /** Labels to add or change, the others kept (update only). */
  mergeLabels?: Record<string, string> | undefined;
  /** Label keys to remove, the others kept (update only). */
  removeLabels?: string[] | undefined;
}

export interface TestResult {
  ok: boolean;
  latencyMs: number | null;
  error: { code: string; message: string } | null;
  hostKeyFingerprint: string | null;
  hostKeyAlgorithm: string | null;
  /** The machine's policy after the test (null: the built-in machine). */
  hostKeyPolicy: HostKeyPolicy | null;
  /** The machine was `tofu` and the test's connection recorded its first key. */
  hostKeyPinned: boolean;
}

/** The host key fields a machine ends up with. */
interface HostKeyState {
  policy: HostKeyPolicy;
  fingerprint: string | null;
  algorithm: string | null;
}

const NO_FINGERPRINT =
  "must not be empty: leave it out (or set host_key_policy tofu) to record the key at the first connection, or give the SHA256:… fingerprint `ssh-keygen -lf` prints";

/**
 * The policy rules, for create (`current` null) and update: `pinned` needs a
 * fingerprint; `tofu` and `insecure_accept_any` take none (on update they
 * drop the stored one: tofu records the key again at the next connection); a
 * fingerprint without a policy means `pinned`; an empty fingerprint is never
 * accepted.
 */
export function resolveHostKey(input: MachineInput, current: HostKeyState | null): HostKeyState {
  const fp = input.hostKeyFingerprint;
  if (fp === "") throw new InvalidArgumentError("host_key_fingerprint", NO_FINGERPRINT);
  if (input.hostKeyPolicy !== undefined && !HOST_KEY_POLICIES.includes(input.hostKeyPolicy)) {
    throw new InvalidArgumentError("host_key_policy", `must be one of ${HOST_KEY_POLICIES.join(", ")}`);
  }
  const algorithm = input.hostKeyAlgorithm === undefined ? undefined : input.hostKeyAlgorithm || null;
  const policy = input.hostKeyPolicy ?? (fp !== undefined ? "pinned" : (current?.policy ?? "tofu"));
  if (policy === "pinned") {
    const fingerprint = fp ?? current?.fingerprint ?? null;
    if (fingerprint === null) throw new InvalidArgumentError("host_key_fingerprint", "is required with host_key_policy pinned");
    // A new pin may be of another key type: learn it again unless given.
    const keepAlgorithm = fp === undefined || fp === current?.fingerprint;
    return { policy, fingerprint, algorithm: algorithm !== undefined ? algorithm : keepAlgorithm ? (current?.algorithm ?? null) : null };
  }
  if (fp !== undefined) {
    throw new InvalidArgumentError(
      "host_key_policy",
      `${policy} takes no host_key_fingerprint (tofu records the first key seen, insecure_accept_any checks none): use pinned with a fingerprint`,
    );
  }
  if (current !== null && input.hostKeyPolicy === undefined) return { ...current, algorithm: algorithm !== undefined ? algorithm : current.algorithm };
  return { policy, fingerprint: null, algorithm: algorithm ?? null };
}

export interface RegistryDeps {
  machines: MachineStore;
  commands: CommandStore;
  ssh: Transport;
  local: Transport;
  localMachine: MachineRecord | null;
  /** Returns why a private key cannot be used (never the key itself), or null. */
  checkPrivateKey: (key: string, passphrase: string | null) => string | null;
  /** Cancels one command (as `DELETE /v1/commands/{id}`) in the name of `by`; used by a forced delete. */
  cancelCommand?: ((id: string, by?: string) => Promise<void>) | undefined;
  /**
   * How long a forced delete waits for the machine's cancelled commands to end.
   * @default 15000
   */
  cancelWaitMs?: number | undefined;
}

const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$|^\[?[0-9A-Fa-f:.]+\]?$/;
const FINGERPRINT = /^SHA256:[A-Za-z0-9+/]{43}$/;
const LABEL_KEY = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$/;
const HOST_KEY_ALGORITHMS = new Set([
  "ssh-ed25519",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "ssh-rsa",
  "rsa-sha2-256",
  "rsa-sha2-512",
]);

export function validateLabels(labels: Record<string, string>, field = "labels"): void {
  const entries = Object.entries(labels);
  if (entries.length > 64) throw new InvalidArgumentError(field, "at most 64 labels");
  for (const [k, v] of entries) {
    if (!LABEL_KEY.test(k)) throw new InvalidArgumentError(field, `key ${JSON.stringify(k.slice(0, 64))} must match [A-Za-z0-9._/-], 1 to 63 characters`);
    if (typeof v !== "string" || v.length > 255) throw new InvalidArgumentError(`${field}.${k}`, "must be a string of at most 255 characters");
  }
}

export class MachineRegistry {
  private readonly deps: RegistryDeps;

  constructor(deps: RegistryDeps) {
    this.deps = deps;
  }

  private checkFields(input: MachineInput, creating: boolean): void {
    const need = (v: unknown, field: string) => {
      if (creating && (v === undefined || v === "")) throw new InvalidArgumentError(field, "is required");
    };
    need(input.name, "name");
    need(input.host, "host");
    need(input.username, "username");
    if (input.name !== undefined) {
      if (input.name.trim() === "" || input.name.length > 128 || /[\0\n\r]/.test(input.name)) {
        throw new InvalidArgumentError("name", "must be 1 to 128 characters without line breaks");
      }
    }
    if (input.host !== undefined && (!HOST.test(input.host) || input.host.length > 253)) {
      throw new InvalidArgumentError("host", "must be a host name or an IP address");
    }
    if (input.port !== undefined && (!Number.isInteger(input.port) || input.port < 1 || input.port > 65535)) {
      throw new InvalidArgumentError("port", "must be an integer from 1 to 65535");
    }
    if (input.username !== undefined) {
      const p = userNameProblem(input.username);
      if (p) throw new InvalidArgumentError("username", p);
    }
    if (input.hostKeyFingerprint !== undefined && input.hostKeyFingerprint !== "" && !FINGERPRINT.test(input.hostKeyFingerprint)) {
      throw new InvalidArgumentError("host_key_fingerprint", "must look like SHA256:<43 base64 characters>, as `ssh-keygen -lf` prints it");
    }
    if (input.hostKeyAlgorithm !== undefined && input.hostKeyAlgorithm !== "" && !HOST_KEY_ALGORITHMS.has(input.hostKeyAlgorithm)) {
      throw new InvalidArgumentError("host_key_algorithm", `must be one of ${[...HOST_KEY_ALGORITHMS].join(", ")}`);
    }
    if (input.privateKey !== undefined && input.privateKey !== "") {
      const problem = this.deps.checkPrivateKey(input.privateKey, input.passphrase ?? null);
      if (problem) throw new InvalidArgumentError("private_key", problem);
    }
    if (input.labels) validateLabels(input.labels);
  }

  async create(input: MachineInput): Promise<MachineRecord> {
    this.checkFields(input, true);
    if (!input.privateKey && !input.password) {
      throw new InvalidArgumentError("private_key", "a private_key or a password is required");
    }
    if (input.name === this.deps.localMachine?.name) throw new AlreadyExistsError(`machine name ${JSON.stringify(input.name)} is taken`, "name");
    const hostKey = resolveHostKey(input, null);
    const now = new Date();
    const record: MachineRecord = {
      id: newId("mach"),
      name: input.name!,
      host: input.host!,
      port: input.port ?? 22,
      username: input.username!,
      privateKey: input.privateKey || null,
      passphrase: input.passphrase || null,
      password: input.password || null,
      hostKeyFingerprint: hostKey.fingerprint,
      hostKeyAlgorithm: hostKey.algorithm,
      hostKeyPolicy: hostKey.policy,
      labels: input.labels ?? {},
      createdAt: now,
      updatedAt: now,
    };
    await this.deps.machines.create(record);
    return record;
  }

  async get(id: string): Promise<MachineRecord> {
    const local = this.deps.localMachine;
    if (local && id === local.id) return local;
    const m = await this.deps.machines.get(id);
    if (!m) throw new NotFoundError("machine", id, "id");
    return m;
  }

  /**
   * A page of machines carrying `labels`; with `visible`, only the machines
   * it accepts count (a token's scope: paging and totals as if the others
   * did not exist).
   */
  async list(
    limit: number,
    offset: number,
    labels: Record<string, string> | null,
    visible?: (m: MachineRecord) => boolean,
  ): Promise<{ items: MachineRecord[]; total: number }> {
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new InvalidArgumentError("limit", "must be an integer from 1 to 1000");
    if (!Number.isInteger(offset) || offset < 0) throw new InvalidArgumentError("offset", "must be a non-negative integer");
    if (visible !== undefined) {
      const local = this.deps.localMachine;
      const stored = await this.deps.machines.selectByLabels(labels ?? {});
      const all = (local && Object.entries(labels ?? {}).every(([k, v]) => local.labels[k] === v) ? [local, ...stored] : stored).filter(visible);
      return { items: all.slice(offset, offset + limit), total: all.length };
    }
    const page = await this.deps.machines.list({ limit, offset, labels });
    const local = this.deps.localMachine;
    if (!local || (labels && !Object.entries(labels).every(([k, v]) => local.labels[k] === v))) return page;
    // The built-in machine comes first.
    const items = offset === 0 ? [local, ...page.items].slice(0, limit) : page.items;
    return { items, total: page.total + 1 };
  }

  /** `guard` sees the machine as it would be stored and may refuse it by throwing. */
  async update(id: string, input: MachineInput, guard?: (next: MachineRecord) => void): Promise<MachineRecord> {
    if (this.deps.localMachine && id === this.deps.localMachine.id) {
      throw new FailedPreconditionError("the built-in machine cannot be changed");
    }
    const current = await this.get(id);
    this.checkFields(input, false);
    const patch: Partial<MachineRecord> = { updatedAt: new Date() };
    if (input.name !== undefined) patch.name = input.name;
    if (input.host !== undefined) patch.host = input.host;
    if (input.port !== undefined) patch.port = input.port;
    if (input.username !== undefined) patch.username = input.username;
    if (input.privateKey !== undefined) patch.privateKey = input.privateKey || null;
    if (input.passphrase !== undefined) patch.passphrase = input.passphrase || null;
    if (input.password !== undefined) patch.password = input.password || null;
    if (input.hostKeyFingerprint !== undefined || input.hostKeyPolicy !== undefined || input.hostKeyAlgorithm !== undefined) {
      const hostKey = resolveHostKey(input, {
        policy: current.hostKeyPolicy ?? "pinned",
        fingerprint: current.hostKeyFingerprint,
        algorithm: current.hostKeyAlgorithm,
      });
      patch.hostKeyPolicy = hostKey.policy;
      patch.hostKeyFingerprint = hostKey.fingerprint;
      patch.hostKeyAlgorithm = hostKey.algorithm;
    }
    if (input.labels && Object.keys(input.labels).length > 0) patch.labels = input.labels;
    else if (input.clearLabels) patch.labels = {};
    const merge = input.mergeLabels ?? {};
    const remove = input.removeLabels ?? [];
    if (Object.keys(merge).length > 0 || remove.length > 0) {
      if (patch.labels !== undefined) {
        throw new InvalidArgumentError(Object.keys(merge).length > 0 ? "merge_labels" : "remove_labels", "cannot be combined with labels or clear_labels");
      }
      const both = remove.find((k) => Object.hasOwn(merge, k));
      if (both !== undefined) throw new InvalidArgumentError("remove_labels", `key ${JSON.stringify(both.slice(0, 64))} is also in merge_labels`);
      validateLabels(merge, "merge_labels");
      const labels = { ...current.labels, ...merge };
      for (const k of remove) delete labels[k];
      validateLabels(labels);
      patch.labels = labels;
    }
    const privateKey = patch.privateKey !== undefined ? patch.privateKey : current.privateKey;
    const password = patch.password !== undefined ? patch.password : current.password;
    if (!privateKey && !password) throw new InvalidArgumentError("private_key", "a private_key or a password is required");
    guard?.({ ...current, ...patch });
    const updated = await this.deps.machines.update(id, patch);
    if (!updated) throw new NotFoundError("machine", id, "id");
    this.deps.ssh.forget(id);
    return updated;
  }

  /** `by` names who deletes it: a forced delete cancels its commands in that name. */
  async delete(id: string, force: boolean, by?: string): Promise<void> {
    if (this.deps.localMachine && id === this.deps.localMachine.id) {
      throw new FailedPreconditionError("the built-in machine cannot be deleted");
    }
    await this.get(id);
    if (!force) {
      const active = await this.deps.commands.countActiveOnMachine(id);
      if (active > 0) {
        throw new FailedPreconditionError(`machine ${id} has ${active} running command(s); pass force=true to delete it anyway`);
      }
    } else {
      await this.cancelCommandsOn(id, by);
    }
    await this.deps.machines.delete(id);
    this.deps.ssh.forget(id);
  }

  /**
   * A forced delete first cancels the machine's queued and running commands
   * (SIGTERM to each process group, SIGKILL after the grace period) and waits
   * up to `cancelWaitMs` for them to end, so none is left running on a target
   * whose machine no longer exists. Commands that ended meanwhile are fine.
   */
  private async cancelCommandsOn(machineId: string, by: string | undefined): Promise<void> {
    const cancel = this.deps.cancelCommand;
    if (cancel === undefined) return;
    const active = (await this.deps.commands.listActive()).filter((c) => c.machineId === machineId);
    if (active.length === 0) return;
    await Promise.all(
      active.map((c) =>
        cancel(c.id, by).catch((err: unknown) => {
          // Ended by itself meanwhile, already gone on the target, or the target cannot
          // be reached (then its run ends `lost` once the connection is given up): delete anyway.
          if (err instanceof TargetError) return;
          if (!(err instanceof FleetError && (err.code === "failed_precondition" || err.code === "not_found"))) throw err;
        }),
      ),
    );
    const deadline = Date.now() + (this.deps.cancelWaitMs ?? 15_000);
    for (;;) {
      if ((await this.deps.commands.countActiveOnMachine(machineId)) === 0) return;
      if (Date.now() >= deadline) return;
      await sleep(100);
    }
  }

  /** Connects, verifies the host key, runs `true`. Failures are reported, not thrown. */
  async test(id: string): Promise<TestResult> {
    const m = await this.get(id);
    const local = this.deps.localMachine !== null && m.id === this.deps.localMachine.id;
    const transport = local ? this.deps.local : this.deps.ssh;
    // The policy after the test: a tofu machine's first connection pins it.
    const policyNow = async (): Promise<HostKeyPolicy | null> => (local ? m.hostKeyPolicy : ((await this.deps.machines.get(id))?.hostKeyPolicy ?? m.hostKeyPolicy));
    const wasUnpinnedTofu = !local && m.hostKeyPolicy === "tofu" && m.hostKeyFingerprint === null;
    try {
      const r = await transport.probe({ ...m, local });
      if (!local && r.hostKeyAlgorithm && m.hostKeyFingerprint && !m.hostKeyAlgorithm) {
        await this.deps.machines.update(id, { hostKeyAlgorithm: r.hostKeyAlgorithm });
      }
      const policy = await policyNow();
      return {
        ok: true,
        latencyMs: Math.round(r.latencyMs),
        error: null,
        hostKeyFingerprint: r.hostKeyFingerprint,
        hostKeyAlgorithm: r.hostKeyAlgorithm,
        hostKeyPolicy: policy,
        hostKeyPinned: wasUnpinnedTofu && policy === "pinned",
      };
    } catch (err) {
      const code = err instanceof TargetError ? err.reason : "spawn_failed";
      const message = err instanceof Error ? err.message : String(err);
      const seen = err instanceof TargetError ? err.presentedHostKey : undefined;
      const policy = await policyNow();
      return {
        ok: false,
        latencyMs: null,
        error: { code, message },
        hostKeyFingerprint: seen?.fingerprint ?? null,
        hostKeyAlgorithm: seen?.keyType ?? null,
        hostKeyPolicy: policy,
        hostKeyPinned: wasUnpinnedTofu && policy === "pinned",
      };
    }
  }
}
