import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import http from "node:http";
import http2 from "node:http2";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import tls from "node:tls";
import type { TLSSocket } from "node:tls";
import path from "node:path";
import { promisify } from "node:util";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { CommandSchema, CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { createFastify, listenOnePort } from "../../src/server/one-port-server.ts";
import type { CreateFastifyOptions, ListeningServer, OnePortServer } from "../../src/server/one-port-server.ts";

const run = promisify(execFile);

/** A gate a route waits on, so a test decides when an in-flight request ends. */
interface Gate {
  entered: number;
  open(): void;
}

const started: ListeningServer[] = [];

async function startApp(options: CreateFastifyOptions = {}): Promise<{ server: ListeningServer; gate: Gate; raw: OnePortServer }> {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const gate: Gate = { entered: 0, open: () => release() };
  const app = createFastify(options);
  app.get("/healthz", async () => ({ ok: true }));
  app.get("/slow", async () => {
    gate.entered++;
    await released;
    return { done: true };
  });
  await app.register(fastifyConnectPlugin, {
    routes(router) {
      router.service(CommandService, { getCommand: (req) => create(CommandSchema, { id: req.id }) });
    },
  });
  const server = await listenOnePort(app, { host: "127.0.0.1", port: 0 });
  started.push(server);
  return { server, gate, raw: app.server as unknown as OnePortServer };
}

afterEach(async () => {
  await Promise.all(started.splice(0).map((s) => s.close(100)));
});

async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function h1Get(url: string, agent?: http.Agent): Promise<{ status: number; body: string; socket: net.Socket }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, agent ? { agent } : {}, (res) => {
        const socket = res.socket;
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body, socket }));
        res.on("error", reject);
      })
      .on("error", reject);
  });
}

function h2Get(session: http2.ClientHttp2Session, p: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":path": p });
    let status = 0;
    let body = "";
    stream.on("response", (h) => (status = Number(h[":status"])));
    stream.setEncoding("utf8");
    stream.on("data", (c: string) => (body += c));
    stream.on("end", () => resolve({ status, body }));
    stream.on("error", reject);
  });
}

function connectRefused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code === "ECONNREFUSED"));
  });
}

describe("close()", () => {
  it("closes idle keep-alive HTTP/1.1 connections and open HTTP/2 sessions promptly", async () => {
    const { server, raw } = await startApp();
    const agent = new http.Agent({ keepAlive: true });
    const first = await h1Get(`${server.url}/healthz`, agent);
    expect(first.status).toBe(200);
    let h1Closed = false;
    first.socket.once("close", () => (h1Closed = true));

    const session = http2.connect(server.url);
    session.on("error", () => {});
    expect((await h2Get(session, "/healthz")).status).toBe(200);
    let h2Closed = false;
    let goaway = false;
    session.once("goaway", () => (goaway = true));
    session.once("close", () => (h2Closed = true));
    await until("two connections", () => raw.connectionCount() === 2);

    const t0 = performance.now();
    await server.close(10_000);
    const elapsed = performance.now() - t0;

    expect(elapsed).toBeLessThan(1_500);
    await until("client sockets to close", () => h1Closed && h2Closed);
    expect(goaway).toBe(true);
    expect(raw.connectionCount()).toBe(0);
    expect(await connectRefused(server.port)).toBe(true);
    agent.destroy();
  });

  it("lets an in-flight HTTP/1.1 request finish within the grace period", async () => {
    const { server, gate } = await startApp();
    const pending = h1Get(`${server.url}/slow`);
    await until("the request to reach the route", () => gate.entered === 1);

    let closed = false;
    const closing = server.close(10_000).then(() => (closed = true));
    // No new connections while draining.
    expect(await connectRefused(server.port)).toBe(true);
    expect(closed).toBe(false);

    gate.open();
    const res = await pending;
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ done: true });
    const t0 = performance.now();
    await closing;
    expect(performance.now() - t0).toBeLessThan(1_500);
  });

  it("lets an in-flight HTTP/2 stream finish, then ends the session with GOAWAY", async () => {
    const { server, gate } = await startApp();
    const session = http2.connect(server.url);
    session.on("error", () => {});
    let goaway = false;
    session.once("goaway", () => (goaway = true));
    const pending = h2Get(session, "/slow");
    await until("the request to reach the route", () => gate.entered === 1);

    let closed = false;
    const closing = server.close(10_000).then(() => (closed = true));
    await until("GOAWAY", () => goaway);
    expect(closed).toBe(false);

    gate.open();
    const res = await pending;
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ done: true });
    await closing;
    session.close();
  });

  it("destroys what is still running when the grace period ends", async () => {
    const { server, gate, raw } = await startApp();
    const pending = h1Get(`${server.url}/slow`).then(
      () => "answered",
      (err: NodeJS.ErrnoException) => err.code ?? "error",
    );
    await until("the request to reach the route", () => gate.entered === 1);
    const t0 = performance.now();
    await server.close(300);
    const elapsed = performance.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(2_000);
    expect(await pending).toBe("ECONNRESET");
    expect(raw.connectionCount()).toBe(0);
    gate.open();
  });

  it("is idempotent", async () => {
    const { server } = await startApp();
    await Promise.all([server.close(100), server.close(100)]);
    await server.close(100);
  });
});

