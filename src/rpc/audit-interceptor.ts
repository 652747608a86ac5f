/**
 * Records every RPC in the audit trail: one record per call, whoever called
 * and however it ended. It runs OUTSIDE the auth interceptor, so it also
 * sees calls refused for a missing or bad token (actor "anonymous").
 *
 * - outcome: `ok`; `denied` for UNAUTHENTICATED, PERMISSION_DENIED and
 *   NOT_FOUND (an out-of-scope resource answers NOT_FOUND, so an unknown id
 *   counts as a denial too); `error` for any other failure.
 * - ids: request and response fields named `machine_id`, `command_id`,
 *   `batch_id` and `id` (by its prefix), at the top level or one message
 *   down (`meta.batch_id`, ExecuteAsync's `started.id`).
 * - `command`: the command text of calls that run one (never `env`, whose
 *   values may be secrets, nor output, nor tokens; see README "Audit trail").
 * - unary calls are recorded when they answer; a stream at its first
 *   message, its end or failure, or STREAM_RECORD_AFTER_MS after it began,
 *   whichever comes first (a silent WatchCommand is not recorded hours late).
 * Health checking and reflection are not recorded.
 */
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import type { AuditEvent, AuditOutcome, AuditSink } from "../exec/audit-port.ts";
import { CommandStatus } from "../gen/fleetrun/v1/command_pb.js";
import { OPEN_SERVICES, principalKey } from "./auth.ts";
import { codeNames } from "./errors.ts";

/** The caller's address, set per call by the Connect door from the socket. */
export const clientAddressKey = createContextKey<string | undefined>(undefined, { description: "client address" });

/**
 * The header by which the REST door (an in-process transport no one else
 * reaches) tells its caller's address. Only the REST router's interceptor
 * reads it; a header of that name from a network caller is ignored.
 */
export const CLIENT_ADDRESS_HEADER = "fleetrun-client-address";

/** The address as people write it: an IPv4-mapped IPv6 address (`::ffff:10.0.0.7`) as IPv4. */
export function normalClientAddress(ip: string | undefined): string | undefined {
  if (ip === undefined || ip === "") return undefined;
  return /^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(ip) ? ip.slice(7) : ip;
}

/** Services whose request fields are filters, not the subject of the call. */
const NO_REQUEST_IDS = new Set(["fleetrun.v1.AuditService"]);
const DENIALS = new Set([Code.Unauthenticated, Code.PermissionDenied, Code.NotFound]);
export const STREAM_RECORD_AFTER_MS = 2000;

export interface AuditInterceptorOptions {
  /** `context`: the Connect door's clientAddressKey; `rest-header`: CLIENT_ADDRESS_HEADER from the in-process REST door. */
  address: "context" | "rest-header";
}

type Ids = Pick<AuditEvent, "machineId" | "commandId" | "batchId">;

