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

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "shutting down");
    if (retention) clearInterval(retention);
    app.health.shutdown();
    const closed = server.close(config.shutdownGraceMs + config.graceMs + 10_000);
    await app.engine.shutdown(config.shutdownGraceMs);
    await closed;
    await ssh.close();
    await local.close();
    await stores.close();
    log.info("stopped");
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.once(signal, () => {
      stop(signal)
        .then(() => process.exit(0))
        .catch((err: unknown) => {
          log.error({ err }, "shutdown failed");
          process.exit(1);
        });
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
