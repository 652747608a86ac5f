/**
 * CORS for browsers on other origins: REST, Connect, gRPC-Web and the SSE
 * stream, all on the one port.
 *
 * Only origins listed in `FLEETRUN_CORS_ORIGINS` get CORS headers (`*`
 * allows any origin: the API authenticates with bearer tokens, never
 * cookies, so no credentials mode is offered). A request from any other
 * origin is served as if CORS did not exist: no `Access-Control-*` headers,
 * so the browser withholds the answer, and its preflight is not answered.
 *
 * The headers are set on the raw response in an `onRequest` hook, so they
 * reach every answer: fastify replies, the Connect plugin's, and streams
 * that write their own head (NDJSON/SSE).
 */
import { cors as connectCors } from "@connectrpc/connect";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";

/** Request headers a page may send (Connect's and gRPC-Web's, plus the REST ones). */
export const corsAllowedHeaders: readonly string[] = unique([
  ...connectCors.allowedHeaders,
  "authorization",
  "content-type",
  "accept",
  "last-event-id",
  "x-request-id",
  "connect-protocol-version",
  "connect-timeout-ms",
  "grpc-timeout",
  "x-grpc-web",
  "x-user-agent",
]);

/** Response headers a page may read (Connect's and gRPC-Web's status, REST's Retry-After). */
export const corsExposedHeaders: readonly string[] = unique([
  ...connectCors.exposedHeaders,
  "grpc-status",
  "grpc-message",
  "grpc-status-details-bin",
  "connect-content-encoding",
  "connect-accept-encoding",
  "retry-after",
  "x-error-field",
]);

export const corsAllowedMethods: readonly string[] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/** How long a browser may cache a preflight answer, in seconds. */
const MAX_AGE_SECONDS = 7200;

export interface CorsOptions {
  /** Allowed origins (`https://app.example.com`), or `*` for any. Empty: CORS off. */
  origins: readonly string[];
}

/** Normalises and checks one configured origin; throws with a reason. */
export function parseCorsOrigin(raw: string): string {
  const value = raw.trim();
  if (value === "*") return value;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`${JSON.stringify(value)} is not an origin like https://app.example.com`);
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || url.origin === "null" || url.origin !== value.replace(/\/$/, "").toLowerCase()) {
    throw new Error(`${JSON.stringify(value)} is not an origin like https://app.example.com (scheme, host and port only)`);
  }
  return url.origin;
}

/** Adds the CORS hook to `app` (before its routes). Does nothing when no origin is configured. */
export function registerCors(app: FastifyInstance, opts: CorsOptions): void {
  if (opts.origins.length === 0) return;
  const any = opts.origins.includes("*");
  const allowed = new Set(opts.origins);
  const allowHeaders = corsAllowedHeaders.join(", ");
  const exposeHeaders = corsExposedHeaders.join(", ");
  const allowMethods = corsAllowedMethods.join(", ");

  app.addHook("onRequest", (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
    const res = reply.raw;
    res.setHeader("vary", "Origin");
    const origin = request.headers.origin;
    if (typeof origin !== "string" || !(any || allowed.has(origin.toLowerCase()))) {
      done();
      return;
    }
    res.setHeader("access-control-allow-origin", any ? "*" : origin);
    const preflight = request.method === "OPTIONS" && request.headers["access-control-request-method"] !== undefined;
    if (!preflight) {
      res.setHeader("access-control-expose-headers", exposeHeaders);
      done();
      return;
    }
    res.setHeader("vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers");
    void reply
      .code(204)
      .header("access-control-allow-methods", allowMethods)
      .header("access-control-allow-headers", allowHeaders)
      .header("access-control-max-age", String(MAX_AGE_SECONDS))
      .send();
  });
}

function unique(names: readonly string[]): string[] {
  return [...new Set(names.map((n) => n.toLowerCase()))];
}
