/**
 * The server edge under abuse, against the real service over real sockets:
 * slow headers, idle HTTP/1.1 and HTTP/2 connections (also ones that only
 * ping), connections beyond the per-address cap, bodies over the limit (with
 * and without `Expect: 100-continue`, curl and node:http, HTTP/1.1 and h2), a
 * SIGTERM with idle HTTP/2 connections open, and /metrics behind a token.
 * Each case makes the attack and asserts it fails while normal calls go on.
 */
import { execFile } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { createFastify, listenOnePort } from "../../src/server/one-port-server.ts";
import { GrpcClient, TOKEN, eventually, freePort, spawnService, startService, type TestService } from "../fixtures/service.ts";

const run = promisify(execFile);
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
/** An empty SETTINGS frame. */
const SETTINGS = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);
const BODY_LIMIT = 64 * 1024;
const HEADERS_TIMEOUT_MS = 1_000;
const IDLE_TIMEOUT_MS = 1_000;
const PER_ADDRESS = 4;

let svc: TestService;
let tmp: string;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-harden-"));
  svc = await startService({
    env: {
      FLEETRUN_BODY_LIMIT_BYTES: String(BODY_LIMIT),
      FLEETRUN_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS),
      FLEETRUN_IDLE_TIMEOUT_MS: String(IDLE_TIMEOUT_MS),
      FLEETRUN_METRICS_TOKEN: "metrics-token-0123456789",
    },
  });
});

afterAll(async () => {
  await svc?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** A raw TCP connection from `localAddress` that records what it receives and when it closes. */
interface Raw {
  socket: net.Socket;
  received(): Buffer;
  closedAt(): number;
  connected: Promise<void>;
}

function raw(port: number, localAddress = "127.0.0.1"): Raw {
  const socket = net.connect({ port, host: "127.0.0.1", localAddress });
  const chunks: Buffer[] = [];
  let closedAt = 0;
  socket.on("data", (d: Buffer) => chunks.push(d));
  socket.on("error", () => {});
  socket.on("close", () => (closedAt = performance.now()));
  const connected = new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  return { socket, received: () => Buffer.concat(chunks), closedAt: () => closedAt, connected };
}

/** GET over HTTP/1.1 on a fresh connection from `localAddress`; resolves with the status or the error code. */
function h1Status(port: number, urlPath: string, localAddress = "127.0.0.1", headers: Record<string, string> = {}): Promise<{ status: number | string; body: string; ms: number }> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const req = http.get({ host: "127.0.0.1", port, path: urlPath, localAddress, agent: false, headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body, ms: performance.now() - t0 }));
    });
    req.on("error", (err: NodeJS.ErrnoException) => resolve({ status: err.code ?? "error", body: "", ms: performance.now() - t0 }));
  });
}

