/**
 * buildApp(deps): the whole service wired together, not listening. Tests
 * build it on port 0; main.ts adds configuration, signals and listening.
 */
import { timingSafeEqual } from "node:crypto";
import os from "node:os";
import { createContextValues, createRouterTransport, type ConnectRouter } from "@connectrpc/connect";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifyServerOptions } from "fastify";
import { settingName, type Config } from "./config.ts";
import { Admission } from "./exec/admission.ts";
import { BatchRunner } from "./exec/batch-runner.ts";
import { CommandEngine } from "./exec/command-engine.ts";
import { NO_AUDIT, type AuditSink } from "./exec/audit-port.ts";
import { createHostKeyTrust } from "./exec/host-key-trust.ts";
import { MachineRegistry } from "./exec/machine-registry.ts";
import type { MachineRecord, Stores, Transport } from "./exec/ports.ts";
import { AuditService } from "./gen/fleetrun/v1/audit_pb.js";
import { CommandService } from "./gen/fleetrun/v1/command_pb.js";
import { MachineService } from "./gen/fleetrun/v1/machine_pb.js";
import { TokenService } from "./gen/fleetrun/v1/token_pb.js";
import { TokenLimiter } from "./exec/token-limits.ts";
import { digest, TokenRegistry } from "./exec/tokens.ts";
import { Counter, EVENT_LOOP_LAG_BUCKETS, Gauge, Histogram, Registry, sampleEventLoopLag } from "./metrics.ts";
import { registerOpenApiRoute } from "./rest/openapi-route.ts";
import { RestHttpError, restErrorFrom } from "./rest/rest-errors.ts";
import { registerRestRoutes, restLoggerSerializers } from "./rest/rest-routes.ts";
import { auditInterceptor, CLIENT_ADDRESS_HEADER, clientAddressKey, normalClientAddress } from "./rpc/audit-interceptor.ts";
import { auditServiceImpl } from "./rpc/audit-service.ts";
import { authInterceptor, bearerToken } from "./rpc/auth.ts";
import { batchHandlers } from "./rpc/batch-handlers.ts";
import { commandServiceImpl } from "./rpc/command-service.ts";
import { machineServiceImpl } from "./rpc/machine-service.ts";
import { nulGuardInterceptor } from "./rpc/nul-guard.ts";
import { tokenServiceImpl } from "./rpc/token-service.ts";
import { registerCors } from "./server/cors.ts";
import { createHealthService, type HealthService } from "./server/health.ts";
import { createFastify } from "./server/one-port-server.ts";
import { registerReflection } from "./server/reflection.ts";
import { privateKeyProblem } from "./ssh/private-key.ts";

export const LOCAL_MACHINE_ID = "mach_local";

export interface AppDeps {
  config: Config;
  stores: Stores;
  ssh: Transport;
  local: Transport;
  /** The bootstrap admin token (plain text; stored in the database as a digest only). */
  adminToken: string;
  /** fastify/pino logger options; false disables logging (tests). */
  logger?: FastifyServerOptions["logger"];
  tls?: { cert: string | Buffer; key: string | Buffer } | undefined;
  /**
   * Where audit records go.
   * @default stores.audit (the store's hash-chained log), else nothing
   */
  audit?: AuditSink;
}

export interface App {
  fastify: FastifyInstance;
  engine: CommandEngine;
  registry: MachineRegistry;
  batches: BatchRunner;
  health: HealthService;
  metrics: Registry;
  tokens: TokenRegistry;
  tokenLimiter: TokenLimiter;
  /** Settles once the bootstrap admin token's digest is stored (rejects when it cannot be). */
  tokensReady: Promise<void>;
  /** The audit sink every call is recorded in; non-RPC code records its own events here. */
  audit: AuditSink;
}

/** Paths and headers that must never reach a log line. */
export const LOG_REDACT = [
  "req.headers.authorization",
  "req.headers.cookie",
  "headers.authorization",
  "authorization",
  "*.private_key",
  "*.password",
  "*.passphrase",
  "*.env",
  "privateKey",
  "password",
  "passphrase",
  "env",
];

/**
 * JSON lines by default (for log collectors); `pretty` (main.ts sets it when stdout is
 * a terminal) formats them for people through pino-pretty, redaction unchanged.
 */
export function loggerOptions(level: string, pretty = false): FastifyServerOptions["logger"] {
  return {
    level,
    redact: { paths: LOG_REDACT, censor: "[redacted]" },
    serializers: restLoggerSerializers,
    ...(pretty
      ? { transport: { target: "pino-pretty", options: { colorize: true, translateTime: "SYS:HH:MM:ss.l", ignore: "pid,hostname" } } }
      : {}),
  };
}

