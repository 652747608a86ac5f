/**
 * Reads the configuration, builds the app, re-attaches to commands a previous
 * process left running, listens, and shuts down gracefully on SIGTERM/SIGINT.
 *
 * A start-up failure the user can fix (a bad setting, the port in use, a database
 * that cannot be opened, a data dir another fleetrun holds) is one line on stderr
 * naming the setting and the fix, and exit code 2; anything else is a bug: its
 * stack and exit code 1.
 */
import fs from "node:fs";
import path from "node:path";
import type { FastifyBaseLogger } from "fastify";
import { ensureAdminToken } from "./admin-token.ts";
import { buildApp, loggerOptions } from "./app.ts";
import { ConfigError, describeConfig, loadConfig, SECRET_SETTINGS, sshOptionsFrom, unknownSettings, type Config } from "./config.ts";
import { DataDirLockedError, lockDataDir, type DataDirLock } from "./data-dir-lock.ts";
import { openStores } from "./db/index.ts";
import { createPrivateFile, octal, secureDataDir, securePrivateFiles, SharedDataDirError, type DataDirReport } from "./file-modes.ts";
import { loadKeyRing, SecretKeyError } from "./secrets/index.ts";
import type { AuditLog } from "./exec/audit-port.ts";
import { listenOnePort } from "./server/one-port-server.ts";
import { createLocalTransport, createSshTransport } from "./ssh/index.ts";
import { sshNativeCrypto } from "./ssh/native-crypto.ts";

/** A start-up failure the user can fix; the message names the setting and the fix. */
class StartupError extends Error {
  override name = "StartupError";
}

function errCode(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  if (typeof e?.code === "string") return e.code;
  return typeof e?.message === "string" ? e.message.split("\n")[0]! : String(err);
}

/** The reason of a database error, without the URL (it may hold a password). */
function dbReason(err: unknown, url: string | null): string {
  let reason = err instanceof Error ? err.message.split("\n")[0]! : String(err);
  if (url) reason = reason.replaceAll(url, "DATABASE_URL");
  const code = (err as { code?: unknown })?.code;
  return typeof code === "string" && !reason.includes(code) ? `${code}: ${reason}` : reason;
}

function printHelp(): void {
  console.log("fleetrun: every setting is an environment variable or the flag next to it (a flag wins).\n");
  // Defaults as the README's settings table writes them: — for none, 0/1 for switches.
  const shown = (v: unknown) =>
    v === null || (Array.isArray(v) && v.length === 0) ? "—" : typeof v === "boolean" ? (v ? "1" : "0") : String(v);
  for (const c of describeConfig()) {
    console.log(`${c.env.padEnd(38)} ${c.flag.padEnd(32)} ${shown(c.default).padEnd(12)} ${c.description}`);
  }
}

function readTls(config: Config): { cert: Buffer; key: Buffer } | undefined {
  if (!config.tlsCert || !config.tlsKey) return undefined;
  const read = (file: string, setting: string) => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new StartupError(`cannot read ${file} (${errCode(err)}): set ${setting} to a readable PEM file`);
    }
  };
  return { cert: read(config.tlsCert, "FLEETRUN_TLS_CERT"), key: read(config.tlsKey, "FLEETRUN_TLS_KEY") };
}

/** How long open connections get to finish once a stop closes the port, and detached runs to settle (ms). */
const CLOSE_GRACE_MS = 1_000;