describe("HTTP/1.1 timeouts", () => {
  it("drops a client that sends its headers too slowly", async () => {
    const { server } = await startApp({ headersTimeout: 400, connectionsCheckingInterval: 50 });
    const socket = net.connect(server.port, "127.0.0.1");
    let received = "";
    let closedAt = 0;
    socket.setEncoding("utf8");
    socket.on("data", (c: string) => (received += c));
    socket.on("error", () => {});
    socket.on("close", () => (closedAt = performance.now()));
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    const t0 = performance.now();
    socket.write("GET /healthz HTTP/1.1\r\nHost: localhost\r\n");
    // Keep trickling header lines, never finishing the header block.
    const trickle = setInterval(() => {
      if (!socket.destroyed) socket.write(`X-Slow-${Date.now()}: 1\r\n`);
    }, 50);
    try {
      await until("the server to drop the connection", () => closedAt > 0, 5_000);
    } finally {
      clearInterval(trickle);
    }
    expect(closedAt - t0).toBeGreaterThanOrEqual(350);
    expect(closedAt - t0).toBeLessThan(3_000);
    expect(received).toMatch(/^HTTP\/1\.1 408 /);
  });

  it("drops a connection that never sends a byte", async () => {
    const { server, raw } = await startApp({ headersTimeout: 300 });
    const socket = net.connect(server.port, "127.0.0.1");
    let closed = false;
    socket.on("error", () => {});
    socket.on("close", () => (closed = true));
    await until("the server to see the connection", () => raw.connectionCount() === 1);
    await until("the server to drop the silent connection", () => closed, 3_000);
    expect(raw.connectionCount()).toBe(0);
  });

  it("still serves a client that is slow but within the limit", async () => {
    const { server } = await startApp({ headersTimeout: 2_000, connectionsCheckingInterval: 50 });
    const socket = net.connect(server.port, "127.0.0.1");
    let received = "";
    socket.setEncoding("utf8");
    socket.on("data", (c: string) => (received += c));
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    socket.write("GET /healthz HT");
    await new Promise((resolve) => setTimeout(resolve, 200)); // a slow client, not synchronisation
    socket.write("TP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    await until("a response", () => received.includes("\r\n\r\n") && received.includes("ok"));
    expect(received).toMatch(/^HTTP\/1\.1 200 /);
    socket.destroy();
  });
});

describe("TLS with ALPN", () => {
  let dir: string;
  let cert: string;
  let key: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "fleetrun-tls-"));
    await run("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"),
      "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ]);
    cert = await readFile(path.join(dir, "cert.pem"), "utf8");
    key = await readFile(path.join(dir, "key.pem"), "utf8");
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("serves HTTP/2 and HTTP/1.1 on one TLS port, chosen by ALPN", async () => {
    const { server } = await startApp({ tls: { cert, key } });
    expect(server.url).toBe(`https://127.0.0.1:${server.port}`);

    const h1 = await new Promise<{ status: number; alpn: string | false | null }>((resolve, reject) => {
      https
        .get(`${server.url}/healthz`, { ca: cert }, (res) => {
          const alpn = (res.socket as TLSSocket).alpnProtocol;
          res.resume();
          res.on("end", () => resolve({ status: res.statusCode ?? 0, alpn }));
        })
        .on("error", reject);
    });
    // A client without ALPN gets HTTP/1.1.
    expect(h1).toEqual({ status: 200, alpn: false });

    const viaAlpn = await new Promise<{ alpn: string | false | null; head: string }>((resolve, reject) => {
      const socket = tls.connect({ host: "127.0.0.1", port: server.port, ca: cert, ALPNProtocols: ["http/1.1"] });
      let head = "";
      socket.setEncoding("utf8");
      socket.on("secureConnect", () =>
        socket.write("GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
      );
      socket.on("data", (c: string) => (head += c));
      socket.on("end", () => resolve({ alpn: socket.alpnProtocol, head }));
      socket.on("error", reject);
    });
    expect(viaAlpn.alpn).toBe("http/1.1");
    expect(viaAlpn.head).toMatch(/^HTTP\/1\.1 200 /);

    const session = http2.connect(server.url, { ca: cert });
    try {
      const res = await h2Get(session, "/healthz");
      expect(res.status).toBe(200);
      expect(session.alpnProtocol).toBe("h2");
    } finally {
      session.close();
    }

    const client = createClient(
      CommandService,
      createGrpcTransport({ baseUrl: server.url, nodeOptions: { ca: cert } }),
    );
    expect((await client.getCommand({ id: "cmd_tls" })).id).toBe("cmd_tls");
  });

  it("refuses cleartext on a TLS port without crashing", async () => {
    const { server } = await startApp({ tls: { cert, key } });
    const err = await h1Get(`http://127.0.0.1:${server.port}/healthz`).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    const ok = await new Promise<number>((resolve, reject) => {
      https.get(`${server.url}/healthz`, { ca: cert }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on("error", reject);
    });
    expect(ok).toBe(200);
  });
});