function localMachineRecord(): MachineRecord {
  const epoch = new Date(0);
  return {
    id: LOCAL_MACHINE_ID,
    name: "local",
    host: "localhost",
    port: 0,
    username: os.userInfo().username,
    privateKey: null,
    passphrase: null,
    password: null,
    hostKeyFingerprint: null,
    hostKeyAlgorithm: null,
    hostKeyPolicy: null,
    labels: { builtin: "true" },
    createdAt: epoch,
    updatedAt: epoch,
  };
}

export function buildApp(deps: AppDeps): App {
  const { config, stores } = deps;
  // Set once the registry exists; connections are refused only after listen().
  let onConnectionRefused: (reason: "per_address" | "total", address: string) => void = () => {};
  const fastify = createFastify({
    logger: deps.logger ?? false,
    bodyLimit: config.bodyLimit,
    headersTimeout: config.headersTimeoutMs,
    idleTimeout: config.idleTimeoutMs,
    maxConnectionsPerAddress: config.maxConnectionsPerAddress,
    maxConnections: config.maxConnections,
    onConnectionRefused: (reason, address) => onConnectionRefused(reason, address),
    ...(deps.tls ? { tls: deps.tls } : {}),
    fastify: {
      // `/v1/commands/` is `/v1/commands`, never `/v1/commands/{id}` with an empty id.
      routerOptions: { ignoreTrailingSlash: true },
      frameworkErrors: (err, request, reply) => sendErrorEnvelope(request, reply, err),
    },
  });
  const log = fastify.log;
  registerCors(fastify, { origins: config.corsOrigins });
  const onInternal = (err: unknown) => log.error({ err }, "internal error");

  const metrics = new Registry();
  const audit: AuditSink = deps.audit ?? stores.audit ?? NO_AUDIT;
  const auditLost = metrics.add(new Counter("fleetrun_audit_records_lost_total", "Audit records that could not be written to the database"));
  stores.audit?.onWriteError((err, lost) => {
    auditLost.inc({}, lost);
    log.error({ err, lost }, "audit records could not be written");
  });
  const commandsTotal = metrics.add(new Counter("fleetrun_commands_total", "Commands that reached a terminal state, by status and machine"));
  const commandsStarted = metrics.add(new Counter("fleetrun_commands_started_total", "Commands started on their target, by machine"));
  const durations = metrics.add(
    new Histogram("fleetrun_command_duration_seconds", "Duration of ended commands, by status", [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600]),
  );

  const connectionsRefused = metrics.add(
    new Counter("fleetrun_connections_refused_total", "Client connections closed at once at a connection cap, by cap (per_address, total)"),
  );
  onConnectionRefused = connectionRefusalLogger(log, (reason) => connectionsRefused.inc({ reason }), config);

  const refusals = metrics.add(new Counter("fleetrun_admission_refused_total", "Calls refused at a limit (429 / RESOURCE_EXHAUSTED), by limit"));
  const admission = new Admission({
    limits: { maxActiveCommands: config.maxActiveCommands, maxPendingStarts: config.maxPendingStarts, maxFollowers: config.maxFollowers },
    settings: {
      active_commands: settingName("maxActiveCommands"),
      pending_starts: settingName("maxPendingStarts"),
      ssh_handshake_queue: settingName("sshHandshakeQueue"),
      followers: settingName("maxFollowers"),
    },
    onRefused: (limit) => refusals.inc({ limit }),
  });
  const lag = metrics.add(
    new Histogram("fleetrun_event_loop_lag_seconds", "How late a timer due every 100 ms fired: the event loop's lag", EVENT_LOOP_LAG_BUCKETS),
  );
  const lagSampler = sampleEventLoopLag(lag, 100);
  fastify.addHook("onClose", async () => lagSampler.stop());

  const localMachine = config.localMachine ? localMachineRecord() : null;
  // Host keys of tofu machines are recorded in the store before authentication; checks are audited.
  deps.ssh.useHostKeyTrust?.(createHostKeyTrust(stores.machines, audit));
  const engine = new CommandEngine({
    stores,
    ssh: deps.ssh,
    local: deps.local,
    localMachine,
    config: {
      defaultTimeoutMs: config.defaultTimeoutMs,
      maxTimeoutMs: config.maxTimeoutMs,
      maxCommandBytes: config.maxCommandBytes,
      maxEnvBytes: config.maxEnvBytes,
      graceMs: config.graceMs,
      outputCapPerStream: config.outputCapPerStream,
      detachedReattachSlackMs: config.detachedReattachSlackMs,
    },
    admission,
    observer: {
      commandStarted: (c) => {
        commandsStarted.inc({ machine_id: c.machineId });
        // Also a record at the start: a long Execute is otherwise only recorded when it answers.
        audit.record({
          actor: c.requestedBy,
          action: "command.started",
          outcome: "ok",
          machineId: c.machineId,
          commandId: c.id,
          ...(c.batchId !== null ? { batchId: c.batchId } : {}),
          command: c.command,
          ...(c.user !== null ? { detail: `run_as=${c.user}` } : {}),
        });
      },
      commandEnded: (c) => {
        commandsTotal.inc({ status: c.status, machine_id: c.machineId });
        if (c.durationMs !== null) durations.observe({ status: c.status }, c.durationMs / 1000);
        // Never the command's env or output: ids, status and codes only.
        log.info(
          { command_id: c.id, machine_id: c.machineId, status: c.status, exit_code: c.exitCode, error_code: c.errorCode, requested_by: c.requestedBy },
          "command ended",
        );
      },
      warn: (message, fields) => log.warn(fields, message),
      ...(["debug", "trace"].includes(log.level) ? { commandStages: (c: { id: string }, stages_ms: Record<string, number>) => log.debug({ command_id: c.id, stages_ms }, "command stages") } : {}),
    },
  });
  metrics.add(new Gauge("fleetrun_commands_running", "Commands this process is running or following", () => engine.activeRuns));
  metrics.add(new Gauge("fleetrun_ssh_connections", "Open SSH connections", () => deps.ssh.stats().connections));
  metrics.add(new Gauge("fleetrun_ssh_channels", "Open SSH channels", () => deps.ssh.stats().channels));
  metrics.add(new Gauge("fleetrun_followers", "Clients following live output", () => engine.bus.followers));
  metrics.add(new Gauge("fleetrun_active_commands", "Commands admitted in this process and not ended (queued or running, all modes)", () => admission.activeCommands));
  metrics.add(new Gauge("fleetrun_pending_starts", "Admitted commands not yet running on their target", () => admission.pendingStarts));
  metrics.add(new Gauge("fleetrun_stream_followers", "Admitted live-output followers (WatchCommand, ExecuteAsync, REST /stream)", () => admission.followers));
  metrics.add(new Gauge("fleetrun_ssh_handshakes_active", "SSH handshakes in progress", () => deps.ssh.handshakeStats?.().active ?? 0));
  metrics.add(new Gauge("fleetrun_ssh_handshakes_queued", "SSH handshakes waiting for a slot", () => deps.ssh.handshakeStats?.().queued ?? 0));

  const registry = new MachineRegistry({
    machines: stores.machines,
    commands: stores.commands,
    ssh: deps.ssh,
    local: deps.local,
    localMachine,
    checkPrivateKey: privateKeyProblem,
    cancelCommand: (id, by) => engine.cancel(id, by),
    cancelWaitMs: config.graceMs + 10_000,
  });
  const batches = new BatchRunner(engine, stores, { defaultConcurrency: config.batchConcurrency, maxMachines: config.batchMaxMachines });

  const tokenStore = stores.tokens;
  const tokens = new TokenRegistry(tokenStore, { onError: (err) => log.warn({ err }, "could not record a token's last use") });
  // Requests wait for the bootstrap token's digest to be stored (main.ts fails the start if it cannot be).
  const tokensReady = tokens.ensureBootstrap(deps.adminToken).then(() => {});
  tokensReady.catch(() => {});
  const tokenLimiter = new TokenLimiter({
    defaults: {
      maxConcurrentCommands: config.tokenMaxCommands,
      requestsPerSecond: config.tokenRequestsPerSecond,
      burst: config.tokenBurst,
      maxStreams: config.tokenMaxStreams,
    },
    settings: {
      maxConcurrentCommands: settingName("tokenMaxCommands"),
      requestsPerSecond: settingName("tokenRequestsPerSecond"),
      burst: settingName("tokenBurst"),
      maxStreams: settingName("tokenMaxStreams"),
    },
    onRefused: (limit) => refusals.inc({ limit }),
  });
  const auth = authInterceptor({ tokens, limiter: tokenLimiter });
  // The audit interceptor is outside auth, so that refused calls are recorded too.
  const nulGuard = nulGuardInterceptor();
  const connectInterceptors = [auditInterceptor(audit, { address: "context" }), auth, nulGuard];
  const restInterceptors = [auditInterceptor(audit, { address: "rest-header" }), auth, nulGuard];
  const health = createHealthService({
    initial: { "": "SERVING", [CommandService.typeName]: "SERVING", [MachineService.typeName]: "SERVING", [TokenService.typeName]: "SERVING", [AuditService.typeName]: "SERVING" },
  });

  const commandImpl = commandServiceImpl({
    engine,
    commands: stores.commands,
    batches: batchHandlers(batches, engine, config.batchOutputCap),
    onInternal,
  });
  const machineImpl = machineServiceImpl(registry, onInternal);
  const tokenImpl = tokenServiceImpl(tokens, onInternal);
  const auditLog = stores.audit;
  const auditImpl = auditLog ? auditServiceImpl(auditLog, onInternal) : null;
  const routes = (router: ConnectRouter) => {
    router.service(CommandService, commandImpl);
    router.service(MachineService, machineImpl);
    router.service(TokenService, tokenImpl);
    if (auditImpl) router.service(AuditService, auditImpl);
    health.register(router);
    registerReflection(router);
  };
  const limits = { readMaxBytes: config.bodyLimit, writeMaxBytes: 64 * 1024 * 1024 };

  fastify.register(fastifyConnectPlugin, {
    routes,
    interceptors: connectInterceptors,
    contextValues: (req) => createContextValues().set(clientAddressKey, normalClientAddress(req.ip)),
    ...limits,
    shutdownTimeoutMs: 1000,
  });
  registerRestRoutes(fastify, {
    services: auditImpl ? [CommandService, MachineService, TokenService, AuditService] : [CommandService, MachineService, TokenService],
    transport: createRouterTransport(routes, { router: { interceptors: restInterceptors, ...limits } }),
    bodyLimit: config.bodyLimit,
    callHeaders: (request): Record<string, string> => {
      const address = normalClientAddress(request.ip);
      return address === undefined ? {} : { [CLIENT_ADDRESS_HEADER]: address };
    },
  });

  registerOpenApiRoute(fastify);
  // Everything outside the REST routes answers errors in the same envelope.
  fastify.setNotFoundHandler((request, reply) =>
    sendErrorEnvelope(request, reply, new RestHttpError(404, "not_found", `no route for ${request.method} ${request.url.split("?")[0] ?? ""}`)),
  );
  fastify.setErrorHandler((err, request, reply) => sendErrorEnvelope(request, reply, err, config.bodyLimit));

  // While a stop waits for callers' commands the port still answers: 503 tells
  // load balancers and probes to go elsewhere.
  fastify.get("/healthz", async (_req, reply) => {
    if (engine.stopping) return reply.code(503).send({ status: "stopping" });
    return { status: "ok" };
  });
  fastify.get("/readyz", async (_req, reply) => {
    if (engine.stopping) return reply.code(503).send({ status: "stopping" });
    try {
      await stores.ping();
      return { status: "ready" };
    } catch {
      return reply.code(503).send({ status: "not ready", reason: "database unavailable" });
    }
  });
  const metricsAllowed = bearerCheck(config.metricsToken);
  fastify.get("/metrics", async (request, reply) => {
    if (!metricsAllowed(request.headers.authorization)) {
      void reply.header("www-authenticate", 'Bearer realm="metrics"');
      return sendErrorEnvelope(request, reply, new RestHttpError(401, "unauthenticated", "GET /metrics needs Authorization: Bearer <FLEETRUN_METRICS_TOKEN>"));
    }
    return reply.type("text/plain; version=0.0.4").send(metrics.render());
  });

  return { fastify, engine, registry, batches, health, metrics, tokens, tokenLimiter, tokensReady, audit };
}

