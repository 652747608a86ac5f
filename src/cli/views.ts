/**
 * Resources as the CLI shows them: JSON in the REST API's shape (the same
 * codec the REST layer uses), and human fields and table rows.
 */
import type { JsonValue } from "@bufbuild/protobuf";
import { CommandSchema, CommandStatus, CommandStatusSchema, HistoryItemSchema } from "../gen/fleetrun/v1/command_pb.js";
import type { Command, HistoryItem } from "../gen/fleetrun/v1/command_pb.js";
import { HostKeyPolicy, MachineSchema } from "../gen/fleetrun/v1/machine_pb.js";
import type { Machine } from "../gen/fleetrun/v1/machine_pb.js";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { encodeEnum, encodeMessage } from "../rest/json-codec.ts";
import { formatDuration } from "./parse.ts";
import { formatLabels, formatTime, oneLine } from "./output.ts";
import type { Out } from "./output.ts";

export const commandJson = (c: Command): { [k: string]: JsonValue } => encodeMessage(CommandSchema, c);
export const machineJson = (m: Machine): { [k: string]: JsonValue } => encodeMessage(MachineSchema, m);
export const historyJson = (h: HistoryItem): { [k: string]: JsonValue } => encodeMessage(HistoryItemSchema, h);

/** `completed`, `timed_out`, … */
export function statusName(status: CommandStatus): string {
  return String(encodeEnum(CommandStatusSchema, status) ?? "unknown");
}

/** The status, coloured: green for success, red for failure, yellow for the rest. */
export function paintStatus(out: Pick<Out, "paint">, status: CommandStatus, exitCode?: number): string {
  const name = statusName(status);
  if (status === CommandStatus.COMPLETED) return out.paint(exitCode === 0 ? "green" : "red", name);
  if (status === CommandStatus.FAILED || status === CommandStatus.LOST || status === CommandStatus.TIMED_OUT) return out.paint("red", name);
  return out.paint("yellow", name);
}

export const time = (t: Timestamp | undefined): Date | undefined => (t ? timestampDate(t) : undefined);

/** Why a command did not complete, in one line (`failed: unreachable: …`). */
export function endReason(c: Command): string {
  const name = statusName(c.status);
  switch (c.status) {
    case CommandStatus.COMPLETED:
      return `completed with exit code ${c.exitCode ?? "?"}`;
    case CommandStatus.TIMED_OUT:
      return `timed_out after ${formatDuration(Number(c.timeout))}${c.signal ? ` (${c.signal})` : ""}`;
    case CommandStatus.CANCELLED:
      return `cancelled${c.signal ? ` (${c.signal})` : ""}`;
    default:
      return c.error ? `${name}: ${c.error.code}: ${oneLine(c.error.message, 300)}` : name;
  }
}

export function commandFields(out: Pick<Out, "paint">, c: Command): [string, string][] {
  const fields: [string, string][] = [
    ["id", c.id],
    ["machine", c.machineId],
    ["command", oneLine(c.command, 200)],
    ["status", paintStatus(out, c.status, c.exitCode)],
    ["exit code", c.exitCode === undefined ? "-" : String(c.exitCode)],
  ];
  if (c.signal) fields.push(["signal", c.signal]);
  if (c.error) fields.push(["error", `${c.error.code}: ${oneLine(c.error.message, 200)}`]);
  if (c.cwd !== undefined) fields.push(["cwd", c.cwd]);
  if (c.user !== undefined) fields.push(["user", c.user]);
  if (c.envKeys.length > 0) fields.push(["env", c.envKeys.join(", ")]);
  fields.push(
    ["timeout", formatDuration(Number(c.timeout))],
    ["duration", c.duration === undefined ? "-" : formatDuration(Number(c.duration))],
    ["created", formatTime(time(c.createdAt))],
    ["started", formatTime(time(c.startedAt))],
    ["finished", formatTime(time(c.finishedAt))],
    ["output", `stdout ${c.stdoutBytes} bytes${c.stdoutTruncated ? " (truncated)" : ""}, stderr ${c.stderrBytes} bytes${c.stderrTruncated ? " (truncated)" : ""}`],
    ["requested by", c.requestedBy],
  );
  if (c.batchId !== undefined) fields.push(["batch", c.batchId]);
  return fields;
}

export const MACHINE_HEAD = ["ID", "NAME", "ADDRESS", "LABELS", "HOST KEY", "AUTH"] as const;

export function machineRow(m: Machine): string[] {
  return [
    m.id,
    m.name,
    `${m.username}@${m.host}${m.port !== 22 ? `:${m.port}` : ""}`,
    formatLabels(m.labels),
    hostKeyShort(m),
    m.hasPrivateKey ? "key" : m.hasPassword ? "password" : m.id === "mach_local" ? "local" : "-",
  ];
}

/** The host key check in a table cell: the pin's start, `tofu (none yet)`, `ANY (insecure)`. */
function hostKeyShort(m: Machine): string {
  if (m.hostKeyFingerprint !== undefined) return `${m.hostKeyFingerprint.slice(0, 19)}…`;
  if (m.hostKeyPolicy === HostKeyPolicy.TOFU) return "tofu (none yet)";
  if (m.hostKeyPolicy === HostKeyPolicy.INSECURE_ACCEPT_ANY) return "ANY (insecure)";
  return "-";
}

function hostKeyLong(m: Machine): string {
  const pin = m.hostKeyFingerprint !== undefined ? `${m.hostKeyFingerprint}${m.hostKeyAlgorithm ? ` (${m.hostKeyAlgorithm})` : ""}` : "";
  switch (m.hostKeyPolicy) {
    case HostKeyPolicy.PINNED:
      return `pinned: ${pin}`;
    case HostKeyPolicy.TOFU:
      return pin !== "" ? `pinned on first use: ${pin}` : "tofu: the first connection records the key";
    case HostKeyPolicy.INSECURE_ACCEPT_ANY:
      return "insecure_accept_any: any key is accepted";
    default:
      return pin !== "" ? pin : "-";
  }
}

export function machineFields(m: Machine): [string, string][] {
  return [
    ["id", m.id],
    ["name", m.name],
    ["address", `${m.username}@${m.host}:${m.port}`],
    ["labels", formatLabels(m.labels)],
    ["host key", hostKeyLong(m)],
    ["credentials", [m.hasPrivateKey ? "private key" : "", m.hasPassword ? "password" : ""].filter(Boolean).join(", ") || "-"],
    ["created", formatTime(time(m.createdAt))],
    ["updated", formatTime(time(m.updatedAt))],
  ];
}

export const HISTORY_HEAD = ["ID", "STATUS", "EXIT", "DURATION", "EXECUTED", "USER", "BY", "COMMAND"] as const;

export function historyRow(out: Pick<Out, "paint">, h: HistoryItem): string[] {
  return [
    h.id,
    paintStatus(out, h.status, h.exitCode),
    h.exitCode === undefined ? "-" : String(h.exitCode),
    h.duration === undefined ? "-" : formatDuration(Number(h.duration)),
    formatTime(time(h.executedAt)),
    h.user ?? "-",
    h.requestedBy,
    oneLine(h.command, 50),
  ];
}
