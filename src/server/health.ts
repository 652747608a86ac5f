/**
 * The standard gRPC health service (`grpc.health.v1.Health`) served through
 * Connect, so gRPC load balancers, Kubernetes gRPC probes and
 * `grpc_health_probe` can ask the same port as every other client.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus,
  HealthCheckResponseSchema,
  HealthListResponseSchema,
} from "../gen/grpc/health/v1/health_pb.js";
import type { HealthCheckRequest, HealthCheckResponse, HealthListResponse } from "../gen/grpc/health/v1/health_pb.js";

/** What a service name can be set to. */
export type ServingStatus = "SERVING" | "NOT_SERVING";

export interface HealthService {
  /** Adds the `grpc.health.v1.Health` routes to a Connect router. */
  register(router: ConnectRouter): void;
  /**
   * Sets the status of a service name (`""` is the server as a whole).
   * Watchers of that name receive the change. Ignored after {@link shutdown}.
   */
  setStatus(service: string, status: ServingStatus): void;
  /** The status of a service name, or undefined when it was never set. */
  getStatus(service: string): ServingStatus | undefined;
  /**
   * For a graceful stop: every known name turns NOT_SERVING, watchers get that
   * update, then their streams end so they do not hold the connection open.
   * Later `setStatus` calls are ignored.
   */
  shutdown(): void;
}

export interface HealthServiceOptions {
  /** Initial statuses. @default { "": "SERVING" } */
  initial?: Readonly<Record<string, ServingStatus>> | undefined;
}

type Listener = (status: HealthCheckResponse_ServingStatus | "end") => void;

const toProto: Record<ServingStatus, HealthCheckResponse_ServingStatus> = {
  SERVING: HealthCheckResponse_ServingStatus.SERVING,
  NOT_SERVING: HealthCheckResponse_ServingStatus.NOT_SERVING,
};

/** Creates a health service with its own status table. */
export function createHealthService(options: HealthServiceOptions = {}): HealthService {
  const statuses = new Map<string, ServingStatus>(Object.entries(options.initial ?? { "": "SERVING" }));
  const listeners = new Map<string, Set<Listener>>();
  let stopped = false;

  function notify(service: string, status: HealthCheckResponse_ServingStatus | "end"): void {
    for (const listener of listeners.get(service) ?? []) listener(status);
  }

  function current(service: string): HealthCheckResponse_ServingStatus {
    const status = statuses.get(service);
    return status === undefined ? HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN : toProto[status];
  }

  function check(req: HealthCheckRequest): HealthCheckResponse {
    const status = statuses.get(req.service);
    if (status === undefined) {
      throw new ConnectError(`unknown service ${JSON.stringify(req.service)}`, Code.NotFound);
    }
    return create(HealthCheckResponseSchema, { status: toProto[status] });
  }

  function list(): HealthListResponse {
    const out = create(HealthListResponseSchema);
    for (const [name, status] of statuses) {
      out.statuses[name] = create(HealthCheckResponseSchema, { status: toProto[status] });
    }
    return out;
  }

  /**
   * Sends the current status at once, then each change, until the caller
   * hangs up or the service shuts down.
   */
  async function* watch(req: HealthCheckRequest, ctx: HandlerContext): AsyncGenerator<HealthCheckResponse> {
    const queue: (HealthCheckResponse_ServingStatus | "end")[] = [];
    let wake: (() => void) | undefined;
    const listener: Listener = (status) => {
      queue.push(status);
      wake?.();
    };
    const onAbort = (): void => wake?.();
    let set = listeners.get(req.service);
    if (set === undefined) {
      set = new Set();
      listeners.set(req.service, set);
    }
    set.add(listener);
    if (stopped) queue.push("end");
    ctx.signal.addEventListener("abort", onAbort);
    try {
      let last = current(req.service);
      yield create(HealthCheckResponseSchema, { status: last });
      while (!ctx.signal.aborted) {
        const next = queue.shift();
        if (next === undefined) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = undefined;
          continue;
        }
        if (next === "end") return;
        if (next === last) continue;
        last = next;
        yield create(HealthCheckResponseSchema, { status: next });
      }
    } finally {
      ctx.signal.removeEventListener("abort", onAbort);
      set.delete(listener);
      if (set.size === 0) listeners.delete(req.service);
    }
  }

  return {
    register(router) {
      router.service(Health, { check, list, watch });
    },
    setStatus(service, status) {
      if (stopped) return;
      if (statuses.get(service) === status) return;
      statuses.set(service, status);
      notify(service, toProto[status]);
    },
    getStatus(service) {
      return statuses.get(service);
    },
    shutdown() {
      if (stopped) return;
      stopped = true;
      for (const service of statuses.keys()) {
        statuses.set(service, "NOT_SERVING");
        notify(service, HealthCheckResponse_ServingStatus.NOT_SERVING);
      }
      for (const service of [...listeners.keys()]) notify(service, "end");
    },
  };
}
