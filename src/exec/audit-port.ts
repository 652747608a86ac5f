/**
 * The audit trail's port: what the service reports, who keeps it is an adapter's
 * business (the append-only, hash-chained log in the store). Emitters never wait
 * on it and never pass env values, output or secrets.
 */

export type AuditOutcome = "ok" | "denied" | "error";

export interface AuditEvent {
  /** The caller's token name, or "system" for the service's own actions (e.g. pinning a host key). */
  actor: string;
  /** What was done: an RPC ("CommandService.Execute") or a system event ("machine.host_key_pinned"). */
  action: string;
  outcome: AuditOutcome;
  machineId?: string;
  commandId?: string;
  batchId?: string;
  /** The client's address as the server saw it. */
  clientAddress?: string;
  /** A short, secret-free explanation (an error code and message, a fingerprint). */
  detail?: string;
}

export interface AuditSink {
  record(event: AuditEvent): void;
}

/** For tests and tools that build parts of the service without an audit log. */
export const NO_AUDIT: AuditSink = { record() {} };
