/**
 * One listening port for every protocol the service speaks.
 *
 * Node cannot serve HTTP/1.1 and cleartext HTTP/2 (h2c) from one server:
 * `http2.createServer({ allowHTTP1: true })` only falls back under TLS, and
 * `fastify({ http2: true })` inherits that. So a front `net.Server` accepts the
 * connection, reads the first bytes, and hands the socket to an inner HTTP/2
 * server when they are the HTTP/2 connection preface, or to an inner HTTP/1.1
 * server otherwise. With TLS configured, the front is a `tls.Server` and ALPN
 * decides instead (`h2` or `http/1.1`).
 *
 * Both inner servers call fastify's request handler, so routes, the Connect
 * plugin and REST routes see one application whatever the wire protocol.
 */
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import tls from "node:tls";
import fastify from "fastify";
import type { FastifyInstance, FastifyServerOptions } from "fastify";
import { AddressCounter, addressKey, answerExpectContinue, closeWhenIdle, LingeringClose, limitRequestTime } from "./connection-guards.ts";

/** The client connection preface every HTTP/2 connection starts with (RFC 9113 §3.4). */
const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

export interface TlsOptions {
  /** PEM certificate chain. */
  cert: string | Buffer;
  /** PEM private key. */
  key: string | Buffer;
}

/** Timeouts and limits of the inner servers. */
export interface OnePortServerOptions {
  /** Serve TLS (HTTP/2 and HTTP/1.1 chosen by ALPN) instead of cleartext. @default undefined */
  tls?: TlsOptions | undefined;
  /**
   * HTTP/1.1: time a client has to send the complete request headers, in ms.
   * Also bounds how long a new connection may stay silent before its first bytes.
   * @default 30_000
   */
  headersTimeout?: number | undefined;
  /** Time to receive the whole request, in ms (HTTP/1.1: 408; HTTP/2: the stream is reset); 0 disables it. @default 300_000 */
  requestTimeout?: number | undefined;
  /**
   * How long a connection with nothing in flight stays open, in ms: an HTTP/1.1
   * keep-alive connection between requests, an HTTP/2 session without an open
   * stream (it gets GOAWAY; pings and settings do not count as activity). An
   * HTTP/2 session must open its first stream within `headersTimeout`.
   * Streams that stay open (a follower of a long command) are never cut by it.
   * @default 72_000
   */
  idleTimeout?: number | undefined;
  /** HTTP/1.1: how often the header and request timeouts are checked, in ms. @default 1_000 */
  connectionsCheckingInterval?: number | undefined;
  /** HTTP/1.1: largest request header block, in bytes. @default 16_384 */
  maxHeaderSize?: number | undefined;
  /**
   * Open connections one client address may hold (IPv4 address, or IPv6 /64);
   * a connection beyond it is closed at once, before a byte is read. 0: no cap.
   * @default 0
   */
  maxConnectionsPerAddress?: number | undefined;
  /** Open connections overall; beyond it new connections are closed at once. 0: no cap. @default 0 */
  maxConnections?: number | undefined;
  /** Called for each connection closed by a cap. */
  onConnectionRefused?: ((reason: "per_address" | "total", address: string) => void) | undefined;
  /**
   * Largest request body, in bytes. An HTTP/1.1 request that sends
   * `Expect: 100-continue` with a larger `Content-Length` is answered 413 at
   * once, without `100 Continue`. @default undefined (no check)
   */
  bodyLimit?: number | undefined;
}

/**
 * The server fastify sees (`app.server` at run time): a `net.Server` (or
 * `tls.Server`) in front of an inner HTTP/1.1 and an inner HTTP/2 server.
 */
export interface OnePortServer extends net.Server {
  /** The inner HTTP/1.1 server (owns header, request and keep-alive timeouts). */
  readonly http1: http.Server;
  /** The inner HTTP/2 server. */
  readonly http2: http2.Http2Server;
  /** Number of open client connections (TCP level, any protocol). */
  connectionCount(): number;
  /**
   * Graceful step of a shutdown: closes idle HTTP/1.1 connections, sends GOAWAY
   * on every HTTP/2 session (open streams may finish), drops connections that
   * have not sent a byte yet.
   */
  closeIdleConnections(): void;
  /** Destroys every connection and HTTP/2 session at once. */
  closeAllConnections(): void;
}

type RequestHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/**
 * Builds the front server around `handler` (fastify's request handler when
 * used as a `serverFactory`). It does not listen; `listen()` it like any
 * `net.Server`.
 */