describe("slow and idle connections", () => {
  it("closes connections that trickle their headers, while normal calls answer in under 1 s", async () => {
    // From an address of their own: the per-address cap is not what closes them.
    const slow = Array.from({ length: 3 }, () => raw(svc.port, "127.0.0.5"));
    await Promise.all(slow.map((s) => s.connected));
    const t0 = performance.now();
    for (const s of slow) s.socket.write("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    const trickle = setInterval(() => {
      for (const s of slow) if (!s.socket.destroyed) s.socket.write(`X-Slow-${Date.now()}: 1\r\n`);
    }, 100);
    try {
      // Meanwhile: ordinary calls, one after the other.
      for (let i = 0; i < 5; i++) {
        const r = await h1Status(svc.port, "/healthz");
        expect(r.status).toBe(200);
        expect(r.ms).toBeLessThan(1_000);
        const authed = await svc.rest("GET", "/v1/machines");
        expect(authed.status).toBe(200);
      }
      await eventually(() => slow.every((s) => s.closedAt() > 0), 10_000, "the slow connections to be closed");
    } finally {
      clearInterval(trickle);
    }
    for (const s of slow) {
      expect(s.closedAt() - t0).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 100);
      // Checked every second by Node: closed within the timeout plus that.
      expect(s.closedAt() - t0).toBeLessThan(HEADERS_TIMEOUT_MS + 3_000);
      expect(s.received().toString("latin1")).toMatch(/^(HTTP\/1\.1 408 |$)/);
    }
  });

  it("closes a connection that never sends a byte", async () => {
    const s = raw(svc.port);
    await s.connected;
    const t0 = performance.now();
    await eventually(() => s.closedAt() > 0, 10_000, "the silent connection to be closed");
    expect(s.closedAt() - t0).toBeLessThan(HEADERS_TIMEOUT_MS + 1_500);
    expect(s.received().length).toBe(0);
  });

  it("closes an idle HTTP/1.1 keep-alive connection after the idle timeout", async () => {
    const s = raw(svc.port);
    await s.connected;
    s.socket.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    await eventually(() => s.received().toString("latin1").includes('{"status":"ok"}'), 5_000, "the answer");
    const t0 = performance.now();
    await eventually(() => s.closedAt() > 0, 10_000, "the idle keep-alive connection to be closed");
    expect(s.closedAt() - t0).toBeGreaterThanOrEqual(IDLE_TIMEOUT_MS - 100);
    expect(s.closedAt() - t0).toBeLessThan(IDLE_TIMEOUT_MS + 2_000);
  });

  it("closes an HTTP/2 connection that sends the preface and then nothing", async () => {
    const s = raw(svc.port);
    await s.connected;
    const t0 = performance.now();
    s.socket.write(Buffer.concat([PREFACE, SETTINGS]));
    await eventually(() => s.closedAt() > 0, 10_000, "the silent HTTP/2 connection to be closed");
    expect(s.closedAt() - t0).toBeLessThan(HEADERS_TIMEOUT_MS + 2_000);
    // The server spoke HTTP/2 to it (its SETTINGS, then GOAWAY: frame type 7).
    expect(s.received().length).toBeGreaterThan(9);
  });

  it("closes an idle HTTP/2 session even while the client keeps pinging", async () => {
    const session = http2.connect(svc.url);
    session.on("error", () => {});
    let goawayAt = 0;
    let closedAt = 0;
    session.on("goaway", () => (goawayAt ||= performance.now()));
    session.on("close", () => (closedAt = performance.now()));
    const status = await new Promise<number>((resolve, reject) => {
      const st = session.request({ ":path": "/healthz" });
      st.on("response", (h) => resolve(Number(h[":status"])));
      st.on("error", reject);
      st.resume();
    });
    expect(status).toBe(200);
    const t0 = performance.now();
    const pinger = setInterval(() => {
      if (!session.closed && !session.destroyed) session.ping(() => {});
    }, 150);
    try {
      await eventually(() => closedAt > 0, 10_000, "the idle session to be closed");
    } finally {
      clearInterval(pinger);
    }
    expect(goawayAt).toBeGreaterThan(0);
    expect(goawayAt - t0).toBeGreaterThanOrEqual(IDLE_TIMEOUT_MS - 200);
    expect(closedAt - t0).toBeLessThan(IDLE_TIMEOUT_MS + 3_000);
  });

  it("never cuts a follower of a long command, over HTTP/2 (grpc-js) or HTTP/1.1", async () => {
    // Quiet for 3 idle timeouts, then output and the end.
    const start = await svc.rest("POST", "/v1/commands/async", { machine_id: "mach_local", command: "sleep 3; echo finished" });
    expect(start.status).toBe(202);
    const id = start.body.data.id as string;

    const grpc = new GrpcClient(svc.url, TOKEN);
    const viaGrpc = new Promise<string>((resolve, reject) => {
      let out = "";
      const call = grpc.stream(CommandService.method.watchCommand, { id });
      call.on("data", (e: { event: { case: string; value: { data?: Uint8Array; status?: number } } }) => {
        if (e.event.case === "output") out += Buffer.from(e.event.value.data!).toString();
        if (e.event.case === "end") out += "<end>";
      });
      call.on("end", () => resolve(out));
      call.on("error", reject);
    });
    const viaH1 = fetch(`${svc.url}/v1/commands/${id}/stream`, { headers: { authorization: `Bearer ${TOKEN}` } }).then((r) => r.text());
    try {
      expect(await viaGrpc).toBe("finished\n<end>");
      const lines = (await viaH1).trim().split("\n");
      expect(lines.some((l) => l.includes('"finished\\n"'))).toBe(true);
      expect(lines.at(-1)).toContain('"end"');
    } finally {
      grpc.close();
    }
  });
});

