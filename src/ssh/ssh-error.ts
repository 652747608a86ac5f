/**
 * Turns any failure from ssh2 or the socket under it into a `TargetError`,
 * in one place. Messages name the destination (`host:port`), the user and the
 * errno, never a credential: ssh2's own text is only used for socket-level
 * errors and is scrubbed of the target's secrets anyway.
 */
import { TargetError } from "../exec/errors.ts";

export interface SshErrorContext {
  machineId: string;
  host: string;
  port: number;
  username: string;
  /** Where the failure happened: while connecting, or on an established connection. */
  phase: "connect" | "exec";
  /** Credentials of the target: removed from any text that reaches a message. */
  secrets: readonly (string | null)[];
  /** The connect deadlines, for the message. */
  connectTimeoutMs?: number;
  handshakeTimeoutMs?: number;
}

interface Ssh2Error extends Error {
  level?: string;
  /** Set by our own connect deadlines: which one passed. */
  phase?: "answer" | "handshake";
  code?: string | number;
  reason?: string | number;
}

/** Removes every secret from `text` (defence in depth: ssh2 never puts them there). */
export function scrubSecrets(text: string, secrets: readonly (string | null)[]): string {
  let out = text;
  for (const s of secrets) {
    if (s && s.length >= 4) out = out.split(s).join("[redacted]");
  }
  return out;
}

export function destination(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Whether `err` is ssh2's refusal to open a channel (MaxSessions and friends). */
export function isChannelOpenFailure(err: unknown): boolean {
  return err instanceof Error && err.message.startsWith("(SSH) Channel open failure");
}

export function toTargetError(err: unknown, ctx: SshErrorContext): TargetError {
  // Already mapped (host key mismatch, spawn failures decided by the pool).
  if (err instanceof TargetError) return err;

  const dest = destination(ctx.host, ctx.port);
  const e: Ssh2Error = err instanceof Error ? err : new Error(String(err));
  const make = (reason: TargetError["reason"], message: string): TargetError =>
    new TargetError(reason, scrubSecrets(message, ctx.secrets), ctx.machineId);

  switch (e.level) {
    // The server rejected every offered method (key, password). ssh2 says
    // "All configured authentication methods failed"; we name user and host.
    case "client-authentication":
      return make("auth_failed", `authentication as ${JSON.stringify(ctx.username)} at ${dest} failed`);

    // A connect deadline passed (no answer, or the handshake did not finish),
    // or keepalive replies stopped. While connecting the host is unreachable;
    // on an established connection (keepalive) the connection is lost.
    case "client-timeout":
      if (ctx.phase === "exec" || e.message === "Keepalive timeout") {
        return make("connection_lost", `connection to ${dest} lost: no keepalive reply`);
      }
      if (e.phase === "handshake") {
        return make(
          "unreachable",
          `timed out connecting to ${dest}: the SSH handshake did not finish` +
            (ctx.handshakeTimeoutMs ? ` within ${ctx.handshakeTimeoutMs} ms of the server's answer` : ""),
        );
      }
      if (e.phase === "answer") {
        return make(
          "unreachable",
          `timed out connecting to ${dest}: no SSH answer` + (ctx.connectTimeoutMs ? ` within ${ctx.connectTimeoutMs} ms` : ""),
        );
      }
      return make("unreachable", `timed out connecting to ${dest}`);

    // TCP-level failure: ECONNREFUSED, EHOSTUNREACH, ETIMEDOUT, ENOTFOUND
    // (we open the socket ourselves, so DNS failures arrive here too), or
    // ECONNRESET on an established connection.
    case "client-socket": {
      const code = typeof e.code === "string" ? e.code : "socket error";
      if (ctx.phase === "exec") return make("connection_lost", `connection to ${dest} lost: ${code}`);
      return make("unreachable", `cannot connect to ${dest}: ${code}`);
    }

    // DNS lookup failed (only when ssh2 resolves the name itself).
    case "client-dns":
      return make("unreachable", `cannot resolve ${JSON.stringify(ctx.host)}: ${e.message}`);

    // Key exchange failed: no common algorithm, bad signature, or the server
    // went away mid-handshake. Nothing can be run there.
    case "handshake":
    case "protocol":
      if (ctx.phase === "exec") return make("connection_lost", `connection to ${dest} lost: ${e.message}`);
      return make("unreachable", `SSH handshake with ${dest} failed: ${e.message}`);

    default:
      break;
  }

  // A refused channel after the pool's retries.
  if (isChannelOpenFailure(e)) {
    return make("spawn_failed", `cannot open a session on ${dest}: ${e.message.replace(/^\(SSH\) /, "")}`);
  }
  // The server disconnected (ssh2 sets a numeric DISCONNECT reason code).
  if (typeof e.code === "number") {
    const reason = ctx.phase === "exec" ? "connection_lost" : "unreachable";
    return make(reason, `${dest} disconnected: ${e.message}`);
  }
  // The connection ended while a request was outstanding.
  if (e.message === "No response from server" || e.message === "Not connected") {
    const reason = ctx.phase === "exec" ? "connection_lost" : "unreachable";
    return make(reason, `connection to ${dest} closed`);
  }
  // Anything else while connecting: the target cannot be used.
  if (ctx.phase === "connect") return make("unreachable", `cannot connect to ${dest}: ${e.message}`);
  return make("spawn_failed", `cannot run a command on ${dest}: ${e.message}`);
}
