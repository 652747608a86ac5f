/**
 * Request log serialization that never prints a bearer token passed as the
 * `access_token` query parameter (browsers' EventSource cannot send headers).
 *
 * The REST routes install these serializers on their own request loggers;
 * app code should also pass them to fastify for everything else:
 * `fastify({ logger: { serializers: restLoggerSerializers } })`.
 *
 * Redaction is structural and deliberately wider than what the stream accepts
 * (`queryParams` in query-params.ts, the WHATWG `URLSearchParams` reading of
 * everything after the first `?`): a URL whose token the stream would use is
 * always redacted, and so is a token a client put where it is not accepted.
 * - The query starts at the first `?` or `#` (a server never gets a fragment;
 *   a `#` in a request target is only a character); its parts are split at `&`.
 * - A part whose name, percent-decoded (three times at most, `+` as a space)
 *   and stripped of everything but letters and digits, contains `accesstoken`
 *   (`access_token`, `??access_token`, `access%5Ftoken`, `#&access_token`, …)
 *   has its value, up to the next `&`, replaced by `[REDACTED]`.
 * - Any other part, or a path segment, that still names such a parameter once
 *   decoded (`a=?access_token=T`, `access_token%3DT`) hides the rest of the URL
 *   from there on.
 */

/** Query parameters whose values are never logged. */
export const secretQueryParameters: ReadonlySet<string> = new Set(["access_token"]);

const REDACTED = "[REDACTED]";

/** Letters and digits of the secret names, as parts of a URL are compared with them. */
const SECRET_STEMS = [...secretQueryParameters].map(stem);

function stem(s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9]/g, "");
}

/** Percent-decoding that never throws (`%zz` stays), `+` read as a space, repeated up to three times. */
function decodeLoose(raw: string): string {
  let s = raw;
  for (let i = 0; i < 3; i++) {
    const next = s.replace(/\+/g, " ").replace(/%([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
    if (next === s) break;
    s = next;
  }
  return s;
}

function namesSecret(raw: string): boolean {
  const s = stem(decodeLoose(raw));
  return SECRET_STEMS.some((secret) => s.includes(secret));
}

/** The URL with the values of secret query parameters replaced by `[REDACTED]` (see the file comment). */
export function redactUrl(url: string): string {
  const cut = url.search(/[?#]/);
  const path = cut === -1 ? url : url.slice(0, cut);
  const segments = path.split("/");
  const bad = segments.findIndex((seg) => namesSecret(seg));
  if (bad !== -1) return [...segments.slice(0, bad), REDACTED].join("/");
  if (cut === -1) return url;
  const parts = url.slice(cut + 1).split("&");
  const out: string[] = [];
  for (const part of parts) {
    const eq = part.indexOf("=");
    const rawKey = eq === -1 ? part : part.slice(0, eq);
    if (namesSecret(rawKey)) {
      const plain = decodeLoose(rawKey).replace(/^[?#&]+/, "");
      out.push(`${secretQueryParameters.has(plain) ? rawKey : "access_token"}=${REDACTED}`);
    } else if (namesSecret(part)) {
      out.push(REDACTED);
      break;
    } else {
      out.push(part);
    }
  }
  return url.slice(0, cut + 1) + out.join("&");
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