export function createOnePortServer(handler: RequestHandler, options: OnePortServerOptions = {}): OnePortServer {
  const headersTimeout = options.headersTimeout ?? 30_000;
  const requestTimeout = options.requestTimeout ?? 300_000;
  const idleTimeout = options.idleTimeout ?? 72_000;
  const perAddress = options.maxConnectionsPerAddress ?? 0;
  const bodyLimit = options.bodyLimit;

  const h1 = http.createServer(
    {
      headersTimeout: requestTimeout > 0 ? Math.min(headersTimeout, requestTimeout) : headersTimeout,
      requestTimeout,
      keepAliveTimeout: idleTimeout,
      connectionsCheckingInterval: options.connectionsCheckingInterval ?? 1_000,
      maxHeaderSize: options.maxHeaderSize ?? 16_384,
    },
    handler,
  );
  const h2 = http2.createServer({}, handler);

  const sockets = new Set<net.Socket>();
  /** Sockets whose protocol is not decided yet. */
  const undecided = new Set<net.Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  const perAddressCount = new AddressCounter();
  const lingering = new LingeringClose();
  let closing = false;
  let reaper: NodeJS.Timeout | undefined;

  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    // A session error is reported on the session and then destroys it; there is
    // nothing to add for the service, but it must not become an uncaught error.
    session.on("error", () => {});
    // Until its first stream a session gets `headersTimeout`, as a new HTTP/1.1
    // connection has for its first request.
    closeWhenIdle(session, headersTimeout, idleTimeout);
    limitRequestTime(session, requestTimeout);
    if (closing) session.close();
  });
  h2.on("sessionError", () => {});
  h1.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    lingering.noteRequest(req);
    // A request that arrives while the server drains gets `Connection: close`.
    if (closing && !res.headersSent) res.shouldKeepAlive = false;
  });
  answerExpectContinue(h1, bodyLimit, lingering);

  function dispatch(socket: net.Socket, data: Buffer | undefined, useH2: boolean): void {
    undecided.delete(socket);
    if (data !== undefined && data.length > 0) socket.unshift(data);
    if (useH2) {
      // Never resume() a socket before http2 takes it: the session reads the
      // buffered bytes itself; flowing mode would lose them.
      h2.emit("connection", socket);
    } else {
      lingering.install(socket);
      h1.emit("connection", socket);
    }
  }

  /** Reads until the bytes are, or cannot be, the HTTP/2 preface. */
  function sniff(socket: net.Socket): void {
    undecided.add(socket);
    const chunks: Buffer[] = [];
    let length = 0;
    const timer = setTimeout(() => socket.destroy(), headersTimeout);
    const onError = (): void => {
      cleanup();
      socket.destroy();
    };
    const onEnd = (): void => {
      cleanup();
      socket.destroy();
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.removeListener("readable", onReadable);
      socket.removeListener("error", onError);
      socket.removeListener("end", onEnd);
      undecided.delete(socket);
    };
    const onReadable = (): void => {
      let chunk: Buffer | null;
      while ((chunk = socket.read() as Buffer | null) !== null) {
        chunks.push(chunk);
        length += chunk.length;
      }
      if (length === 0) return;
      const head = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, length);
      const n = Math.min(head.length, H2_PREFACE.length);
      const matches = head.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      if (matches && n < H2_PREFACE.length) return; // need more bytes to decide
      cleanup();
      dispatch(socket, head, matches);
    };
    socket.on("readable", onReadable);
    socket.on("error", onError);
    socket.on("end", onEnd);
  }

  let front: net.Server;
  if (options.tls !== undefined) {
    front = tls.createServer({
      cert: options.tls.cert,
      key: options.tls.key,
      ALPNProtocols: ["h2", "http/1.1"],
    });
    front.on("secureConnection", (socket: tls.TLSSocket) => {
      dispatch(socket, undefined, socket.alpnProtocol === "h2");
    });
    // Failed handshakes (port scanners, plain HTTP on a TLS port) are not service errors.
    front.on("tlsClientError", () => {});
  } else {
    front = net.createServer({ noDelay: true });
  }
  if ((options.maxConnections ?? 0) > 0) front.maxConnections = options.maxConnections!;
  front.on("drop", (data?: { remoteAddress?: string }) => options.onConnectionRefused?.("total", data?.remoteAddress ?? ""));

  // Caps and tracking for both variants: for TLS the raw socket arrives on
  // "connection" before the handshake, so a refused one costs no handshake.
  front.on("connection", (socket: net.Socket) => {
    if (closing) {
      socket.destroy();
      return;
    }
    const key = addressKey(socket.remoteAddress);
    if (!perAddressCount.admit(key, perAddress)) {
      socket.destroy();
      options.onConnectionRefused?.("per_address", key);
      return;
    }
    sockets.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      perAddressCount.release(key);
    });
    if (options.tls === undefined) sniff(socket);
  });

  front.on("listening", () => {
    // The inner servers never listen themselves. Node only starts the
    // HTTP/1.1 connection tracking (headersTimeout, requestTimeout,
    // closeIdleConnections) on "listening".
    h1.emit("listening");
  });

  const originalClose = front.close.bind(front);
  const server = front as OnePortServer;

  Object.defineProperty(server, "http1", { value: h1, enumerable: true });
  Object.defineProperty(server, "http2", { value: h2, enumerable: true });

  server.connectionCount = () => sockets.size;

  server.closeIdleConnections = () => {
    h1.closeIdleConnections();
    for (const session of sessions) {
      if (!session.closed && !session.destroyed) session.close();
    }
    for (const socket of undecided) socket.destroy();
  };

  server.closeAllConnections = () => {
    for (const session of sessions) session.destroy();
    for (const socket of sockets) socket.destroy();
  };

  server.close = function close(callback?: (err?: Error) => void): OnePortServer {
    if (!closing) {
      closing = true;
      server.closeIdleConnections();
      // A keep-alive connection that was busy becomes idle once its response
      // is written; reap those until the last connection is gone.
      reaper = setInterval(() => server.closeIdleConnections(), 50);
      reaper.unref();
      front.once("close", () => {
        clearInterval(reaper);
        // Stops the HTTP/1.1 connection checker started by the "listening" event.
        h1.close(() => {});
        h2.close();
      });
    }
    originalClose((err?: Error) => {
      // The listener's callback can run before the last sockets emit
      // "close"; report closed only once they all have.
      if (sockets.size === 0) {
        callback?.(err);
        return;
      }
      let left = sockets.size;
      for (const socket of sockets) {
        socket.once("close", () => {
          if (--left === 0) callback?.(err);
        });
      }
    });
    return server;
  } as OnePortServer["close"];

  return server;
}