describe("HTTP/2 streams whose request never ends", () => {
  it("are reset after the request timeout while the session and other streams go on", async () => {
    // The service's request timeout is 300 s: a bare server with a short one shows the same code path.
    const app = createFastify({ requestTimeout: 500, idleTimeout: 60_000, headersTimeout: 60_000 });
    app.get("/healthz", async () => ({ ok: true }));
    app.post("/upload", async (req) => ({ got: (req.body as Buffer | undefined)?.length ?? 0 }));
    // Answers well after the request timeout: a request that arrived whole is never cut.
    app.post("/slow-answer", async () => {
      await new Promise((resolve) => setTimeout(resolve, 1_200));
      return { slow: true };
    });
    app.addContentTypeParser("*", { parseAs: "buffer" }, (_req, body, done) => done(null, body));
    const server = await listenOnePort(app, { host: "127.0.0.1", port: 0 });
    const session = http2.connect(server.url);
    session.on("error", () => {});
    try {
      // HEADERS without END_STREAM, then one DATA frame and never the end.
      const stuck = session.request({ ":method": "POST", ":path": "/upload", "content-type": "application/octet-stream" });
      stuck.write("partial");
      const t0 = performance.now();
      const rst = await new Promise<number>((resolve) => {
        stuck.on("error", () => {});
        stuck.on("close", () => resolve(stuck.rstCode ?? -1));
        stuck.resume();
      });
      expect(rst).toBe(http2.constants.NGHTTP2_CANCEL);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(400);
      expect(performance.now() - t0).toBeLessThan(3_000);
      // The session still serves, also a slow upload that does end in time.
      const ok = await new Promise<string>((resolve, reject) => {
        const st = session.request({ ":method": "POST", ":path": "/upload", "content-type": "application/octet-stream" });
        let body = "";
        st.setEncoding("utf8");
        st.on("data", (c: string) => (body += c));
        st.on("end", () => resolve(body));
        st.on("error", reject);
        st.write("abc");
        setTimeout(() => st.end("def"), 200); // a slow client, not synchronisation
      });
      expect(JSON.parse(ok)).toEqual({ got: 6 });
      const slow = await new Promise<string>((resolve, reject) => {
        const st = session.request({ ":method": "POST", ":path": "/slow-answer", "content-type": "application/octet-stream" });
        let body = "";
        st.setEncoding("utf8");
        st.on("data", (c: string) => (body += c));
        st.on("end", () => resolve(body));
        st.on("error", reject);
        st.end("x");
      });
      expect(JSON.parse(slow)).toEqual({ slow: true });
    } finally {
      session.destroy();
      await server.close(100);
    }
  });
});

describe("connections per client address", () => {
  let capped: TestService;
  beforeAll(async () => {
    capped = await startService({ env: { FLEETRUN_MAX_CONNECTIONS_PER_ADDRESS: String(PER_ADDRESS), FLEETRUN_METRICS_TOKEN: "metrics-token-0123456789" } });
  });
  afterAll(async () => {
    await capped?.close();
  });

  it("closes connections beyond the cap at once while other addresses are served", async () => {
    const svc = capped;
    // Held open: each sends part of a request line (within the headers timeout).
    const held = Array.from({ length: PER_ADDRESS }, () => raw(svc.port, "127.0.0.2"));
    await Promise.all(held.map((h) => h.connected));
    for (const h of held) h.socket.write("GET /healthz HTTP/1.1\r\n");
    const over = raw(svc.port, "127.0.0.2");
    await over.connected;
    const t0 = performance.now();
    over.socket.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    await eventually(() => over.closedAt() > 0, 5_000, "the connection over the cap to be closed");
    expect(over.closedAt() - t0).toBeLessThan(500);
    expect(over.received().length).toBe(0);

    // Another address is served meanwhile, and the held ones still are.
    const other = await h1Status(svc.port, "/healthz", "127.0.0.3");
    expect(other.status).toBe(200);
    expect(other.ms).toBeLessThan(1_000);
    held[0]!.socket.write("Host: x\r\nConnection: close\r\n\r\n");
    await eventually(() => held[0]!.received().toString("latin1").startsWith("HTTP/1.1 200 "), 5_000, "the held connection's answer");

    // Once one of them is gone, the address gets a place again.
    await eventually(() => held[0]!.closedAt() > 0, 5_000, "the answered connection to close");
    expect((await h1Status(svc.port, "/healthz", "127.0.0.2")).status).toBe(200);
    for (const h of held) h.socket.destroy();

    const metrics = await h1Status(svc.port, "/metrics", "127.0.0.4", { authorization: "Bearer metrics-token-0123456789" });
    const refused = /^fleetrun_connections_refused_total\{reason="per_address"\} (\d+)$/m.exec(metrics.body);
    expect(Number(refused?.[1])).toBeGreaterThanOrEqual(1);
  });
});

