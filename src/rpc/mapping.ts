/** Domain records to protobuf messages. Credentials never leave this way. */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  CommandErrorSchema,
  CommandSchema,
  CommandStatus,
  HistoryItemSchema,
  type Command,
  type HistoryItem,
} from "../gen/fleetrun/v1/command_pb.js";
import { HostKeyPolicy, MachineSchema, type Machine } from "../gen/fleetrun/v1/machine_pb.js";
import type { CommandView } from "../exec/command-engine.ts";
import { InvalidArgumentError } from "../exec/errors.ts";
import type { CommandRecord, CommandStatus as DomainStatus, HostKeyPolicy as DomainHostKeyPolicy, MachineRecord } from "../exec/ports.ts";

const HOST_KEY_POLICY: Record<DomainHostKeyPolicy, HostKeyPolicy> = {
  pinned: HostKeyPolicy.PINNED,
  tofu: HostKeyPolicy.TOFU,
  insecure_accept_any: HostKeyPolicy.INSECURE_ACCEPT_ANY,
};

/** The proto enum of a policy (unspecified for none: the built-in machine). */
export function hostKeyPolicyToProto(p: DomainHostKeyPolicy | null): HostKeyPolicy {
  return p === null ? HostKeyPolicy.UNSPECIFIED : HOST_KEY_POLICY[p];
}

/** A requested policy; unset stays undefined, the unspecified value is refused. */
export function hostKeyPolicyFromProto(p: HostKeyPolicy | undefined): DomainHostKeyPolicy | undefined {
  if (p === undefined) return undefined;
  for (const [name, value] of Object.entries(HOST_KEY_POLICY)) if (value === p) return name as DomainHostKeyPolicy;
  throw new InvalidArgumentError("host_key_policy", "must be pinned, tofu or insecure_accept_any");
}

const STATUS: Record<DomainStatus, CommandStatus> = {
  queued: CommandStatus.QUEUED,
  running: CommandStatus.RUNNING,
  completed: CommandStatus.COMPLETED,
  failed: CommandStatus.FAILED,
  timed_out: CommandStatus.TIMED_OUT,
  cancelled: CommandStatus.CANCELLED,
  skipped: CommandStatus.SKIPPED,
  lost: CommandStatus.LOST,
};

export function statusToProto(s: DomainStatus): CommandStatus {
  return STATUS[s];
}

export function statusFromName(name: string): DomainStatus | null {
  return name in STATUS ? (name as DomainStatus) : null;
}

function ts(d: Date | null): Timestamp | undefined {
  return d ? timestampFromDate(d) : undefined;
}

/** A command with its output (optionally capped, e.g. in batch responses). */
export function commandToProto(c: CommandRecord & Partial<Pick<CommandView, "stdout" | "stderr">>, outputCap?: number): Command {
  let stdout = c.stdout ?? new Uint8Array();
  let stderr = c.stderr ?? new Uint8Array();
  let stdoutTruncated = c.stdoutTruncated;
  let stderrTruncated = c.stderrTruncated;
  if (outputCap !== undefined) {
    if (stdout.length > outputCap) {
      stdout = stdout.subarray(stdout.length - outputCap);
      stdoutTruncated = true;
    }
    if (stderr.length > outputCap) {
      stderr = stderr.subarray(stderr.length - outputCap);
      stderrTruncated = true;
    }
  }
  return create(CommandSchema, {
    id: c.id,
    machineId: c.machineId,
    command: c.command,
    ...(c.cwd !== null ? { cwd: c.cwd } : {}),
    envKeys: c.envKeys,
    ...(c.user !== null ? { user: c.user } : {}),
    timeout: BigInt(c.timeoutMs),
    status: STATUS[c.status],
    ...(c.exitCode !== null ? { exitCode: c.exitCode } : {}),
    ...(c.signal !== null ? { signal: c.signal } : {}),
    stdout,
    stderr,
    stdoutBytes: BigInt(c.stdoutBytes),
    stderrBytes: BigInt(c.stderrBytes),
    stdoutTruncated,
    stderrTruncated,
    ...(c.durationMs !== null ? { duration: BigInt(c.durationMs) } : {}),
    createdAt: ts(c.createdAt),
    startedAt: ts(c.startedAt),
    finishedAt: ts(c.finishedAt),
    error: c.errorCode ? create(CommandErrorSchema, { code: c.errorCode, message: c.errorMessage ?? "" }) : undefined,
    ...(c.batchId !== null ? { batchId: c.batchId } : {}),
    requestedBy: c.requestedBy,
    ...(c.cancelledBy !== null ? { cancelledBy: c.cancelledBy } : {}),
  });
}

export function historyItemToProto(c: CommandRecord): HistoryItem {
  return create(HistoryItemSchema, {
    id: c.id,
    command: c.command,
    ...(c.exitCode !== null ? { exitCode: c.exitCode } : {}),
    ...(c.durationMs !== null ? { duration: BigInt(c.durationMs) } : {}),
    executedAt: ts(c.startedAt ?? c.createdAt),
    status: STATUS[c.status],
    ...(c.user !== null ? { user: c.user } : {}),
    requestedBy: c.requestedBy,
    ...(c.batchId !== null ? { batchId: c.batchId } : {}),
  });
}

export function machineToProto(m: MachineRecord): Machine {
  return create(MachineSchema, {
    id: m.id,
    name: m.name,
    host: m.host,
    port: m.port,
    username: m.username,
    ...(m.hostKeyFingerprint ? { hostKeyFingerprint: m.hostKeyFingerprint } : {}),
    ...(m.hostKeyAlgorithm ? { hostKeyAlgorithm: m.hostKeyAlgorithm } : {}),
    hostKeyPolicy: hostKeyPolicyToProto(m.hostKeyPolicy),
    labels: m.labels,
    hasPrivateKey: m.privateKey !== null,
    hasPassword: m.password !== null,
    createdAt: ts(m.createdAt),
    updatedAt: ts(m.updatedAt),
  });
}
