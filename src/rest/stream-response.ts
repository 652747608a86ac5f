/**
 * Writes a server stream to an HTTP response as NDJSON or Server-Sent Events.
 *
 * - NDJSON (`application/x-ndjson`): one `{"data": <message>}` per line.
 * - SSE (`text/event-stream`, chosen by `Accept`): `event: <name>`,
 *   `id: <id>` (when the adapter gives one) and `data: {"data": <message>}`
 *   per message; `: keepalive` comments while idle.
 * - An error after the stream started ends it with a last
 *   `{"error": {...}}` line (NDJSON) or an `event: error` (SSE; the adapter
 *   may name and id it otherwise, e.g. `event: stopping` with the offset to
 *   resume from).
 * - The adapter may add `retry:` reconnection advice to an event.
 *
 * Each frame is written as its message arrives; when the socket buffer is full
 * the writer waits for `drain` before asking for the next message, so a slow
 * reader slows the producer instead of growing memory.
 */
import type { ServerResponse } from "node:http";
import type { Http2ServerResponse } from "node:http2";
import type { Message } from "@bufbuild/protobuf";
import type { RestError } from "./rest-errors.ts";

/** Names and ids Server-Sent Events for the messages of one streaming method. */
export interface SseAdapter {
  /** The SSE event name of a message, e.g. "output", "skipped", "end". */
  eventName(message: Message): string;
  /** The SSE event id of a message (e.g. the offset to resume from), or undefined for none. */
  eventId(message: Message): string | undefined;
  /**
   * Applies a `Last-Event-ID` header value to the request message before the
   * call (e.g. sets `offset`). Throws `RestInputError` for a malformed value.
   */
  resume(request: Message, lastEventId: string): void;
  /** Reconnection advice sent with a message (the SSE `retry:` field, in ms), or undefined for none. */
  retryMs?(message: Message): number | undefined;
  /**
   * How an error that ends a started stream is framed over SSE, or undefined
   * for the default (`event: error`, no id).
   */
  errorEvent?(error: RestError): SseErrorEvent | undefined;
  /**
   * True when `first`, the first message of a call made with `Last-Event-ID:
   * lastEventId`, is the stream's last one and the client had it already: a
   * reconnect after the end, answered 204 No Content so that EventSource stops.
   */
  endedBefore?(first: Message, lastEventId: string): boolean;
}

/** The SSE framing of a stream-ending error. */
export interface SseErrorEvent {
  name: string;
  id?: string | undefined;
  retryMs?: number | undefined;
}

/** An HTTP/1.1 or HTTP/2 (compatibility API) response. */
export type HttpResponse = ServerResponse | Http2ServerResponse;

/** What the writer uses of either response type. */
interface Sink {
  readonly destroyed?: boolean;
  readonly writableEnded: boolean;
  readonly writableNeedDrain?: boolean;
  writeHead(status: number, headers: Record<string, string>): unknown;
  flushHeaders?: () => void;
  write(chunk: string): boolean;
  end(): unknown;
  on(event: "drain" | "close", listener: () => void): unknown;
  off(event: "drain" | "close", listener: () => void): unknown;
}

export type StreamFormat = "ndjson" | "sse";

export const ndjsonContentType = "application/x-ndjson";
export const sseContentType = "text/event-stream";

/** SSE when the `Accept` header lists `text/event-stream`, NDJSON otherwise. */
export function streamFormatFor(accept: string | string[] | undefined): StreamFormat {
  const value = Array.isArray(accept) ? accept.join(",") : (accept ?? "");
  return value
    .split(",")
    .some((part) => (part.split(";")[0] ?? "").trim().toLowerCase() === sseContentType)
    ? "sse"
    : "ndjson";
}

export type Settled<T> = { ok: true; value: T } | { ok: false; error: unknown };

/** A promise that never rejects. */
export function settle<T>(p: Promise<T>): Promise<Settled<T>> {
  return p.then(
    (value) => ({ ok: true, value }),
    (error: unknown) => ({ ok: false, error }),
  );
}