describe("connections overall", () => {
  it("closes connections beyond FLEETRUN_MAX_CONNECTIONS at once and reports them", async () => {
    const refused: string[] = [];
    const app = createFastify({ maxConnections: 2, onConnectionRefused: (reason) => refused.push(reason) });
    app.get("/healthz", async () => ({ ok: true }));
    const server = await listenOnePort(app, { host: "127.0.0.1", port: 0 });
    try {
      const held = [raw(server.port, "127.0.0.6"), raw(server.port, "127.0.0.7")];
      await Promise.all(held.map((h) => h.connected));
      await eventually(() => (app.server as unknown as { connectionCount(): number }).connectionCount() === 2, 5_000, "two connections");
      const over = raw(server.port, "127.0.0.8");
      await over.connected;
      await eventually(() => over.closedAt() > 0, 5_000, "the third connection to be closed");
      expect(refused).toEqual(["total"]);
      for (const h of held) h.socket.destroy();
      await eventually(async () => (await h1Status(server.port, "/healthz", "127.0.0.8")).status === 200, 5_000, "a place again");
    } finally {
      await server.close(100);
    }
  });
});

describe("a body over the limit", () => {
  const big = (bytes: number) => Buffer.alloc(bytes, "a");
  const envelope = { error: { code: "resource_exhausted", message: `request body is larger than ${BODY_LIMIT} bytes` } };

  it("is 413 with the error envelope for curl, which sends Expect: 100-continue (never 100 Continue and a reset)", async () => {
    const file = path.join(tmp, "big.json");
    fs.writeFileSync(file, big(BODY_LIMIT * 40));
    for (const expectHeader of [[], ["-H", "Expect:"]]) {
      for (let i = 0; i < 3; i++) {
        const { stdout } = await run("curl", [
          "-sS", "-i", "-X", "POST", `${svc.url}/v1/commands`,
          "-H", `Authorization: Bearer ${TOKEN}`, "-H", "Content-Type: application/json",
          ...expectHeader, "--data-binary", `@${file}`,
        ]);
        expect(stdout, `curl ${expectHeader.join(" ")}`).not.toMatch(/^HTTP\/1\.1 100/);
        expect(stdout).toMatch(/^HTTP\/1\.1 413 /);
        expect(JSON.parse(stdout.slice(stdout.indexOf("\r\n\r\n") + 4))).toEqual(envelope);
      }
    }
  });

  /** POSTs `bytes` over node:http, writing as fast as the socket takes it; the status or the error code. */
  function post(bytes: number, opts: { expect?: boolean; chunked?: boolean }): Promise<{ status: number | string; body: string; continued: boolean }> {
    return new Promise((resolve) => {
      let continued = false;
      const req = http.request({
        host: "127.0.0.1",
        port: svc.port,
        method: "POST",
        path: "/v1/commands",
        agent: false,
        headers: {
          authorization: `Bearer ${TOKEN}`,
          "content-type": "application/json",
          ...(opts.chunked ? {} : { "content-length": String(bytes) }),
          ...(opts.expect ? { expect: "100-continue" } : {}),
        },
      });
      req.on("response", (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body, continued }));
        res.on("error", (err: NodeJS.ErrnoException) => resolve({ status: `response ${err.code}`, body, continued }));
      });
      req.on("error", (err: NodeJS.ErrnoException) => resolve({ status: err.code ?? "error", body: "", continued }));
      const chunk = Buffer.alloc(64 * 1024, "a");
      let sent = 0;
      const pump = (): void => {
        while (sent < bytes) {
          const n = Math.min(chunk.length, bytes - sent);
          sent += n;
          if (!req.write(chunk.subarray(0, n))) {
            req.once("drain", pump);
            return;
          }
        }
        req.end();
      };
      if (opts.expect) {
        req.on("continue", () => {
          continued = true;
          pump();
        });
      } else pump();
    });
  }

  it.each([
    ["Content-Length, no Expect", { expect: false, chunked: false }],
    ["Content-Length and Expect: 100-continue", { expect: true, chunked: false }],
    ["chunked, no Content-Length", { expect: false, chunked: true }],
  ])("is 413 every time over node:http (%s), also for 16 MiB", async (_name, opts) => {
    for (const bytes of [BODY_LIMIT * 4, 16 * 1024 * 1024]) {
      for (let i = 0; i < 5; i++) {
        const r = await post(bytes, opts);
        expect(r.status, `${bytes} bytes, try ${i}`).toBe(413);
        expect(JSON.parse(r.body)).toEqual(envelope);
        if (opts.expect) expect(r.continued).toBe(false);
      }
    }
    // The service still answers.
    expect((await svc.rest("GET", "/v1/machines")).status).toBe(200);
  });

  it("is 413 over h2c too", async () => {
    const session = http2.connect(svc.url);
    session.on("error", () => {});
    try {
      for (let i = 0; i < 3; i++) {
        const r = await new Promise<{ status: number; body: string }>((resolve, reject) => {
          const st = session.request({ ":method": "POST", ":path": "/v1/commands", authorization: `Bearer ${TOKEN}`, "content-type": "application/json" });
          let status = 0;
          let body = "";
          st.on("response", (h) => (status = Number(h[":status"])));
          st.setEncoding("utf8");
          st.on("data", (c: string) => (body += c));
          st.on("end", () => resolve({ status, body }));
          st.on("error", reject);
          const chunk = Buffer.alloc(64 * 1024, "a");
          let sent = 0;
          const pump = (): void => {
            while (sent < 8 * 1024 * 1024 && !st.destroyed && st.writable) {
              sent += chunk.length;
              if (!st.write(chunk)) {
                st.once("drain", pump);
                return;
              }
            }
            if (st.writable) st.end();
          };
          pump();
        });
        expect(r.status).toBe(413);
        expect(JSON.parse(r.body)).toEqual(envelope);
      }
    } finally {
      session.close();
    }
  });
});

