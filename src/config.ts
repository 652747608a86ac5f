/**
 * The service's configuration: every key read from the environment, with a
 * default and a description, validated once at start. `docs` in the README
 * mirrors this table.
 */
import path from "node:path";
import { parseKeys } from "./secrets/key-ring.ts";
import { parseCorsOrigin } from "./server/cors.ts";
import type { SshTransportOptions } from "./ssh/ssh-transport.ts";

interface Spec<T> {
  env: string;
  description: string;
  default: T;
  parse: (raw: string, env: string) => T;
}

export class ConfigError extends Error {
  constructor(env: string, message: string) {
    super(`${env}: ${message}`);
    this.name = "ConfigError";
  }
}

const int =
  (min: number, max: number) =>
  (raw: string, env: string): number => {
    const n = Number(raw);
    if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new ConfigError(env, `must be an integer from ${min} to ${max}`);
    }
    return n;
  };
const optionalInt =
  (min: number, max: number) =>
  (raw: string, env: string): number | null =>
    raw.trim() === "" ? null : int(min, max)(raw, env);
const str = (raw: string): string => raw;
const optionalStr = (raw: string): string | null => (raw === "" ? null : raw);
const originList = (raw: string, env: string): string[] => {
  const out: string[] = [];
  for (const part of raw.split(",")) {
    if (part.trim() === "") continue;
    try {
      out.push(parseCorsOrigin(part));
    } catch (err) {
      throw new ConfigError(env, (err as Error).message);
    }
  }
  return out;
};
const bool = (raw: string, env: string): boolean => {
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off|)$/i.test(raw)) return false;
  throw new ConfigError(env, "must be 1/0, true/false, yes/no or on/off");
};

