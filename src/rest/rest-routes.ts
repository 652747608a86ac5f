/**
 * The REST door: a generic transcoder from the `google.api.http` annotations
 * of the services to fastify routes. Every call goes through a Connect client
 * on the given transport, so interceptors (auth, logging, …) run exactly as
 * for gRPC and Connect callers. No per-endpoint handlers.
 *
 * Request: path variables bind the field of that name; `body: "*"` takes the
 * JSON body for all other fields; otherwise the remaining fields come from
 * query parameters. Response: `{"data": <message>}`, or the message itself
 * when it has a top-level `data` field (lists, batches). Errors:
 * `{"error": {"code", "message", "field"?}}`.
 *
 * Decisions where the contract is silent:
 * - a body over `bodyLimit` is 413 with code `resource_exhausted`;
 * - a non-JSON `Content-Type` on a non-empty body is 415 with code
 *   `invalid_argument`; a body without `Content-Type` is read as JSON;
 * - a body field that a path variable also binds must equal it (else 400);
 * - a `body: "*"` request sent as `application/merge-patch+json` is read as
 *   a JSON Merge Patch (see merge-patch.ts);
 * - a literal path (`/v1/commands/async`) shadows a variable path
 *   (`/v1/commands/{id}`) for every method: `GET /v1/commands/async` is 405;
 * - a stream answers with a normal HTTP error when the call fails before its
 *   first message; when no message comes within the keepalive interval the
 *   headers are sent anyway, and a later failure ends the stream with an
 *   error frame;
 * - over SSE, a stop of the service before the first message is still a 200
 *   stream with the adapter's event (`stopping`), since any other status
 *   makes EventSource give up instead of reconnecting;
 * - over SSE, a reconnect whose `Last-Event-ID` shows the client already had
 *   the last message (the adapter's `endedBefore`) is 204 No Content.
 */
import type { DescService, Message } from "@bufbuild/protobuf";
import { reflect } from "@bufbuild/protobuf/reflect";
import { createClient } from "@connectrpc/connect";
import type { Transport } from "@connectrpc/connect";
import type { FastifyInstance, FastifyReply, FastifyRequest, RawServerBase, RawServerDefault } from "fastify";
import { defaultStreamEvents } from "./command-sse.ts";
import { restBindings } from "./http-rule.ts";
import type { RestBinding } from "./http-rule.ts";
import { encodeMessage, mergeJsonObject, RestInputError, setFieldJson, setFromText } from "./json-codec.ts";
import { restLoggerSerializers } from "./log-serializers.ts";
import { isMergePatchMediaType, mergePatchToRequest } from "./merge-patch.ts";
import { queryParams } from "./query-params.ts";
import { RestHttpError, restErrorFrom } from "./rest-errors.ts";
import { pumpStream, settle, streamFormatFor } from "./stream-response.ts";
import type { SseAdapter } from "./stream-response.ts";

export type { SseAdapter } from "./stream-response.ts";
export { restLoggerSerializers } from "./log-serializers.ts";

export interface RestOptions {
  /** The services whose annotated methods become routes, e.g. `[CommandService, MachineService]`. */
  services: DescService[];
  /** A Connect transport that reaches the implementations, e.g. `createRouterTransport(routes, { router: { interceptors } })`. */
  transport: Transport;
  /**
   * Largest accepted request body in bytes; a larger one is 413.
   * @default 1048576 (1 MiB)
   */
  bodyLimit?: number;
  /**
   * SSE naming and `Last-Event-ID` handling per streaming method, keyed by
   * `<service type name>/<method name>` (e.g. `fleetrun.v1.CommandService/WatchCommand`).
   * @default defaultStreamEvents (WatchCommand)
   */
  streamEvents?: Record<string, SseAdapter>;
  /**
   * Idle milliseconds before an SSE `: keepalive` comment; also how long a
   * stream waits for its first message before sending the headers.
   * @default 15000
   */
  sseKeepaliveMs?: number;
  /**
   * Headers added to every call from facts only the HTTP server knows (the
   * caller's address for the audit trail); they override a caller's own.
   * @default none
   */
  callHeaders?: (request: FastifyRequest) => Record<string, string>;
}

/** Query parameter that carries the bearer token on streaming GET routes (for EventSource). */
export const accessTokenParameter = "access_token";

const DEFAULT_BODY_LIMIT = 1024 * 1024;
const DEFAULT_KEEPALIVE_MS = 15_000;
const HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] as const;
const FORWARDED_HEADERS = ["authorization", "x-request-id", "user-agent"] as const;

type AnyClient = Record<string, (input: Message, options: object) => unknown>;