export interface PumpOptions {
  readonly res: HttpResponse;
  readonly format: StreamFormat;
  readonly iterator: AsyncIterator<Message>;
  /** The pending first `next()` of `iterator`. */
  readonly first: Promise<Settled<IteratorResult<Message>>>;
  /** REST JSON of a message, without the envelope. */
  readonly render: (message: Message) => unknown;
  readonly adapter: SseAdapter | undefined;
  /** Idle time before an SSE `: keepalive` comment. */
  readonly keepaliveMs: number;
  /** Fires when the client went away; the call is aborted with it. */
  readonly clientGone: AbortSignal;
  readonly toRestError: (err: unknown) => RestError;
  /** Called for errors that end a started stream (not for a client that went away). */
  readonly onStreamError?: (err: unknown) => void;
}

/** Sends the status line and headers, then every message, then ends the response. Never throws. */
export async function pumpStream(o: PumpOptions): Promise<void> {
  const res = o.res as unknown as Sink;
  const headers = {
    "content-type": o.format === "sse" ? sseContentType : ndjsonContentType,
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
  };
  res.writeHead(200, headers);
  // HTTP/1.1: send the headers now, not with the first frame.
  res.flushHeaders?.();
  let pending = o.first;
  try {
    for (;;) {
      const result = await waitWithKeepalive(o, pending);
      if (o.clientGone.aborted) return;
      if (!result.ok) {
        o.onStreamError?.(result.error);
        const error = o.toRestError(result.error);
        await write(res, errorFrame(o, error), o.clientGone);
        return;
      }
      if (result.value.done === true) return;
      if (!(await write(res, frame(o, result.value.value), o.clientGone))) return;
      pending = settle(o.iterator.next());
    }
  } catch (err) {
    // Rendering failed (a bug, not the client's fault): end the stream with an error frame.
    o.onStreamError?.(err);
    const json = JSON.stringify({ error: { code: "internal", message: "internal error" } });
    await write(res, o.format === "sse" ? `event: error\ndata: ${json}\n\n` : `${json}\n`, o.clientGone);
  } finally {
    if (res.destroyed !== true && !res.writableEnded) res.end();
  }
}

function frame(o: PumpOptions, message: Message): string {
  const json = JSON.stringify({ data: o.render(message) });
  if (o.format === "ndjson") return `${json}\n`;
  const name = o.adapter?.eventName(message) ?? "message";
  return sseEvent(name, o.adapter?.eventId(message), o.adapter?.retryMs?.(message), json);
}

function errorFrame(o: PumpOptions, error: RestError): string {
  const json = JSON.stringify(error.body);
  if (o.format === "ndjson") return `${json}\n`;
  const e = o.adapter?.errorEvent?.(error);
  return sseEvent(e?.name ?? "error", e?.id, e?.retryMs, json);
}

function sseEvent(name: string, id: string | undefined, retryMs: number | undefined, json: string): string {
  const idLine = id === undefined ? "" : `id: ${oneLine(id)}\n`;
  const retryLine = retryMs === undefined ? "" : `retry: ${Math.max(0, Math.floor(retryMs))}\n`;
  return `event: ${oneLine(name)}\n${idLine}${retryLine}data: ${json}\n\n`;
}

function oneLine(s: string): string {
  return s.replace(/[\r\n]/g, "");
}

/** Waits for `pending`; for SSE writes a keepalive comment each `keepaliveMs` of idleness meanwhile. */
async function waitWithKeepalive<T>(o: PumpOptions, pending: Promise<Settled<T>>): Promise<Settled<T>> {
  if (o.format !== "sse") return pending;
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const tick = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), o.keepaliveMs);
    });
    const r = await Promise.race([pending, tick]);
    clearTimeout(timer);
    if (r !== undefined) return r;
    // Skip the comment while the socket is still full: the reader is not idle, just slow.
    const res = o.res as unknown as Sink;
    if (res.destroyed !== true && res.writableNeedDrain !== true) res.write(": keepalive\n\n");
  }
}

/** Writes; when the buffer is full waits for 'drain' (or 'close'). False once the response is gone. */
function write(res: Sink, text: string, gone: AbortSignal): Promise<boolean> {
  if (gone.aborted || res.destroyed === true || res.writableEnded) return Promise.resolve(false);
  if (res.write(text)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (): void => {
      res.off("drain", done);
      res.off("close", done);
      gone.removeEventListener("abort", done);
      resolve(!gone.aborted && res.destroyed !== true);
    };
    res.on("drain", done);
    res.on("close", done);
    gone.addEventListener("abort", done);
  });
}
