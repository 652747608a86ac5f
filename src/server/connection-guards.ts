/**
 * Defences of the one-port server against clients that hold connections or
 * send more than they may (used by one-port-server.ts):
 * - connections counted per client address, for a cap;
 * - HTTP/2 sessions closed when no stream is open for a while, and streams
 *   reset when their request does not arrive whole in time;
 * - a 413 for `Expect: 100-continue` with a body over the limit, instead of
 *   `100 Continue` and then a refusal while the client uploads;
 * - a lingering close after a response sent before its request was read.
 */
import type http from "node:http";
import http2 from "node:http2";
import type net from "node:net";

const { NGHTTP2_CANCEL } = http2.constants;

/** How long a connection whose request was answered before it was read is drained before it is destroyed (ms). */
export const LINGER_MS = 2_000;

/** How long an idle HTTP/2 session that got GOAWAY may keep its socket (ms). */
export const GOAWAY_GRACE_MS = 1_000;

/**
 * The key connections are counted under: the IPv4 address (also when mapped
 * into IPv6), or the /64 prefix of an IPv6 address (one host usually holds a
 * whole /64).
 */
export function addressKey(remoteAddress: string | undefined): string {
  let a = remoteAddress ?? "";
  if (/^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(a)) return a.slice(7);
  if (!a.includes(":")) return a;
  const zone = a.indexOf("%");
  if (zone !== -1) a = a.slice(0, zone);
  const groups = (part: string): string[] => (part === "" ? [] : part.split(":").flatMap((g) => (g.includes(".") ? ["0", "0"] : [g])));
  const gap = a.indexOf("::");
  let all: string[];
  if (gap === -1) all = groups(a);
  else {
    const head = groups(a.slice(0, gap));
    const tail = groups(a.slice(gap + 2));
    all = [...head, ...Array<string>(Math.max(0, 8 - head.length - tail.length)).fill("0"), ...tail];
  }
  return all.slice(0, 4).map((g) => (parseInt(g, 16) || 0).toString(16)).join(":") + "::/64";
}

/** Open connections per client address. */
export class AddressCounter {
  private readonly counts = new Map<string, number>();

  /** Counts a connection of `key` unless that makes more than `cap` (0: no cap); false when refused. */
  admit(key: string, cap: number): boolean {
    const n = (this.counts.get(key) ?? 0) + 1;
    if (cap > 0 && n > cap) return false;
    this.counts.set(key, n);
    return true;
  }

  release(key: string): void {
    const left = (this.counts.get(key) ?? 1) - 1;
    if (left > 0) this.counts.set(key, left);
    else this.counts.delete(key);
  }
}

/**
 * Closes `session` (GOAWAY, then destroy after GOAWAY_GRACE_MS) once no stream
 * has been open for `idleMs`; before its first stream, after `firstStreamMs`.
 * Idle means no open stream: pings and settings frames do not keep a session,
 * and an open stream (a follower of a quiet command) is never cut.
 */
export function closeWhenIdle(session: http2.ServerHttp2Session, firstStreamMs: number, idleMs: number): void {
  let open = 0;
  let idle: NodeJS.Timeout | undefined;
  const arm = (ms: number): void => {
    clearTimeout(idle);
    if (ms <= 0) return;
    idle = setTimeout(() => {
      if (open > 0 || session.closed || session.destroyed) return;
      session.close();
      setTimeout(() => session.destroy(), GOAWAY_GRACE_MS).unref();
    }, ms);
    idle.unref();
  };
  session.on("stream", (stream: http2.ServerHttp2Stream) => {
    open++;
    clearTimeout(idle);
    stream.once("close", () => {
      if (--open === 0) arm(idleMs);
    });
  });
  session.once("close", () => clearTimeout(idle));
  arm(firstStreamMs);
}

/**
 * The HTTP/2 counterpart of HTTP/1.1's request timeout: a stream whose request
 * has not arrived whole within `requestMs`, and that has no response started,
 * is reset (RST_STREAM CANCEL). Without it a client could hold streams open
 * forever by sending HEADERS and never the end of the body, and an open
 * stream keeps its session from counting as idle.
 */
export function limitRequestTime(session: http2.ServerHttp2Session, requestMs: number): void {
  if (requestMs <= 0) return;
  session.on("stream", (stream: http2.ServerHttp2Stream) => {
    if (stream.endAfterHeaders) return;
    const timer = setTimeout(() => {
      if (!stream.readableEnded && !stream.headersSent && !stream.destroyed && !stream.closed) stream.close(NGHTTP2_CANCEL);
    }, requestMs);
    timer.unref();
    stream.once("close", () => clearTimeout(timer));
  });
}

/**
 * HTTP/1.1 requests not read to their end when answered (a 413 while the
 * client still uploads). Node closes such a connection at once after a
 * `Connection: close` response, and the kernel then answers the client's
 * pending data with a reset, which often destroys the response unread.
 * Instead: our side ends after the response, the rest of the body is read and
 * dropped, and the socket is destroyed once the client ends or after LINGER_MS.
 */
export class LingeringClose {
  private readonly lastRequest = new WeakMap<net.Socket, http.IncomingMessage>();

  /** Records the latest request of its connection. */
  noteRequest(req: http.IncomingMessage): void {
    this.lastRequest.set(req.socket, req);
  }

  /** Installs the lingering close on a connection the HTTP/1.1 server takes. */
  install(socket: net.Socket): void {
    const destroySoon = socket.destroySoon.bind(socket);
    socket.destroySoon = () => {
      const req = this.lastRequest.get(socket);
      if (req === undefined || req.complete || socket.destroyed) {
        destroySoon();
        return;
      }
      req.resume();
      const timer = setTimeout(() => socket.destroy(), LINGER_MS);
      timer.unref();
      socket.once("end", () => socket.destroy());
      socket.once("close", () => clearTimeout(timer));
      socket.end();
    };
  }
}

/**
 * Answers `Expect: 100-continue` on `h1`: 413 with the error envelope when the
 * `Content-Length` is over `bodyLimit`, without `100 Continue` (the client then
 * sends no body); otherwise `100 Continue` and the request goes on as usual.
 * (Without a listener Node answers `100 Continue` to everything.)
 */
export function answerExpectContinue(h1: http.Server, bodyLimit: number | undefined, lingering: LingeringClose): void {
  h1.on("checkContinue", (req: http.IncomingMessage, res: http.ServerResponse) => {
    const length = Number(req.headers["content-length"]);
    if (bodyLimit !== undefined && Number.isFinite(length) && length > bodyLimit) {
      lingering.noteRequest(req);
      const body = JSON.stringify({ error: { code: "resource_exhausted", message: `request body is larger than ${bodyLimit} bytes` } });
      res.shouldKeepAlive = false;
      res.writeHead(413, { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    res.writeContinue();
    h1.emit("request", req, res);
  });
}