describe("/metrics with FLEETRUN_METRICS_TOKEN", () => {
  it("is 401 without the token or with another one, 200 with it", async () => {
    const none = await h1Status(svc.port, "/metrics");
    expect(none.status).toBe(401);
    expect(JSON.parse(none.body)).toEqual({ error: { code: "unauthenticated", message: "GET /metrics needs Authorization: Bearer <FLEETRUN_METRICS_TOKEN>" } });
    expect(none.body).not.toContain("fleetrun_");
    // The admin token is no metrics token.
    expect((await h1Status(svc.port, "/metrics", "127.0.0.1", { authorization: `Bearer ${TOKEN}` })).status).toBe(401);
    expect((await h1Status(svc.port, "/metrics", "127.0.0.1", { authorization: "Bearer metrics-token-012345678" })).status).toBe(401);
    const ok = await h1Status(svc.port, "/metrics", "127.0.0.1", { authorization: "Bearer metrics-token-0123456789" });
    expect(ok.status).toBe(200);
    expect(ok.body).toContain("fleetrun_commands_running");
  });

  it("is open when no token is set (the default)", async () => {
    const open = await startService();
    try {
      const r = await h1Status(open.port, "/metrics");
      expect(r.status).toBe(200);
      expect(r.body).toContain("fleetrun_connections_refused_total");
    } finally {
      await open.close();
    }
  });
});

describe("SIGTERM with idle HTTP/2 connections open", () => {
  it("exits promptly and closes them", { timeout: 120_000 }, async () => {
    const port = await freePort();
    const dataDir = fs.mkdtempSync(path.join(tmp, "data-"));
    const proc = await spawnService({ FLEETRUN_DATA_DIR: dataDir }, port);
    // One that ignores GOAWAY (raw socket), one well-behaved client session after a call.
    const stubborn = raw(port);
    await stubborn.connected;
    stubborn.socket.write(Buffer.concat([PREFACE, SETTINGS]));
    const session = http2.connect(proc.url);
    session.on("error", () => {});
    let sessionClosed = false;
    session.on("close", () => (sessionClosed = true));
    await new Promise<void>((resolve, reject) => {
      const st = session.request({ ":path": "/healthz" });
      st.on("end", () => resolve());
      st.on("error", reject);
      st.resume();
    });
    await eventually(() => stubborn.received().length > 0, 5_000, "the server's SETTINGS");
    const t0 = performance.now();
    proc.child.kill("SIGTERM");
    expect(await proc.exited).toBe(0);
    const took = performance.now() - t0;
    expect(took).toBeLessThan(5_000);
    expect(proc.output()).not.toMatch(/"level":50/);
    await eventually(() => stubborn.closedAt() > 0 && sessionClosed, 5_000, "the clients to see the close");
  });
});