/**
 * `header` carries `Bearer <token>` (compared as SHA-256 digests in constant
 * time); always true when no token is configured.
 */
function bearerCheck(token: string | null): (header: string | undefined) => boolean {
  if (token === null) return () => true;
  const want = digest(token);
  return (header) => {
    const given = bearerToken(header ?? null);
    return given !== null && timingSafeEqual(digest(given), want);
  };
}

/**
 * Counts each connection closed at a cap, and logs them at most once per 10 s
 * (a flood of refused connections must not become a flood of log lines).
 */
function connectionRefusalLogger(
  log: FastifyInstance["log"],
  count: (reason: "per_address" | "total") => void,
  config: Config,
): (reason: "per_address" | "total", address: string) => void {
  let since = 0;
  let last = 0;
  return (reason, address) => {
    count(reason);
    since++;
    const now = Date.now();
    if (now - last < 10_000) return;
    last = now;
    const setting = reason === "per_address" ? settingName("maxConnectionsPerAddress") : settingName("maxConnections");
    const limit = reason === "per_address" ? config.maxConnectionsPerAddress : config.maxConnections;
    log.warn({ reason, address, refused: since, limit }, `closed ${since} client connection(s) at the cap ${setting}=${limit} (latest from ${address})`);
    since = 0;
  };
}

/** Answers `err` as `{"error":{"code","message","field"?}}` with its HTTP status. */
function sendErrorEnvelope(request: FastifyRequest, reply: FastifyReply, err: unknown, bodyLimit?: number): FastifyReply {
  const { status, body } = restErrorFrom(err, bodyLimit);
  if (status >= 500) request.log.error({ err }, "request failed");
  return reply.code(status).header("content-type", "application/json; charset=utf-8").send(JSON.stringify(body));
}