export function auditInterceptor(sink: AuditSink, options: AuditInterceptorOptions): Interceptor {
  return (next) => async (req) => {
    // Health checking and reflection need no token and leave no record.
    if (OPEN_SERVICES.has(req.service.typeName)) return next(req);
    const action = `${req.service.name}.${req.method.name}`;
    const clientAddress = options.address === "context" ? req.contextValues.get(clientAddressKey) : (req.header.get(CLIENT_ADDRESS_HEADER) ?? undefined);
    const takeRequestIds = !NO_REQUEST_IDS.has(req.service.typeName);
    let input: unknown;
    let recorded = false;
    const record = (outcome: AuditOutcome, detail: string | undefined, output?: unknown) => {
      if (recorded) return;
      recorded = true;
      const ids: Ids = {};
      if (takeRequestIds) collectIds(input, ids, 0);
      collectIds(output, ids, 0);
      const event: AuditEvent = { actor: req.contextValues.get(principalKey)?.name ?? "anonymous", action, outcome, ...ids };
      if (clientAddress) event.clientAddress = clientAddress;
      const command = commandOf(input);
      if (command !== undefined) event.command = command;
      const d = detail ?? (output === undefined ? undefined : outcomeDetail(output));
      if (d !== undefined) event.detail = d;
      sink.record(event);
    };
    const fail = (err: unknown) => {
      const ce = ConnectError.from(err);
      record(DENIALS.has(ce.code) ? "denied" : "error", `${codeNames[ce.code] ?? "unknown"}: ${ce.rawMessage}`);
    };

    if (!req.stream) {
      input = req.message;
      try {
        const res = await next(req);
        record("ok", undefined, res.stream ? undefined : res.message);
        return res;
      } catch (err) {
        fail(err);
        throw err;
      }
    }

    // Streams: the request message is read by the handler; note it on the way.
    const tapped = { ...req, message: tap(req.message, (m) => (input ??= m)) };
    let res;
    try {
      res = await next(tapped);
    } catch (err) {
      fail(err);
      throw err;
    }
    if (!res.stream) {
      record("ok", undefined, res.message);
      return res;
    }
    const source = res.message;
    async function* watched() {
      const timer = setTimeout(() => record("ok", undefined), STREAM_RECORD_AFTER_MS);
      timer.unref();
      try {
        for await (const m of source) {
          record("ok", undefined, m);
          yield m;
        }
        record("ok", undefined);
      } catch (err) {
        fail(err);
        throw err;
      } finally {
        clearTimeout(timer);
        // The caller went away before anything else settled it.
        record("ok", undefined);
      }
    }
    return { ...res, message: watched() };
  };
}

async function* tap<T>(source: AsyncIterable<T>, see: (m: T) => void): AsyncIterable<T> {
  for await (const m of source) {
    see(m);
    yield m;
  }
}

const ID_PREFIXES: [string, keyof Ids][] = [
  ["cmd_", "commandId"],
  ["mach_", "machineId"],
  ["batch_", "batchId"],
];

/** Fills `ids` from a message's id fields (first found wins), one message level down at most. */
function collectIds(m: unknown, ids: Ids, depth: number): void {
  if (m === null || typeof m !== "object" || Array.isArray(m) || m instanceof Uint8Array) return;
  const o = m as Record<string, unknown>;
  const take = (key: keyof Ids, v: unknown) => {
    if (typeof v === "string" && v !== "" && ids[key] === undefined) ids[key] = v;
  };
  take("machineId", o.machineId);
  take("commandId", o.commandId);
  take("batchId", o.batchId);
  if (typeof o.id === "string") {
    const kind = ID_PREFIXES.find(([p]) => (o.id as string).startsWith(p));
    if (kind) take(kind[1], o.id);
  }
  if (depth >= 1) return;
  for (const [k, v] of Object.entries(o)) {
    if (k.startsWith("$") || v === null || typeof v !== "object") continue;
    // A oneof is `{case, value}`; a message field is a message.
    const inner = "case" in v && "value" in v ? (v as { value: unknown }).value : v;
    collectIds(inner, ids, depth + 1);
  }
}

/** The `command` field of a request that runs one. */
function commandOf(m: unknown): string | undefined {
  if (m === null || typeof m !== "object") return undefined;
  const c = (m as Record<string, unknown>).command;
  return typeof c === "string" && c !== "" ? c : undefined;
}

/** How a command ended, from a Command in the answer (Execute, GetCommand, a stream's end). */
function outcomeDetail(m: unknown): string | undefined {
  if (m === null || typeof m !== "object") return undefined;
  const o = m as Record<string, unknown>;
  const cmd = o.$typeName === "fleetrun.v1.Command" ? o : undefined;
  if (cmd === undefined) return undefined;
  const status = typeof cmd.status === "number" ? (CommandStatus[cmd.status] ?? String(cmd.status)).toLowerCase() : "unknown";
  const parts = [`status=${status}`];
  if (typeof cmd.exitCode === "number") parts.push(`exit_code=${cmd.exitCode}`);
  return parts.join(" ");
}