const SPECS = {
  port: { env: "PORT", description: "TCP port for HTTP/1.1, h2c (and TLS) on one socket", default: 8080, parse: int(0, 65535) },
  host: { env: "HOST", description: "Address to bind", default: "127.0.0.1", parse: str },
  dataDir: { env: "FLEETRUN_DATA_DIR", description: "Directory of the SQLite database and the admin token file", default: "./data", parse: str },
  databaseUrl: {
    env: "DATABASE_URL",
    description: "postgres://… to use PostgreSQL; unset: SQLite file <data dir>/fleetrun.db",
    default: null,
    parse: optionalStr,
  },
  localMachine: {
    env: "FLEETRUN_LOCAL_MACHINE",
    description: "1 enables the built-in machine mach_local (runs commands on the service's own host as the service's user)",
    default: false,
    parse: bool,
  },
  adminToken: {
    env: "FLEETRUN_ADMIN_TOKEN",
    description: "Admin bearer token; unset: generated at first start into <data dir>/admin-token",
    default: null,
    parse: optionalStr,
  },
  secretKey: {
    env: "FLEETRUN_SECRET_KEY",
    description:
      "Keys that encrypt stored credentials: 32 random bytes in base64 each (openssl rand -base64 32), comma-separated, newest first; unset: FLEETRUN_SECRET_KEY_FILE or <data dir>/secret-key",
    default: null,
    parse: optionalStr,
  },
  secretKeyFile: {
    env: "FLEETRUN_SECRET_KEY_FILE",
    description: "File holding the keys in FLEETRUN_SECRET_KEY's format; unset (and no FLEETRUN_SECRET_KEY): <data dir>/secret-key, generated at first start (mode 0600)",
    default: null,
    parse: optionalStr,
  },
  defaultTimeoutMs: { env: "FLEETRUN_DEFAULT_TIMEOUT_MS", description: "Timeout of a command that gives none", default: 3_600_000, parse: int(1, 604_800_000) },
  maxTimeoutMs: { env: "FLEETRUN_MAX_TIMEOUT_MS", description: "Largest timeout a request may ask for", default: 604_800_000, parse: int(1, 2_592_000_000) },
  graceMs: { env: "FLEETRUN_KILL_GRACE_MS", description: "SIGTERM → SIGKILL delay on cancel and timeout", default: 5_000, parse: int(100, 600_000) },
  outputCapPerStream: {
    env: "FLEETRUN_OUTPUT_CAP_BYTES",
    description: "Stored stdout and stderr per command, each (first and last half kept)",
    default: 1_048_576,
    parse: int(256, 1_073_741_824),
  },
  maxCommandBytes: { env: "FLEETRUN_MAX_COMMAND_BYTES", description: "Largest `command`", default: 1_048_576, parse: int(1, 16_777_216) },
  maxEnvBytes: { env: "FLEETRUN_MAX_ENV_BYTES", description: "Largest `env`, names and values together", default: 262_144, parse: int(1, 16_777_216) },
  bodyLimit: { env: "FLEETRUN_BODY_LIMIT_BYTES", description: "Largest request body (REST, Connect, gRPC message); larger is 413", default: 4_194_304, parse: int(1024, 268_435_456) },
  headersTimeoutMs: {
    env: "FLEETRUN_HEADERS_TIMEOUT_MS",
    description: "A new connection must send its first request's headers (HTTP/1.1: every request's headers; HTTP/2: its first stream) within this, or it is closed",
    default: 10_000,
    parse: int(100, 600_000),
  },
  idleTimeoutMs: {
    env: "FLEETRUN_IDLE_TIMEOUT_MS",
    description: "A connection with no request or stream in flight (HTTP/1.1 keep-alive, HTTP/2 session) is closed after this; open streams are never cut",
    default: 72_000,
    parse: int(100, 3_600_000),
  },
  maxConnectionsPerAddress: {
    env: "FLEETRUN_MAX_CONNECTIONS_PER_ADDRESS",
    description: "Open connections one client address (IPv6: one /64) may hold; more are closed at once; 0: no cap (raise it behind a proxy)",
    default: 512,
    parse: int(0, 1_000_000),
  },
  maxConnections: {
    env: "FLEETRUN_MAX_CONNECTIONS",
    description: "Open client connections overall; more are closed at once; 0: no cap",
    default: 10_000,
    parse: int(0, 1_000_000),
  },
  metricsToken: {
    env: "FLEETRUN_METRICS_TOKEN",
    description: "Bearer token GET /metrics requires (Authorization: Bearer <it>); unset: /metrics is open",
    default: null,
    parse: optionalStr,
  },
  shutdownGraceMs: {
    env: "FLEETRUN_SHUTDOWN_GRACE_MS",
    description: "On SIGTERM: how long waiting callers' commands may still run before they are cancelled",
    default: 30_000,
    parse: int(0, 3_600_000),
  },
  detachedReattachSlackMs: {
    env: "FLEETRUN_DETACHED_REATTACH_SLACK_MS",
    description: "How long past its timeout a detached command's re-attach attempts go on before it is `lost`",
    default: 300_000,
    parse: int(0, 86_400_000),
  },
  sshConnectTimeoutMs: {
    env: "FLEETRUN_SSH_CONNECT_TIMEOUT_MS",
    description: "A machine must answer (TCP connect and its SSH version line) within this, or it is `unreachable`",
    default: 10_000,
    parse: int(100, 600_000),
  },
  sshHandshakeTimeoutMs: {
    env: "FLEETRUN_SSH_HANDSHAKE_TIMEOUT_MS",
    description: "After it answered, a machine's key exchange and authentication must finish within this",
    default: 30_000,
    parse: int(100, 600_000),
  },
  sshHandshakesPerHost: {
    env: "FLEETRUN_SSH_HANDSHAKES_PER_HOST",
    description: "SSH handshakes in flight per host:port (keep below the target's MaxStartups start value, 10 by default)",
    default: 6,
    parse: int(1, 1_000),
  },
  sshHandshakesTotal: {
    env: "FLEETRUN_SSH_HANDSHAKES_TOTAL",
    description: "SSH handshakes in flight overall",
    default: 64,
    parse: int(1, 10_000),
  },
  sshHandshakeQueue: {
    env: "FLEETRUN_SSH_HANDSHAKE_QUEUE",
    description: "SSH handshakes a new start may wait behind for a slot; a start that would wait beyond it is refused (429), not queued",
    default: 500,
    parse: int(0, 1_000_000),
  },
  maxActiveCommands: {
    env: "FLEETRUN_MAX_ACTIVE_COMMANDS",
    description: "Commands this process runs or queues at once, all modes (Execute, async, batch items in flight); beyond it starts are refused (429)",
    default: 2_000,
    parse: int(1, 1_000_000),
  },
  maxPendingStarts: {
    env: "FLEETRUN_MAX_PENDING_STARTS",
    description: "Accepted commands not yet running on their target (waiting for a connection, handshake or channel); beyond it starts are refused (429)",
    default: 1_500,
    parse: int(1, 1_000_000),
  },
  maxFollowers: {
    env: "FLEETRUN_MAX_FOLLOWERS",
    description: "Clients following live output at once (WatchCommand, ExecuteAsync, REST /stream); beyond it new followers are refused (429)",
    default: 2_000,
    parse: int(1, 1_000_000),
  },
  tokenMaxCommands: {
    env: "FLEETRUN_TOKEN_MAX_COMMANDS",
    description: "Commands one token (other than the bootstrap admin token) may have queued or running at once in this process (a batch counts its first wave); beyond it 429. A token's own limits may lower it",
    default: 500,
    parse: int(1, 1_000_000),
  },
  tokenRequestsPerSecond: {
    env: "FLEETRUN_TOKEN_REQUESTS_PER_SECOND",
    description: "Requests per second one token (other than the bootstrap admin token) may make, sustained; beyond it 429 with Retry-After",
    default: 50,
    parse: int(1, 1_000_000),
  },
  tokenBurst: {
    env: "FLEETRUN_TOKEN_BURST",
    description: "Requests one token may make in a burst above FLEETRUN_TOKEN_REQUESTS_PER_SECOND",
    default: 200,
    parse: int(1, 1_000_000),
  },
  tokenMaxStreams: {
    env: "FLEETRUN_TOKEN_MAX_STREAMS",
    description: "Streams one token (other than the bootstrap admin token) may hold open at once (WatchCommand, ExecuteAsync, BatchStream, REST /stream); beyond it 429",
    default: 100,
    parse: int(1, 1_000_000),
  },
  batchConcurrency: { env: "FLEETRUN_BATCH_CONCURRENCY", description: "Default max_concurrency of a batch", default: 50, parse: int(1, 10_000) },
  batchMaxMachines: { env: "FLEETRUN_BATCH_MAX_MACHINES", description: "Largest batch", default: 5_000, parse: int(1, 100_000) },
  batchOutputCap: {
    env: "FLEETRUN_BATCH_OUTPUT_CAP_BYTES",
    description: "stdout/stderr per machine in a batch response (the last bytes; full output at GET /v1/commands/{id})",
    default: 65_536,
    parse: int(0, 16_777_216),
  },
  retentionMaxAgeDays: {
    env: "FLEETRUN_RETENTION_MAX_AGE_DAYS",
    description: "Delete ended commands older than this many days; unset keeps them",
    default: null,
    parse: optionalInt(1, 36_500),
  },
  retentionMaxPerMachine: {
    env: "FLEETRUN_RETENTION_MAX_PER_MACHINE",
    description: "Keep at most this many ended commands per machine; unset keeps all",
    default: null,
    parse: optionalInt(1, 100_000_000),
  },
  auditRetentionDays: {
    env: "FLEETRUN_AUDIT_RETENTION_DAYS",
    description: "Delete audit records older than this many days (the chain keeps an anchor so it still verifies); empty keeps them all",
    default: 365 as number | null,
    parse: optionalInt(1, 36_500),
  },
  retentionIntervalMs: { env: "FLEETRUN_RETENTION_INTERVAL_MS", description: "How often retention runs (commands and audit records)", default: 600_000, parse: int(1_000, 86_400_000) },
  corsOrigins: {
    env: "FLEETRUN_CORS_ORIGINS",
    description: "Comma-separated origins (https://app.example.com) whose pages may call the API from a browser; * for any; unset: none",
    default: [] as string[],
    parse: originList,
  },
  logLevel: { env: "FLEETRUN_LOG_LEVEL", description: "fatal, error, warn, info, debug, trace or silent", default: "info", parse: str },
  tlsCert: { env: "FLEETRUN_TLS_CERT", description: "PEM certificate file; with FLEETRUN_TLS_KEY enables TLS (HTTP/2 and HTTP/1.1 by ALPN)", default: null, parse: optionalStr },
  tlsKey: { env: "FLEETRUN_TLS_KEY", description: "PEM private key file of FLEETRUN_TLS_CERT", default: null, parse: optionalStr },
} satisfies Record<string, Spec<unknown>>;

