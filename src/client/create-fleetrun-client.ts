/**
 * `createFleetrunClient()`: typed Connect clients for every fleetrun service
 * over gRPC, Connect or gRPC-Web (connect-node transports), with the bearer
 * token and a default deadline wired, plus resumable command streams.
 */
import type { DescService, MessageInitShape } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import type { Client, Interceptor, Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { CommandService } from "../gen/fleetrun/v1/command_pb.js";
import type { ExecuteRequestSchema } from "../gen/fleetrun/v1/command_pb.js";
import { MachineService } from "../gen/fleetrun/v1/machine_pb.js";
import { TokenService } from "../gen/fleetrun/v1/token_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { CommandStream } from "./command-stream.ts";
import type { FollowOptions, ResumeOptions } from "./command-stream.ts";

export type FleetrunProtocol = "connect" | "grpc" | "grpc-web";

export interface FleetrunClientOptions {
  /** The service's URL, e.g. `http://localhost:8080`. */
  baseUrl: string;
  /**
   * Bearer token, or a function returning one per call (for rotation).
   * @default undefined (only health checks work without one)
   */
  token?: string | (() => string | Promise<string>) | undefined;
  /**
   * Wire protocol. gRPC always uses HTTP/2.
   * @default "connect"
   */
  protocol?: FleetrunProtocol;
  /**
   * HTTP version for Connect and gRPC-Web (`"2"` is h2c on `http://`, ALPN on `https://`).
   * @default "2" for gRPC, "1.1" otherwise
   */
  httpVersion?: "1.1" | "2";
  /**
   * Deadline of unary calls in milliseconds (sent as `grpc-timeout` /
   * `connect-timeout-ms`; an expired `Execute` cancels its command). Server
   * streams get none unless a call sets `timeoutMs`. 0 or undefined: none.
   * @default undefined
   */
  timeoutMs?: number | undefined;
  /** Headers sent with every call. @default {} */
  headers?: Record<string, string>;
  /** Further interceptors, run after the one that adds the token. @default [] */
  interceptors?: Interceptor[];
  /** Reconnect policy of `executeAsync()` and `watch()`. @default { maxAttempts: 8, initialDelayMs: 200, maxDelayMs: 5000 } */
  resume?: ResumeOptions;
  /**
   * Largest message accepted from the server, in bytes.
   * @default 67108864 (64 MiB: a unary Execute carries up to twice the stored output cap)
   */
  readMaxBytes?: number;
}

export interface FleetrunClient {
  /** `fleetrun.v1.CommandService`: execute, start, get, watch, cancel, batches, history. */
  readonly commands: Client<typeof CommandService>;
  /** `fleetrun.v1.MachineService`: the registry of SSH targets. */
  readonly machines: Client<typeof MachineService>;
  /** `fleetrun.v1.TokenService`: scoped tokens (admin). */
  readonly tokens: Client<typeof TokenService>;
  /** `grpc.health.v1.Health` (needs no token). */
  readonly health: Client<typeof Health>;
  /** The transport every client here uses (token, deadline and interceptors included). */
  readonly transport: Transport;
  /** A typed client for any other service the server offers, on the same transport. */
  service<S extends DescService>(service: S): Client<S>;
  /**
   * Starts a command and streams it (`ExecuteAsync`): `started` with the id,
   * output, `end`. A dropped connection after `started` resumes with
   * `WatchCommand` from the last offset: no gap, no duplicate.
   */
  executeAsync(request: MessageInitShape<typeof ExecuteRequestSchema>, options?: FollowOptions): CommandStream;
  /** Follows an existing command from `offset` (default 0) to its `end`, resuming after drops. */
  watch(commandId: string, options?: FollowOptions & { offset?: bigint | number }): CommandStream;
  /** Closes the HTTP/2 connection, if any. Calls in flight fail. */
  close(): void;
}

const DEFAULT_RESUME: Required<ResumeOptions> = { maxAttempts: 8, initialDelayMs: 200, maxDelayMs: 5000 };

/**
 * Builds the clients. Nothing connects until the first call.
 *
 * ```ts
 * const fleet = createFleetrunClient({ baseUrl: "http://localhost:8080", token: process.env.FLEETRUN_TOKEN });
 * const cmd = await fleet.commands.execute({ machineId: "mach_local", command: "uptime" });
 * ```
 */
export function createFleetrunClient(options: FleetrunClientOptions): FleetrunClient {
  const protocol = options.protocol ?? "connect";
  const httpVersion = protocol === "grpc" ? "2" : (options.httpVersion ?? "1.1");
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const interceptors: Interceptor[] = [authInterceptor(options.token, options.headers ?? {}), ...(options.interceptors ?? [])];
  const readMaxBytes = options.readMaxBytes ?? 64 * 1024 * 1024;
  const sessionManager = httpVersion === "2" ? new Http2SessionManager(baseUrl) : undefined;
  const common = { baseUrl, interceptors, readMaxBytes };
  let inner: Transport;
  if (protocol === "grpc") {
    inner = createGrpcTransport({ ...common, ...(sessionManager ? { sessionManager } : {}) });
  } else {
    const make = protocol === "grpc-web" ? createGrpcWebTransport : createConnectTransport;
    inner = httpVersion === "2" ? make({ ...common, httpVersion: "2", ...(sessionManager ? { sessionManager } : {}) }) : make({ ...common, httpVersion: "1.1" });
  }
  const transport = withUnaryDeadline(inner, options.timeoutMs);
  const commands = createClient(CommandService, transport);
  const resume = { ...DEFAULT_RESUME, ...options.resume };
  return {
    commands,
    machines: createClient(MachineService, transport),
    tokens: createClient(TokenService, transport),
    health: createClient(Health, transport),
    transport,
    service: (service) => createClient(service, transport),
    executeAsync: (request, opts = {}) => new CommandStream(commands, { kind: "execute", request }, opts, resume),
    watch: (commandId, opts = {}) => new CommandStream(commands, { kind: "watch", commandId, offset: BigInt(opts.offset ?? 0) }, opts, resume),
    close: () => sessionManager?.abort(),
  };
}

/** Adds `Authorization: Bearer …` (unless the call sets its own) and the fixed headers. */
function authInterceptor(token: FleetrunClientOptions["token"], headers: Record<string, string>): Interceptor {
  return (next) => async (req) => {
    for (const [k, v] of Object.entries(headers)) if (!req.header.has(k)) req.header.set(k, v);
    if (token !== undefined && !req.header.has("authorization")) {
      const value = typeof token === "function" ? await token() : token;
      if (value !== "") req.header.set("authorization", `Bearer ${value}`);
    }
    return next(req);
  };
}

/** The default deadline for unary calls only (a transport's own default would also cut long streams). */
function withUnaryDeadline(transport: Transport, timeoutMs: number | undefined): Transport {
  if (timeoutMs === undefined || timeoutMs <= 0) return transport;
  return {
    unary: (method, signal, callTimeoutMs, header, input, contextValues) =>
      transport.unary(method, signal, callTimeoutMs ?? timeoutMs, header, input, contextValues),
    stream: (method, signal, callTimeoutMs, header, input, contextValues) =>
      transport.stream(method, signal, callTimeoutMs, header, input, contextValues),
  };
}