function fileMode(file: string): number | null {
  try {
    return fs.statSync(file).mode & 0o777;
  } catch {
    return null;
  }
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

function seconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

/**
 * Audit retention, then the chain's head in the log: a log collector keeps it
 * outside the database, where `npm run verify-audit -- --head SEQ:HASH`
 * can later check that the chain still holds it (a rewritten chain or a
 * deleted tail does not).
 */
async function auditRetention(audit: AuditLog, days: number | null, log: FastifyBaseLogger): Promise<void> {
  try {
    if (days !== null) {
      const n = await audit.prune(new Date(Date.now() - days * 86_400_000));
      if (n > 0) log.info({ deleted: n }, "retention pruned audit records");
    }
    const head = await audit.head();
    log.info({ audit_head_seq: head.seq, audit_head_hash: head.hash }, "audit chain head");
  } catch (err) {
    log.error({ err }, "audit retention failed");
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes("--help") || argv.includes("-h")) {
    printHelp();
    return;
  }
  const config = loadConfig(process.env, argv);
  let dataDirReport: DataDirReport;
  // Read once; commands on the built-in machine inherit this process's environment,
  // and a database URL may hold a password.
  for (const secret of [...SECRET_SETTINGS, "DATABASE_URL"]) delete process.env[secret];
  try {
    // 0700, and 0600 for the files in it, also when an older version or a volume left them wider.
    dataDirReport = secureDataDir(config.dataDir);
    fs.accessSync(config.dataDir, fs.constants.W_OK);
  } catch (err) {
    if (err instanceof SharedDataDirError) throw new StartupError(err.message);
    throw new StartupError(`cannot use the data dir ${config.dataDir} (${errCode(err)}): set FLEETRUN_DATA_DIR to a writable directory`);
  }
  // SQLite only: with PostgreSQL the database itself is shared on purpose.
  let lock: DataDirLock | null = null;
  if (config.databaseUrl === null) {
    try {
      lock = lockDataDir(config.dataDir);
    } catch (err) {
      if (err instanceof DataDirLockedError) throw new StartupError(err.message);
      throw new StartupError(`cannot lock the data dir ${config.dataDir} (${errCode(err)}): set FLEETRUN_DATA_DIR to a writable local directory`);
    }
  }
  const admin = ensureAdminToken(config.dataDir, config.adminToken);
  const keyRing = loadKeyRing(config);
  let stores: Awaited<ReturnType<typeof openStores>>;
  try {
    // SQLite gives the -wal and -shm files it creates the database file's mode.
    if (config.databaseUrl === null) createPrivateFile(path.join(config.dataDir, "fleetrun.db"));
    stores = await openStores({ dataDir: config.dataDir, secrets: keyRing.box, ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}) });
  } catch (err) {
    if (err instanceof SecretKeyError) throw err;
    throw new StartupError(
      config.databaseUrl
        ? `cannot open the PostgreSQL database (${dbReason(err, config.databaseUrl)}): check DATABASE_URL`
        : `cannot open the SQLite database in ${config.dataDir} (${dbReason(err, null)}): check FLEETRUN_DATA_DIR`,
    );
  }
  securePrivateFiles(config.dataDir, dataDirReport);
  let storesRef = stores;
  const ssh = createSshTransport({
    ...sshOptionsFrom(config),
    onHostKeyLearned: (machineId, algorithm) => {
      storesRef.machines.update(machineId, { hostKeyAlgorithm: algorithm }).catch(() => {});
    },
  });
  const local = createLocalTransport();
  const tls = readTls(config);
  const tlsKeyMode = config.tlsKey ? fileMode(config.tlsKey) : null;
  const pretty = process.stdout.isTTY === true;
  const app = buildApp({ config, stores, ssh, local, adminToken: admin.token, logger: loggerOptions(config.logLevel, pretty), tls });
  const log = app.fastify.log;
  for (const t of dataDirReport.tightened) {
    log.warn({ path: t.path, from: octal(t.from), to: octal(t.to) }, `${t.path} was mode ${octal(t.from)}: narrowed to ${octal(t.to)} (owner only)`);
  }
  for (const problem of dataDirReport.problems) log.warn({ data_dir: config.dataDir }, problem);
  if (tlsKeyMode !== null && (tlsKeyMode & 0o077) !== 0) {
    log.warn({ file: config.tlsKey }, `FLEETRUN_TLS_KEY ${config.tlsKey} is mode ${octal(tlsKeyMode)}, readable by other users: chmod 600 it`);
  }
  if (config.metricsToken === null && !isLoopback(config.host)) {
    log.warn({ host: config.host }, `GET /metrics is open to every client that reaches ${config.host} (its labels name machines): set FLEETRUN_METRICS_TOKEN to require a token`);
  }
  try {
    await app.tokensReady;
  } catch (err) {
    await stores.close().catch(() => {});
    throw new StartupError(`cannot store the admin token's digest in the database (${dbReason(err, config.databaseUrl)})`);
  }
  // A bug in a background task must not take every running command down with it.
  process.on("unhandledRejection", (err) => log.error({ err }, "unhandled rejection"));
  for (const w of keyRing.warnings) log.warn(w);
  if (stores.secretsReport.sealed > 0) log.info({ values: stores.secretsReport.sealed }, "credentials stored in clear text by an earlier version are now encrypted");
  if (stores.secretsReport.underOlderKeys > 0) {
    log.info({ values: stores.secretsReport.underOlderKeys }, "some credentials are encrypted under an older key: npm run rotate-secrets re-encrypts them under the newest");
  }
  for (const u of unknownSettings()) {
    log.warn(`${u.env} is not a fleetrun setting and is ignored${u.suggestion ? ` (did you mean ${u.suggestion}?)` : ""}; npm start -- --help lists them`);
  }
  const crypto = sshNativeCrypto();
  if (!crypto.loaded) {
    log.warn(
      { reason: crypto.reason },
      "ssh2's native crypto binding does not load, so SSH uses a slower JS path: run `node scripts/native-addons.js` (it rebuilds ssh2 for Node 24) or `npm ci`",
    );
  }

  const recovered = await app.engine.recover();
  if (recovered.reattached + recovered.settled > 0) log.info(recovered, "recovered commands of the previous run");

  let server: Awaited<ReturnType<typeof listenOnePort>>;
  try {
    server = await listenOnePort(app.fastify, { host: config.host, port: config.port });
  } catch (err) {
    const code = errCode(err);
    if (code === "EADDRINUSE") throw new StartupError(`port ${config.port} is in use on ${config.host}: set PORT (or --port) to a free port`);
    if (code === "EACCES") throw new StartupError(`no permission to listen on port ${config.port}: set PORT (or --port) to 1024 or above`);
    if (code === "EADDRNOTAVAIL" || code === "ENOTFOUND" || code === "EAI_AGAIN") {
      throw new StartupError(`cannot listen on ${config.host} (${code}: not an address of this machine): set HOST (or --host)`);
    }
    throw err;
  }
  const tokenKept = admin.file ?? "FLEETRUN_ADMIN_TOKEN";
  log.info(
    { url: server.url, database: config.databaseUrl ? "postgresql" : "sqlite", data_dir: config.dataDir, local_machine: config.localMachine, admin_token: tokenKept },
    `fleetrun listening on ${server.url}; admin token in ${tokenKept}`,
  );
  if (keyRing.generated) log.info(`secret key generated into ${config.dataDir}/secret-key (mode 0600): keep it with backups of the database, which cannot be read without it`);
  if (admin.generated) {
    // The token itself goes only to a person at a terminal, once; a log collector
    // (stderr not a TTY) only learns where it is kept (0600, in the data dir).
    if (process.stderr.isTTY) {
      process.stderr.write(`\nAdmin token (saved to ${admin.file}, shown only this once):\n\n  ${admin.token}\n\n`);
    } else {
      log.info({ admin_token: admin.file }, `admin token generated into ${admin.file} (mode 0600): read it there`);
    }
  }

  let retention: NodeJS.Timeout | null = null;
  const pruneCommands = config.retentionMaxAgeDays !== null || config.retentionMaxPerMachine !== null;
  const audit = stores.audit;
  if (pruneCommands || audit) {
    const prune = () => {
      if (pruneCommands) {
        const olderThan = config.retentionMaxAgeDays !== null ? new Date(Date.now() - config.retentionMaxAgeDays * 86_400_000) : null;
        stores.commands
          .prune({ olderThan, keepPerMachine: config.retentionMaxPerMachine })
          .then((n) => n > 0 && log.info({ deleted: n }, "retention pruned commands"))
          .catch((err: unknown) => log.error({ err }, "retention failed"));
      }
      if (audit) void auditRetention(audit, config.auditRetentionDays, log);
    };
    prune();
    retention = setInterval(prune, config.retentionIntervalMs);
    retention.unref();
  }

  // First signal: followers get their final event at once, the port answers
  // 503 on /healthz while commands with a waiting caller finish (up to the
  // grace), then everything closes. A second signal cuts the grace short.
  let signals = 0;
  const stopNow = new AbortController();
  const stop = async (signal: string) => {
    const t0 = Date.now();
    log.info({ signal }, "shutting down");
    if (retention) clearInterval(retention);
    app.health.shutdown();
    await app.engine.shutdown(config.shutdownGraceMs, {
      stopNow: stopNow.signal,
      onWaiting: (n) =>
        log.info(
          { commands: n, grace_ms: config.shutdownGraceMs },
          `waiting for ${n} ${n === 1 ? "command with a caller" : "commands with callers"}, up to ${seconds(config.shutdownGraceMs)}; signal again to stop now`,
        ),
    });
    // Followers have ended and callers have their answers: what is still open
    // is idle or stalled. SSH connections close meanwhile; nothing needs them now.
    const detached = app.engine.activeRuns;
    const steps: Record<string, number> = { callers_ms: Date.now() - t0 };
    const timed = async (name: string, p: Promise<unknown>) => {
      const s0 = Date.now();
      await p;
      steps[name] = Date.now() - s0;
    };
    await Promise.all([timed("connections_ms", server.close(stopNow.signal.aborted ? 0 : CLOSE_GRACE_MS)), timed("ssh_ms", ssh.close()), local.close()]);
    // Detached commands conclude once their connections are gone (output stored, left to re-attach).
    await timed("settle_ms", app.engine.settled(CLOSE_GRACE_MS));
    await timed("store_ms", stores.close());
    lock?.release();
    log.info({ detached_left_running: detached, took_ms: Date.now() - t0, ...steps }, "stopped");
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      signals++;
      if (signals === 1) {
        stop(signal)
          .then(() => process.exit(0))
          .catch((err: unknown) => {
            log.error({ err }, "shutdown failed");
            process.exit(1);
          });
      } else if (signals === 2) {
        log.info({ signal }, "stopping now: commands with callers are cancelled, detached commands are left to re-attach");
        stopNow.abort();
        server.closeAllConnections();
      } else {
        log.warn({ signal }, "exiting at once");
        process.exit(1);
      }
    });
  }
  storesRef = stores;
}

main().catch((err: unknown) => {
  if (err instanceof ConfigError || err instanceof StartupError || err instanceof SecretKeyError) {
    process.stderr.write(`fleetrun: ${err.message}\n`);
    process.exit(2);
  }
  console.error("fleetrun: failed to start:", err);
  process.exit(1);
});