/**
 * Registers one route per `google.api.http` binding, 405 routes for the
 * other methods on those paths and, under the bindings' common first path
 * segment (`/v1/*`), a catch-all 404 route; all answer with the REST error envelope.
 * The routes live in their own encapsulated plugin (own body parser and error
 * handler), so they do not affect other routes of `app`.
 */
export function registerRestRoutes<Server extends RawServerBase = RawServerDefault>(app: FastifyInstance<Server>, opts: RestOptions): void {
  const bodyLimit = opts.bodyLimit ?? DEFAULT_BODY_LIMIT;
  const keepaliveMs = opts.sseKeepaliveMs ?? DEFAULT_KEEPALIVE_MS;
  const streamEvents = opts.streamEvents ?? defaultStreamEvents;
  const bindings = opts.services.flatMap((s) => restBindings(s));
  const clients = new Map<DescService, AnyClient>();
  for (const s of opts.services) clients.set(s, createClient(s, opts.transport) as unknown as AnyClient);
  const prefix = commonFirstSegment(bindings.map((b) => b.url));
  const callHeaders = opts.callHeaders ?? (() => ({}));

  app.register(
    async (instance) => {
      // Handlers only use what HTTP/1.1 and HTTP/2 compatibility objects share.
      const scope = instance as unknown as FastifyInstance;
      // Our own parsers: bodies arrive as raw bytes and are decoded per rule, so
      // a JSON error never echoes the body and an empty body means `{}`.
      scope.removeAllContentTypeParsers();
      scope.addContentTypeParser("*", { parseAs: "buffer", bodyLimit }, (_req, body, done) => done(null, body));

      scope.setErrorHandler((err, request, reply) => sendError(request, reply, err, bodyLimit));
      if (prefix !== "") {
        // A catch-all route rather than a not-found handler: it gets the redacting
        // log serializers and leaves the app's own 404 handler alone.
        scope.route({
          method: [...HTTP_METHODS],
          url: "/*",
          exposeHeadRoute: false,
          handler: (request, reply) => {
            const path = request.url.split("?")[0] ?? "";
            return sendError(request, reply, new RestHttpError(404, "not_found", `no route for ${request.method} ${path}`), bodyLimit);
          },
        });
      }

      const methodsByUrl = new Map<string, Set<string>>();
      for (const b of bindings) {
        const client = clients.get(b.method.parent);
        if (client === undefined) continue;
        const streaming = b.method.methodKind === "server_streaming";
        const url = b.url.slice(prefix.length);
        const methods = methodsByUrl.get(url) ?? new Set<string>();
        methods.add(b.httpMethod);
        if (b.httpMethod === "GET" && !streaming) methods.add("HEAD");
        methodsByUrl.set(url, methods);
        scope.route({
          method: b.httpMethod,
          url,
          bodyLimit,
          exposeHeadRoute: !streaming,
          handler: streaming
            ? (request, reply) => serveStream(b, client, request, reply, streamEvents, keepaliveMs, bodyLimit, callHeaders)
            : (request, reply) => serveUnary(b, client, request, reply, callHeaders),
        });
      }
      for (const [url, allowed] of methodsByUrl) {
        const others = HTTP_METHODS.filter((m) => !allowed.has(m));
        if (others.length === 0) continue;
        const allow = [...allowed].join(", ");
        scope.route({
          method: others,
          url,
          exposeHeadRoute: false,
          handler: (request, reply) => {
            void reply.header("allow", allow);
            return sendError(request, reply, new RestHttpError(405, "unimplemented", `method ${request.method} is not allowed here; allowed: ${allow}`), bodyLimit);
          },
        });
      }
    },
    { prefix, logSerializers: restLoggerSerializers as unknown as Record<string, (value: unknown) => string> },
  );
}

// ---------------------------------------------------------------------------
// Calls

type CallHeaders = (request: FastifyRequest) => Record<string, string>;

async function serveUnary(b: RestBinding, client: AnyClient, request: FastifyRequest, reply: FastifyReply, callHeaders: CallHeaders): Promise<void> {
  const input = buildRequest(b, request, false);
  const signal = abortOnClientGone(reply);
  const call = client[b.method.localName];
  if (call === undefined) throw new RestHttpError(501, "unimplemented", `${b.method.name} is not available`);
  const output = (await call(input, { signal, headers: forwardedHeaders(request, false, callHeaders) })) as Message;
  const payload = renderResponse(b, output);
  await reply.code(b.successCode).header("content-type", "application/json; charset=utf-8").send(JSON.stringify(payload));
}

