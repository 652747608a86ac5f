/**
 * buildApp(deps): the whole service wired together, not listening. Tests
 * build it on port 0; main.ts adds configuration, signals and listening.
 */
import os from "node:os";
import { createRouterTransport, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import type { FastifyInstance, FastifyServerOptions } from "fastify";
import type { Config } from "./config.ts";
import { BatchRunner } from "./exec/batch-runner.ts";
import { CommandEngine } from "./exec/command-engine.ts";
import { MachineRegistry } from "./exec/machine-registry.ts";
import type { MachineRecord, Stores, Transport } from "./exec/ports.ts";
import { CommandService } from "./gen/fleetrun/v1/command_pb.js";
import { MachineService } from "./gen/fleetrun/v1/machine_pb.js";
import { Counter, Gauge, Histogram, Registry } from "./metrics.ts";
import { registerRestRoutes, restLoggerSerializers } from "./rest/rest-routes.ts";
import { authInterceptor, TokenVerifier } from "./rpc/auth.ts";
import { batchHandlers } from "./rpc/batch-handlers.ts";
import { commandServiceImpl } from "./rpc/command-service.ts";
import { machineServiceImpl } from "./rpc/machine-service.ts";
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
  /** The admin token (plain text, kept only as a digest). */
  adminToken: string;
  /** fastify/pino logger options; false disables logging (tests). */
  logger?: FastifyServerOptions["logger"];
  tls?: { cert: string | Buffer; key: string | Buffer } | undefined;
}

export interface App {
  fastify: FastifyInstance;
  engine: CommandEngine;
  registry: MachineRegistry;
  batches: BatchRunner;
  health: HealthService;
  metrics: Registry;
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

export function loggerOptions(level: string): FastifyServerOptions["logger"] {
  return {
    level,
    redact: { paths: LOG_REDACT, censor: "[redacted]" },
    serializers: restLoggerSerializers,
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
  });
  const log = fastify.log;
  const onInternal = (err: unknown) => log.error({ err }, "internal error");

  const metrics = new Registry();
  const commandsTotal = metrics.add(new Counter("fleetrun_commands_total", "Commands that reached a terminal state, by status and machine"));
  const commandsStarted = metrics.add(new Counter("fleetrun_commands_started_total", "Commands started on their target, by machine"));
  const durations = metrics.add(
    new Histogram("fleetrun_command_duration_seconds", "Duration of ended commands, by status", [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600]),
  );

  const localMachine = config.localMachine ? localMachineRecord() : null;
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
    },
  });
  metrics.add(new Gauge("fleetrun_commands_running", "Commands this process is running or following", () => engine.activeRuns));
  metrics.add(new Gauge("fleetrun_ssh_connections", "Open SSH connections", () => deps.ssh.stats().connections));
  metrics.add(new Gauge("fleetrun_ssh_channels", "Open SSH channels", () => deps.ssh.stats().channels));
  metrics.add(new Gauge("fleetrun_followers", "Clients following live output", () => engine.bus.followers));

  const registry = new MachineRegistry({
    machines: stores.machines,
    commands: stores.commands,
    ssh: deps.ssh,
    local: deps.local,
    localMachine,
    checkPrivateKey: privateKeyProblem,
  });
  const batches = new BatchRunner(engine, stores, { defaultConcurrency: config.batchConcurrency, maxMachines: config.batchMaxMachines });

  const verifier = new TokenVerifier();
  verifier.addToken(deps.adminToken, { name: "admin", admin: true });
  const interceptors: Interceptor[] = [authInterceptor(verifier)];
  const health = createHealthService({ initial: { "": "SERVING", [CommandService.typeName]: "SERVING", [MachineService.typeName]: "SERVING" } });

  const commandImpl = commandServiceImpl({
    engine,
    commands: stores.commands,
    batches: batchHandlers(batches, engine, config.batchOutputCap),
    onInternal,
  });
  const machineImpl = machineServiceImpl(registry, onInternal);
  const routes = (router: ConnectRouter) => {
    router.service(CommandService, commandImpl);
    router.service(MachineService, machineImpl);
    health.register(router);
    registerReflection(router);
  };
  const limits = { readMaxBytes: config.bodyLimit, writeMaxBytes: 64 * 1024 * 1024 };

  fastify.register(fastifyConnectPlugin, { routes, interceptors, ...limits, shutdownTimeoutMs: 1000 });
  registerRestRoutes(fastify, {
    services: [CommandService, MachineService],
    transport: createRouterTransport(routes, { router: { interceptors, ...limits } }),
    bodyLimit: config.bodyLimit,
  });

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

  return { fastify, engine, registry, batches, health, metrics };
}