type Specs = typeof SPECS;
export type Config = { -readonly [K in keyof Specs]: ReturnType<Specs[K]["parse"]> };

/** The SSH transport's settings (connect deadlines, handshake pacing) from the configuration. */
export function sshOptionsFrom(
  config: Config,
): Required<Pick<SshTransportOptions, "connectTimeoutMs" | "handshakeTimeoutMs" | "handshakesPerDestination" | "handshakesOverall" | "handshakeQueue">> {
  return {
    connectTimeoutMs: config.sshConnectTimeoutMs,
    handshakeTimeoutMs: config.sshHandshakeTimeoutMs,
    handshakesPerDestination: config.sshHandshakesPerHost,
    handshakesOverall: config.sshHandshakesTotal,
    handshakeQueue: config.sshHandshakeQueue,
  };
}

/** The environment variable of a setting, for messages that name it. */
export function settingName(key: keyof Config): string {
  return SPECS[key].env;
}

/**
 * The command-line flag of a setting: its variable without `FLEETRUN_`, lower-case,
 * `-` for `_` (`PORT` → `--port`, `FLEETRUN_DATA_DIR` → `--data-dir`).
 */
export function flagOf(env: string): string {
  return "--" + env.replace(/^FLEETRUN_/, "").toLowerCase().replaceAll("_", "-");
}

