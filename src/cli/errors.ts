/**
 * Every failure the CLI reports, as one line on stderr and an exit code:
 * usage and configuration errors of its own, and the service's errors with
 * their code (`unauthenticated`, `not_found`, …) and message. No stack traces.
 */
import { EXIT } from "./exit-codes.ts";

/** A failure of the CLI's own, with the exit code it ends with. */
export class CliError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number) {
    super(message);
    this.name = "CliError";
    this.exitCode = exitCode;
  }
}

/** Bad flags or arguments (exit 64). */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message, EXIT.usage);
    this.name = "UsageError";
  }
}

/** A configuration problem: profile file, profile name, URL (exit 78). */
export class ConfigError extends CliError {
  constructor(message: string) {
    super(message, EXIT.config);
    this.name = "ConfigError";
  }
}

/** gRPC code names (snake_case, as the REST API spells them) by number. */
const CODE_NAMES = [
  "ok", "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found", "already_exists",
  "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range",
  "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated",
] as const;

const EXIT_BY_CODE: Record<string, number> = {
  unauthenticated: EXIT.auth,
  permission_denied: EXIT.auth,
  unavailable: EXIT.unavailable,
  deadline_exceeded: EXIT.unavailable,
  internal: EXIT.internal,
  unknown: EXIT.internal,
  data_loss: EXIT.internal,
  unimplemented: EXIT.internal,
  canceled: EXIT.cancelled,
};

/** What a `ConnectError` looks like without importing Connect (keeps `--help` fast). */
interface ConnectLike {
  code: number;
  rawMessage: string;
  cause?: unknown;
}

function isConnectLike(e: unknown): e is ConnectLike {
  return e instanceof Error && e.name === "ConnectError" && typeof (e as { code?: unknown }).code === "number";
}

/** The innermost `code`/`message` of a network error (`ECONNREFUSED 127.0.0.1:1`). */
function networkCause(e: unknown): string | undefined {
  for (let c: unknown = e, i = 0; c instanceof Error && i < 6; c = c.cause, i++) {
    const code = (c as { code?: unknown }).code;
    if (typeof code === "string" && /^E[A-Z_]+$/.test(code)) return c.message.includes(code) ? c.message : `${code}: ${c.message}`;
  }
  return undefined;
}

/** One line (without the `fleetrun: ` prefix) and the exit code for any error. */
export function describeError(e: unknown, url?: string): { line: string; exitCode: number } {
  if (e instanceof CliError) return { line: e.message, exitCode: e.exitCode };
  if (isConnectLike(e)) {
    const name = CODE_NAMES[e.code] ?? "unknown";
    const net = networkCause(e);
    let message = e.rawMessage.replace(/\s+/g, " ").trim();
    if (name === "unavailable" && net !== undefined && url !== undefined) message = `cannot reach the service at ${url} (${net})`;
    else if (name === "unauthenticated" && url !== undefined) message = `${message} (check FLEETRUN_TOKEN, --token or the profile for ${url})`;
    return { line: `${name}: ${message}`, exitCode: EXIT_BY_CODE[name] ?? EXIT.refused };
  }
  const net = networkCause(e);
  if (net !== undefined) return { line: `unavailable: cannot reach the service${url ? ` at ${url}` : ""} (${net})`, exitCode: EXIT.unavailable };
  const message = e instanceof Error ? e.message : String(e);
  return { line: `internal: ${message.replace(/\s+/g, " ").trim()}`, exitCode: EXIT.internal };
}
