/**
 * Request log serialization that never prints a bearer token passed as the
 * `access_token` query parameter (browsers' EventSource cannot send headers).
 *
 * The REST routes install these serializers on their own request loggers;
 * app code should also pass them to fastify for everything else:
 * `fastify({ logger: { serializers: restLoggerSerializers } })`.
 */

/** Query parameters whose values are never logged. */
export const secretQueryParameters: ReadonlySet<string> = new Set(["access_token"]);

const REDACTED = "[REDACTED]";

/** The URL with the values of secret query parameters replaced by `[REDACTED]`. */
export function redactUrl(url: string): string {
  const q = url.indexOf("?");
  if (q === -1) return url;
  const hash = url.indexOf("#", q);
  const query = url.slice(q + 1, hash === -1 ? undefined : hash);
  const parts = query.split("&").map((part) => {
    const eq = part.indexOf("=");
    const rawKey = eq === -1 ? part : part.slice(0, eq);
    return secretQueryParameters.has(decodeKey(rawKey)) ? `${rawKey}=${REDACTED}` : part;
  });
  return url.slice(0, q + 1) + parts.join("&") + (hash === -1 ? "" : url.slice(hash));
}

function decodeKey(raw: string): string {
  try {
    return decodeURIComponent(raw.replace(/\+/g, " "));
  } catch {
    return raw;
  }
}

interface LoggableRequest {
  method?: string;
  url?: string;
  headers?: Record<string, string | string[] | undefined>;
  host?: string;
  ip?: string;
  socket?: { remotePort?: number } | null;
}

/** Pino serializers for fastify's logger: fastify's default `req` shape, with the URL redacted. */
export const restLoggerSerializers = {
  req(req: LoggableRequest): Record<string, unknown> {
    const version = req.headers?.["accept-version"];
    return {
      method: req.method,
      url: req.url === undefined ? undefined : redactUrl(req.url),
      version,
      host: req.host,
      remoteAddress: req.ip,
      remotePort: req.socket?.remotePort,
    };
  },
};