/**
 * Settings that are secrets: never taken from the command line, which every
 * local user can read (`ps`, /proc/<pid>/cmdline). DATABASE_URL is refused
 * there only when it holds a password.
 */
/** Settings that are secrets: environment only, never a flag. */
export const SECRET_SETTINGS: ReadonlySet<string> = new Set(["FLEETRUN_ADMIN_TOKEN", "FLEETRUN_METRICS_TOKEN", "FLEETRUN_SECRET_KEY"]);

/** Whether a setting can be given as a flag (secrets cannot). */
export function hasFlag(env: string): boolean {
  return !SECRET_SETTINGS.has(env);
}

/**
 * `--name=value` and `--name value` for every setting but the secrets, as variables
 * by name. A flag wins over the variable. Unknown flags, secrets and stray arguments
 * are refused.
 */
export function flagsToEnv(argv: readonly string[]): Record<string, string> {
  for (const arg of argv) {
    const flag = arg.split("=")[0]!;
    const secret = [...SECRET_SETTINGS].find((env) => flagOf(env) === flag);
    if (secret !== undefined) {
      throw new ConfigError(flag, `is a secret, and a command line is visible to every local user: set ${secret} in the environment instead`);
    }
  }
  const byFlag = new Map(Object.values(SPECS).filter((s) => hasFlag(s.env)).map((s) => [flagOf(s.env), s.env] as const));
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf("=");
    const flag = eq === -1 ? arg : arg.slice(0, eq);
    const env = byFlag.get(flag);
    if (!arg.startsWith("--") || env === undefined) {
      throw new ConfigError(arg, "unknown option (npm start -- --help lists the settings; every one is also a flag such as --port 8081)");
    }
    let value: string | undefined;
    if (eq !== -1) value = arg.slice(eq + 1);
    else if (i + 1 < argv.length && !argv[i + 1]!.startsWith("--")) value = argv[++i];
    if (value === undefined) throw new ConfigError(flag, `needs a value: ${flag}=VALUE or ${flag} VALUE`);
    if (env === "DATABASE_URL" && /^[a-z]+:\/\/[^/@]*:[^/@]*@/i.test(value)) {
      throw new ConfigError(flag, "holds a password, and a command line is visible to every local user: set DATABASE_URL in the environment instead");
    }
    out[env] = value;
  }
  return out;
}