/** Options of {@link createFastify}: fastify's own plus the one-port server's. */
export interface CreateFastifyOptions extends OnePortServerOptions {
  /** fastify logger option. @default false */
  logger?: FastifyServerOptions["logger"];
  /** Largest request body fastify parses, in bytes. @default 1_048_576 */
  bodyLimit?: number | undefined;
  /** Further fastify options (serverFactory, http2 and https are set here and must not be given). */
  fastify?: Omit<FastifyServerOptions, "serverFactory" | "http2" | "https" | "logger" | "bodyLimit"> | undefined;
}

/**
 * Creates a fastify instance whose requests arrive over HTTP/1.1 or h2c (or
 * TLS with ALPN) on one port. Start it with {@link listenOnePort}.
 *
 * `app.server` is an {@link OnePortServer} at run time (typed as fastify's
 * default `http.Server`).
 */
export function createFastify(options: CreateFastifyOptions = {}): FastifyInstance {
  const bodyLimit = options.bodyLimit ?? 1_048_576;
  const app = fastify({
    ...options.fastify,
    logger: options.logger ?? false,
    bodyLimit,
    serverFactory: (handler) =>
      createOnePortServer(handler as RequestHandler, { ...options, bodyLimit }) as unknown as http.Server,
  });
  return app;
}

export interface OnePortOptions {
  /** Address to bind. @default "127.0.0.1" */
  host?: string | undefined;
  /** Port to bind; 0 picks a free one. @default 8080 */
  port?: number | undefined;
}

export interface ListeningServer {
  /** The bound address, e.g. "127.0.0.1". */
  readonly address: string;
  /** The bound port (the real one when 0 was asked). */
  readonly port: number;
  /** "http://host:port" or "https://host:port" (IPv6 hosts in brackets). */
  readonly url: string;
  /**
   * Stops accepting connections, lets in-flight requests and streams finish
   * for up to `graceMs`, then destroys what is left, and runs fastify's close
   * hooks. Resolves when every connection is closed.
   * @param graceMs @default 10_000
   */
  close(graceMs?: number): Promise<void>;
  /** Destroys every connection and HTTP/2 session now (cuts a `close` in progress short). */
  closeAllConnections(): void;
}

/** Readies `app` (from {@link createFastify}) and listens on one port. */
export async function listenOnePort(app: FastifyInstance, options: OnePortOptions = {}): Promise<ListeningServer> {
  const server = app.server as unknown as OnePortServer;
  if (typeof server.closeAllConnections !== "function" || !("http2" in server)) {
    throw new TypeError("listenOnePort needs a fastify instance made by createFastify()");
  }
  await app.listen({ host: options.host ?? "127.0.0.1", port: options.port ?? 8080 });
  const bound = server.address();
  if (bound === null || typeof bound === "string") {
    throw new Error("server is not bound to a TCP port");
  }
  const scheme = server instanceof tls.Server ? "https" : "http";
  const hostPart = bound.family === "IPv6" ? `[${bound.address}]` : bound.address;
  let closed: Promise<void> | undefined;
  return {
    address: bound.address,
    port: bound.port,
    url: `${scheme}://${hostPart}:${bound.port}`,
    close(graceMs = 10_000): Promise<void> {
      closed ??= (async () => {
        const force = setTimeout(() => server.closeAllConnections(), graceMs);
        try {
          await app.close();
        } finally {
          clearTimeout(force);
        }
      })();
      return closed;
    },
    closeAllConnections(): void {
      server.closeAllConnections();
    },
  };
}
