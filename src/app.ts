/**
 * buildApp(deps): the whole service wired together, not listening. Tests
 * build it on port 0; main.ts adds configuration, signals and listening.
 */
import os from "node:os";
import { createRouterTransport, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
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
import { CommandService } from "./gen/fleetrun/v1/command_pb.js";
import { MachineService } from "./gen/fleetrun/v1/machine_pb.js";
import { TokenService } from "./gen/fleetrun/v1/token_pb.js";
import { TokenLimiter } from "./exec/token-limits.ts";
import { TokenRegistry } from "./exec/tokens.ts";
import { Counter, EVENT_LOOP_LAG_BUCKETS, Gauge, Histogram, Registry, sampleEventLoopLag } from "./metrics.ts";
import { registerOpenApiRoute } from "./rest/openapi-route.ts";
import { RestHttpError, restErrorFrom } from "./rest/rest-errors.ts";
import { registerRestRoutes, restLoggerSerializers } from "./rest/rest-routes.ts";
import { authInterceptor } from "./rpc/auth.ts";
import { batchHandlers } from "./rpc/batch-handlers.ts";
import { commandServiceImpl } from "./rpc/command-service.ts";
import { machineServiceImpl } from "./rpc/machine-service.ts";
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
  /** Where the service reports what it did (host keys pinned, refused, accepted unchecked). @default NO_AUDIT */
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
  const fastify = createFastify({
    logger: deps.logger ?? false,
    bodyLimit: config.bodyLimit,
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
  const commandsTotal = metrics.add(new Counter("fleetrun_commands_total", "Commands that reached a terminal state, by status and machine"));
  const commandsStarted = metrics.add(new Counter("fleetrun_commands_started_total", "Commands started on their target, by machine"));
  const durations = metrics.add(
    new Histogram("fleetrun_command_duration_seconds", "Duration of ended commands, by status", [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600]),
  );

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
  deps.ssh.useHostKeyTrust?.(createHostKeyTrust(stores.machines, deps.audit ?? NO_AUDIT));
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
      commandStarted: (c) => commandsStarted.inc({ machine_id: c.machineId }),
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
  const interceptors: Interceptor[] = [authInterceptor({ tokens, limiter: tokenLimiter })];
  const health = createHealthService({
    initial: { "": "SERVING", [CommandService.typeName]: "SERVING", [MachineService.typeName]: "SERVING", [TokenService.typeName]: "SERVING" },
  });

  const commandImpl = commandServiceImpl({
    engine,
    commands: stores.commands,
    batches: batchHandlers(batches, engine, config.batchOutputCap),
    onInternal,
  });
  const machineImpl = machineServiceImpl(registry, onInternal);
  const tokenImpl = tokenServiceImpl(tokens, onInternal);
  const routes = (router: ConnectRouter) => {
    router.service(CommandService, commandImpl);
    router.service(MachineService, machineImpl);
    router.service(TokenService, tokenImpl);
    health.register(router);
    registerReflection(router);
  };
  const limits = { readMaxBytes: config.bodyLimit, writeMaxBytes: 64 * 1024 * 1024 };

  fastify.register(fastifyConnectPlugin, { routes, interceptors, ...limits, shutdownTimeoutMs: 1000 });
  registerRestRoutes(fastify, {
    services: [CommandService, MachineService, TokenService],
    transport: createRouterTransport(routes, { router: { interceptors, ...limits } }),
    bodyLimit: config.bodyLimit,
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
  fastify.get("/metrics", async (_req, reply) => {
    return reply.type("text/plain; version=0.0.4").send(metrics.render());
  });

  return { fastify, engine, registry, batches, health, metrics, tokens, tokenLimiter, tokensReady };
}

/** Answers `err` as `{"error":{"code","message","field"?}}` with its HTTP status. */
function sendErrorEnvelope(request: FastifyRequest, reply: FastifyReply, err: unknown, bodyLimit?: number): FastifyReply {
  const { status, body } = restErrorFrom(err, bodyLimit);
  if (status >= 500) request.log.error({ err }, "request failed");
  return reply.code(status).header("content-type", "application/json; charset=utf-8").send(JSON.stringify(body));
}
