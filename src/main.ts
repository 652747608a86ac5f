/**
 * Reads the configuration, builds the app, re-attaches to commands a previous
 * process left running, listens, and shuts down gracefully on SIGTERM/SIGINT.
 */
import fs from "node:fs";
import { ensureAdminToken } from "./admin-token.ts";
import { buildApp, loggerOptions } from "./app.ts";
import { ConfigError, describeConfig, loadConfig, sshOptionsFrom } from "./config.ts";
import { openStores } from "./db/index.ts";
import { listenOnePort } from "./server/one-port-server.ts";
import { createLocalTransport, createSshTransport } from "./ssh/index.ts";

/** How long open connections get to finish once a stop closes the port, and detached runs to settle (ms). */
const CLOSE_GRACE_MS = 1_000;

function seconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

async function main(): Promise<void> {
  if (process.argv.includes("--help")) {
    for (const c of describeConfig()) console.log(`${c.env.padEnd(38)} ${String(c.default).padEnd(12)} ${c.description}`);
    return;
  }
  const config = loadConfig();
  fs.mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  const admin = ensureAdminToken(config.dataDir, config.adminToken);
  const stores = await openStores({ dataDir: config.dataDir, ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}) });
  let storesRef = stores;
  const ssh = createSshTransport({
    ...sshOptionsFrom(config),
    onHostKeyLearned: (machineId, algorithm) => {
      storesRef.machines.update(machineId, { hostKeyAlgorithm: algorithm }).catch(() => {});
    },
  });
  const local = createLocalTransport();
  const tls = config.tlsCert && config.tlsKey ? { cert: fs.readFileSync(config.tlsCert), key: fs.readFileSync(config.tlsKey) } : undefined;
  const app = buildApp({ config, stores, ssh, local, adminToken: admin.token, logger: loggerOptions(config.logLevel), tls });
  const log = app.fastify.log;
  // A bug in a background task must not take every running command down with it.
  process.on("unhandledRejection", (err) => log.error({ err }, "unhandled rejection"));

  const recovered = await app.engine.recover();
  if (recovered.reattached + recovered.settled > 0) log.info(recovered, "recovered commands of the previous run");

  const server = await listenOnePort(app.fastify, { host: config.host, port: config.port });
  log.info({ url: server.url, database: config.databaseUrl ? "postgresql" : "sqlite", local_machine: config.localMachine }, "fleetrun listening");
  if (admin.generated) {
    // Shown once, at the start that created it; kept (0600) in the data dir.
    process.stderr.write(`\nAdmin token (saved to ${admin.file}, shown only this once):\n\n  ${admin.token}\n\n`);
  }

  let retention: NodeJS.Timeout | null = null;
  if (config.retentionMaxAgeDays !== null || config.retentionMaxPerMachine !== null) {
    const prune = () => {
      const olderThan = config.retentionMaxAgeDays !== null ? new Date(Date.now() - config.retentionMaxAgeDays * 86_400_000) : null;
      stores.commands
        .prune({ olderThan, keepPerMachine: config.retentionMaxPerMachine })
        .then((n) => n > 0 && log.info({ deleted: n }, "retention pruned commands"))
        .catch((err: unknown) => log.error({ err }, "retention failed"));
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
  if (err instanceof ConfigError) {
    console.error(`fleetrun: configuration error: ${err.message}`);
  } else {
    console.error("fleetrun: failed to start:", err);
  }
  process.exit(1);
});