async function serveStream(
  b: RestBinding,
  client: AnyClient,
  request: FastifyRequest,
  reply: FastifyReply,
  streamEvents: Record<string, SseAdapter>,
  keepaliveMs: number,
  bodyLimit: number,
  callHeaders: CallHeaders,
): Promise<void> {
  const format = streamFormatFor(request.headers.accept);
  const input = buildRequest(b, request, true);
  const adapter = streamEvents[`${b.method.parent.typeName}/${b.method.name}`];
  const lastEventId = request.headers["last-event-id"];
  if (adapter !== undefined && typeof lastEventId === "string" && lastEventId !== "") adapter.resume(input, lastEventId);

  const signal = abortOnClientGone(reply);
  const call = client[b.method.localName];
  if (call === undefined) throw new RestHttpError(501, "unimplemented", `${b.method.name} is not available`);
  const stream = call(input, { signal, headers: forwardedHeaders(request, true, callHeaders) }) as AsyncIterable<Message>;
  const iterator = stream[Symbol.asyncIterator]();
  const first = settle(iterator.next());

  // Failures before the first message are ordinary HTTP errors.
  let timer: NodeJS.Timeout | undefined;
  const early = await Promise.race([first, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), keepaliveMs)))]);
  clearTimeout(timer);
  if (early !== undefined && !early.ok) {
    const resumable = format === "sse" && adapter?.errorEvent?.(restErrorFrom(early.error, bodyLimit)) !== undefined;
    if (!resumable) throw early.error;
  }
  if (signal.aborted) return;
  if (
    early?.ok === true &&
    early.value.done !== true &&
    format === "sse" &&
    typeof lastEventId === "string" &&
    lastEventId !== "" &&
    adapter?.endedBefore?.(early.value.value, lastEventId) === true
  ) {
    // Nothing to send: end the call (it would only repeat the end).
    iterator.return?.().catch((err: unknown) => request.log.debug({ err }, `closing ${b.method.name} failed`));
    await reply.code(204).header("cache-control", "no-cache").send();
    return;
  }

  reply.hijack();
  const output = b.method.output;
  await pumpStream({
    res: reply.raw,
    format,
    iterator,
    first,
    render: (m) => encodeMessage(output, m),
    adapter,
    keepaliveMs,
    clientGone: signal,
    toRestError: (err) => restErrorFrom(err, bodyLimit),
    onStreamError: (err) => {
      const { status } = restErrorFrom(err, bodyLimit);
      if (status >= 500) request.log.error({ err }, `${b.method.name} stream failed`);
    },
  });
}

/** An AbortSignal that fires when the client closes the connection before the response is complete. */
function abortOnClientGone(reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  const res = reply.raw;
  if (res.destroyed) ac.abort();
  else {
    res.once("close", () => {
      // Not `writableFinished`: HTTP/2 compatibility responses report it true on a reset stream.
      if (!res.writableEnded) ac.abort();
    });
  }
  return ac.signal;
}

function forwardedHeaders(request: FastifyRequest, streaming: boolean, callHeaders: CallHeaders): Headers {
  const h = new Headers();
  for (const name of FORWARDED_HEADERS) {
    const v = request.headers[name];
    if (typeof v === "string") h.set(name, v);
  }
  for (const [name, v] of Object.entries(callHeaders(request))) h.set(name, v);
  if (streaming && !h.has("authorization")) {
    const token = queryParams(request.url).get(accessTokenParameter)?.[0];
    if (token !== undefined) h.set("authorization", `Bearer ${token}`);
  }
  return h;
}

// ---------------------------------------------------------------------------
// Request decoding

function buildRequest(b: RestBinding, request: FastifyRequest, streaming: boolean): Message {
  const r = reflect(b.method.input);
  const params = (request.params ?? {}) as Record<string, string | undefined>;
  let bodyJson = b.body === "" ? undefined : parseJsonBody(request, b.body === "*");
  if (b.body === "*" && bodyJson !== undefined && isMergePatchMediaType(request.headers["content-type"])) {
    bodyJson = mergePatchToRequest(b.method.input, bodyJson as Record<string, unknown>);
  }

  if (b.body === "*") {
    for (const v of b.pathVariables) checkBodyAgreesWithPath(bodyJson, v.fieldPath, params[v.param] ?? "");
    if (bodyJson !== undefined) mergeJsonObject(r, bodyJson, "");
  } else if (b.body !== "" && bodyJson !== undefined) {
    setFieldJson(r, b.body, bodyJson);
  }

  for (const v of b.pathVariables) setFromText(r, v.fieldPath, [params[v.param] ?? ""], "path variable");

  const query = queryParams(request.url);
  if (streaming) query.delete(accessTokenParameter);
  const bound = [...b.pathVariables.map((v) => v.fieldPath), ...(b.body === "" ? [] : [b.body])];
  for (const [key, values] of query) {
    if (b.body === "*") throw new RestInputError(key, "unknown query parameter");
    const clash = bound.find((f) => f === key || key.startsWith(`${f}.`) || f.startsWith(`${key}.`));
    if (clash !== undefined) throw new RestInputError(key, clash === b.body ? "is set by the request body" : "is set by the URL path");
    setFromText(r, key, values, "query parameter");
  }
  return r.message;
}