/** Reads the settings from the environment and, overriding it, command-line flags. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, argv: readonly string[] = []): Config {
  const flags = flagsToEnv(argv);
  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(SPECS) as [string, Spec<unknown>][]) {
    const fromFlag = flags[spec.env];
    const raw = fromFlag ?? env[spec.env];
    out[name] = raw === undefined ? spec.default : spec.parse(raw, fromFlag === undefined ? spec.env : flagOf(spec.env));
  }
  const config = out as Config;
  config.dataDir = path.resolve(config.dataDir);
  if ((config.tlsCert === null) !== (config.tlsKey === null)) {
    throw new ConfigError("FLEETRUN_TLS_CERT", "FLEETRUN_TLS_CERT and FLEETRUN_TLS_KEY go together");
  }
  if (!["fatal", "error", "warn", "info", "debug", "trace", "silent"].includes(config.logLevel)) {
    throw new ConfigError("FLEETRUN_LOG_LEVEL", "must be fatal, error, warn, info, debug, trace or silent");
  }
  if (config.adminToken !== null && config.adminToken.length < 16) {
    throw new ConfigError("FLEETRUN_ADMIN_TOKEN", "must be at least 16 characters (unset it to have one generated into the data dir)");
  }
  if (config.metricsToken !== null && config.metricsToken.length < 16) {
    throw new ConfigError("FLEETRUN_METRICS_TOKEN", "must be at least 16 characters (unset it to leave /metrics open)");
  }
  if (config.secretKey !== null && config.secretKeyFile !== null) {
    throw new ConfigError("FLEETRUN_SECRET_KEY", "set FLEETRUN_SECRET_KEY or FLEETRUN_SECRET_KEY_FILE, not both");
  }
  if (config.secretKey !== null) {
    try {
      parseKeys(config.secretKey, "FLEETRUN_SECRET_KEY");
    } catch (err) {
      throw new ConfigError("FLEETRUN_SECRET_KEY", (err as Error).message.replace(/^FLEETRUN_SECRET_KEY: /, ""));
    }
  }
  if (config.databaseUrl !== null && !/^postgres(ql)?:\/\/[^/]/.test(config.databaseUrl)) {
    throw new ConfigError("DATABASE_URL", "must be a postgres://user@host:5432/db URL (unset it for SQLite in the data dir)");
  }
  return config;
}

/** Variables of the `fleetrun` CLI (its service and token), not settings of the service. */
const CLIENT_VARIABLES = ["FLEETRUN_URL", "FLEETRUN_TOKEN", "FLEETRUN_PROFILE", "FLEETRUN_CONFIG", "FLEETRUN_CLI_FROM_SOURCE"];

/**
 * `FLEETRUN_*` variables that are no setting (a typo such as FLEETRUN_LOCAL_MACHINES
 * would otherwise be ignored without a word), each with the closest known name.
 */
export function unknownSettings(env: NodeJS.ProcessEnv = process.env): { env: string; suggestion: string | null }[] {
  const known = Object.values(SPECS).map((s) => s.env as string);
  return Object.keys(env)
    .filter((name) => name.startsWith("FLEETRUN_") && !known.includes(name) && !CLIENT_VARIABLES.includes(name))
    .sort()
    .map((name) => {
      // FLEETRUN_PORT → PORT, FLEETRUN_HOST → HOST, FLEETRUN_DATABASE_URL → DATABASE_URL.
      const bare = name.slice("FLEETRUN_".length);
      if (known.includes(bare)) return { env: name, suggestion: bare };
      let best: string | null = null;
      let bestDistance = 4;
      for (const k of known) {
        const d = editDistance(name, k);
        if (d < bestDistance) [best, bestDistance] = [k, d];
      }
      return { env: name, suggestion: best };
    });
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

/** The table of keys, for `--help` and the README. */
export function describeConfig(): { env: string; flag: string; default: unknown; description: string }[] {
  return Object.values(SPECS).map((s) => ({ env: s.env, flag: hasFlag(s.env) ? flagOf(s.env) : "—", default: s.default, description: s.description }));
}
