export { createFastify, createOnePortServer, listenOnePort } from "./one-port-server.ts";
export type {
  CreateFastifyOptions,
  ListeningServer,
  OnePortOptions,
  OnePortServer,
  OnePortServerOptions,
  TlsOptions,
} from "./one-port-server.ts";
export { createHealthService } from "./health.ts";
export type { HealthService, HealthServiceOptions, ServingStatus } from "./health.ts";
export { registerReflection } from "./reflection.ts";
export type { ReflectionOptions } from "./reflection.ts";