/** The JSON body, `undefined` when empty. */
function parseJsonBody(request: FastifyRequest, mustBeObject: boolean): unknown {
  const raw = request.body;
  if (raw === undefined || raw === null) return undefined;
  if (!Buffer.isBuffer(raw)) throw new RestHttpError(500, "internal", "internal error");
  if (raw.length === 0) return undefined;
  const type = request.headers["content-type"];
  if (type !== undefined && !isJsonMediaType(type)) {
    throw new RestHttpError(415, "invalid_argument", "Content-Type must be application/json");
  }
  let json: unknown;
  try {
    json = JSON.parse(raw.toString("utf8"));
  } catch (err) {
    // Never echo the body: it may hold credentials. A position is safe.
    const at = err instanceof Error ? /position (\d+)/.exec(err.message)?.[1] : undefined;
    throw new RestInputError(undefined, `request body is not valid JSON${at === undefined ? "" : ` (at position ${at})`}`);
  }
  if (mustBeObject && (json === null || typeof json !== "object" || Array.isArray(json))) {
    throw new RestInputError(undefined, "request body must be a JSON object");
  }
  checkWellFormed(json, "");
  return json;
}

/**
 * JSON may escape a lone UTF-16 surrogate (`"\ud800"`), which is no Unicode
 * text and cannot be encoded as a protobuf string: 400 naming the field, as
 * Connect answers for the same body.
 */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

function checkWellFormed(json: unknown, path: string): void {
  const problem = "must be valid Unicode text (it contains an unpaired surrogate escape such as \\ud800)";
  if (typeof json === "string") {
    if (LONE_SURROGATE.test(json)) throw new RestInputError(path === "" ? undefined : path, problem);
    return;
  }
  if (json === null || typeof json !== "object") return;
  if (Array.isArray(json)) {
    json.forEach((v, i) => checkWellFormed(v, `${path}[${i}]`));
    return;
  }
  for (const [k, v] of Object.entries(json as Record<string, unknown>)) {
    const at = path === "" ? k : `${path}.${k}`;
    if (LONE_SURROGATE.test(k)) throw new RestInputError(path === "" ? undefined : path, `a key ${problem}`);
    checkWellFormed(v, at);
  }
}

function isJsonMediaType(contentType: string): boolean {
  const media = (contentType.split(";")[0] ?? "").trim().toLowerCase();
  return media === "application/json" || (media.startsWith("application/") && media.endsWith("+json"));
}

function checkBodyAgreesWithPath(body: unknown, fieldPath: string, pathValue: string): void {
  let v: unknown = body;
  for (const part of fieldPath.split(".")) {
    if (v === null || typeof v !== "object" || Array.isArray(v)) return;
    v = (v as Record<string, unknown>)[part];
  }
  if (v === undefined || v === null) return;
  if ((typeof v === "string" || typeof v === "number" || typeof v === "boolean") && String(v) === pathValue) return;
  throw new RestInputError(fieldPath, "differs from the value in the URL path");
}

// ---------------------------------------------------------------------------
// Responses

function renderResponse(b: RestBinding, message: Message): unknown {
  const output = b.method.output;
  const json = encodeMessage(output, message);
  if (b.responseBody !== "") return { data: json[b.responseBody] ?? null };
  return output.fields.some((f) => f.name === "data") ? json : { data: json };
}

function sendError(request: FastifyRequest, reply: FastifyReply, err: unknown, bodyLimit: number): FastifyReply {
  const { status, body, headers } = restErrorFrom(err, bodyLimit);
  if (status >= 500) request.log.error({ err }, "REST call failed");
  if (reply.sent || reply.raw.headersSent) return reply;
  if (headers !== undefined) void reply.headers(headers);
  return reply.code(status).header("content-type", "application/json; charset=utf-8").send(JSON.stringify(body));
}

function commonFirstSegment(urls: string[]): string {
  const firsts = new Set(urls.map((u) => u.split("/")[1] ?? ""));
  if (firsts.size !== 1) return "";
  const [first] = firsts;
  return first === undefined || first === "" || first.startsWith(":") || urls.some((u) => u === `/${first}`) ? "" : `/${first}`;
}

/** Exported for tests and docs: the REST bindings of the services, as the routes see them. */
export function describeRestRoutes(services: DescService[]): { method: string; path: string; rpc: string; successCode: number }[] {
  return services.flatMap((s) =>
    restBindings(s).map((b) => ({ method: b.httpMethod, path: b.template, rpc: `${s.typeName}/${b.method.name}`, successCode: b.successCode })),
  );
}
