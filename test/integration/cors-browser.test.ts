/**
 * CORS in a real browser: Debian's chromium (headless, driven by
 * puppeteer-core; no browser download) on a page served from another origin
 * (another loopback port) calls REST, follows the SSE stream with
 * `access_token`, and streams ExecuteAsync with Connect-Web and gRPC-Web
 * (bundled for the page with esbuild). A page on an origin that is not
 * listed gets nothing. Also the raw preflight answers.
 */
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { build } from "esbuild";
import puppeteer, { type Browser } from "puppeteer-core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { registerMachine, ROOT, startService, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");
const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

/** Serves an empty page and the bundle; the page's origin is this server's. */
async function startPageServer(bundle: string): Promise<{ port: number; close: () => Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.url === "/bundle.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
      return;
    }
    res.writeHead(200, { "content-type": "text/html" }).end('<!doctype html><title>cors</title><script src="/bundle.js"></script>');
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as { port: number }).port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** A raw HTTP/1.1 request (fetch in Node would not send a browser's Origin semantics faithfully). */
function raw(url: string, method: string, headers: Record<string, string>): Promise<{ status: number; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      res.resume();
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("CORS", () => {
  let svc: TestService;
  let page: Awaited<ReturnType<typeof startPageServer>>;
  let browser: Browser;
  let machine: string;
  let allowedOrigin: string;

  beforeAll(async () => {
    expect(fs.existsSync(CHROMIUM), `${CHROMIUM} (apt-get install chromium; scripts/bootstrap.sh does)`).toBe(true);
    const bundled = await build({
      entryPoints: [path.join(ROOT, "test/fixtures/browser/connect-web-page.ts")],
      bundle: true,
      format: "iife",
      platform: "browser",
      target: "es2022",
      write: false,
      logLevel: "silent",
    });
    page = await startPageServer(bundled.outputFiles[0]!.text);
    allowedOrigin = `http://127.0.0.1:${page.port}`;
    svc = await startService({ db: "sqlite", env: { FLEETRUN_CORS_ORIGINS: `https://app.example.com, ${allowedOrigin}` } });
    machine = await registerMachine(svc, fleet, { index: 8, user: "root" });
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS, timeout: 120_000, protocolTimeout: 120_000 });
  }, 240_000);
  afterAll(async () => {
    await browser?.close();
    await page?.close();
    await svc?.close();
  });

  async function openPage(origin: string) {
    const tab = await browser.newPage();
    await tab.goto(`${origin}/`);
    await tab.waitForFunction("globalThis.fleetrunWeb !== undefined");
    return tab;
  }

  it("answers preflights for REST, Connect, gRPC-Web and the stream from a listed origin, with the headers they need", async () => {
    for (const [p, method, headers] of [
      ["/v1/commands", "POST", "authorization,content-type"],
      ["/v1/commands/cmd_x/stream", "GET", "authorization,last-event-id"],
      ["/fleetrun.v1.CommandService/ExecuteAsync", "POST", "authorization,content-type,connect-protocol-version,connect-timeout-ms"],
      ["/fleetrun.v1.CommandService/GetCommand", "POST", "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout"],
    ] as const) {
      const r = await raw(svc.url + p, "OPTIONS", { origin: allowedOrigin, "access-control-request-method": method, "access-control-request-headers": headers });
      expect(r.status, p).toBe(204);
      expect(r.headers["access-control-allow-origin"]).toBe(allowedOrigin);
      expect(String(r.headers["access-control-allow-methods"]).split(", ")).toContain(method);
      const allowed = String(r.headers["access-control-allow-headers"]).split(", ");
      for (const h of headers.split(",")) expect(allowed, h).toContain(h);
      expect(r.headers.vary).toMatch(/Origin/);
    }
    const actual = await raw(`${svc.url}/v1/commands/cmd_x`, "GET", { origin: allowedOrigin });
    expect(actual.status).toBe(401);
    expect(actual.headers["access-control-allow-origin"]).toBe(allowedOrigin);
    const exposed = String(actual.headers["access-control-expose-headers"]).split(", ");
    for (const h of ["grpc-status", "grpc-message", "grpc-status-details-bin", "connect-content-encoding", "retry-after"]) expect(exposed, h).toContain(h);
  });

  it("gives other origins no CORS headers at all", async () => {
    for (const origin of ["http://evil.example", `http://localhost:${page.port}`]) {
      const pre = await raw(`${svc.url}/v1/commands`, "OPTIONS", { origin, "access-control-request-method": "POST" });
      expect(pre.status).not.toBe(204);
      expect(Object.keys(pre.headers).filter((h) => h.startsWith("access-control-"))).toEqual([]);
      const actual = await raw(`${svc.url}/healthz`, "GET", { origin });
      expect(actual.status).toBe(200);
      expect(Object.keys(actual.headers).filter((h) => h.startsWith("access-control-"))).toEqual([]);
    }
  });

  it("lets a page on a listed origin call REST, follow SSE with access_token, and stream with Connect-Web and gRPC-Web", { timeout: 90_000 }, async () => {
    const tab = await openPage(allowedOrigin);
    try {
      const rest = await tab.evaluate(
        async (api, token, machineId) => {
          const r = await fetch(`${api}/v1/commands`, {
            method: "POST",
            headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
            body: JSON.stringify({ machine_id: machineId, command: "echo from-the-browser; exit 2" }),
          });
          return { status: r.status, body: (await r.json()) as any };
        },
        svc.url,
        svc.token,
        machine,
      );
      expect(rest.status).toBe(200);
      expect(rest.body.data).toMatchObject({ stdout: "from-the-browser\n", exit_code: 2, status: "completed" });

      const sse = await tab.evaluate(
        (api, token, id) =>
          new Promise<{ event: string; id: string; data: any }[]>((resolve, reject) => {
            const events: { event: string; id: string; data: any }[] = [];
            const source = new EventSource(`${api}/v1/commands/${id}/stream?access_token=${encodeURIComponent(token)}`);
            for (const name of ["output", "end"]) {
              source.addEventListener(name, (e) => {
                const m = e as MessageEvent;
                events.push({ event: name, id: m.lastEventId, data: JSON.parse(m.data) });
                if (name === "end") {
                  source.close();
                  resolve(events);
                }
              });
            }
            source.onerror = () => {
              source.close();
              reject(new Error(`EventSource failed after ${events.length} events`));
            };
          }),
        svc.url,
        svc.token,
        rest.body.data.id,
      );
      expect(sse.map((e) => e.event)).toEqual(["output", "end"]);
      expect(sse[0]!.data.data.output.data).toBe("from-the-browser\n");
      expect(sse[1]!.data.data.end.exit_code).toBe(2);
      expect(sse[1]!.id).toBe("17");

      for (const protocol of ["connect", "grpc-web"] as const) {
        const events = await tab.evaluate(
          (api, token, proto, machineId) => (globalThis as any).fleetrunWeb.executeAsync(api, token, proto, machineId, "echo a; sleep 0.5; echo b; exit 5"),
          svc.url,
          svc.token,
          protocol,
          machine,
        );
        expect(events[0].kind, protocol).toBe("started");
        expect(events[0].id).toMatch(/^cmd_/);
        expect(events.filter((e: any) => e.kind === "output").map((e: any) => e.text).join("")).toBe("a\nb\n");
        expect(events.at(-1)).toEqual({ kind: "end", exitCode: 5 });
        // Error details cross the origin too (grpc-status / grpc-message are exposed).
        const err = await tab.evaluate(
          (api, proto) => (globalThis as any).fleetrunWeb.getCommandError(api, "not-a-valid-token-123", proto, "cmd_x"),
          svc.url,
          protocol,
        );
        expect(err).toEqual({ code: "Unauthenticated", message: "invalid, revoked or expired token" });
      }
    } finally {
      await tab.close();
    }
  });

  it("blocks a page on an origin that is not listed", async () => {
    const tab = await openPage(`http://localhost:${page.port}`);
    try {
      const result = await tab.evaluate(async (api, token) => {
        try {
          await fetch(`${api}/v1/commands/cmd_x`, { headers: { authorization: `Bearer ${token}` } });
          return "reached";
        } catch (err) {
          return String(err);
        }
      }, svc.url, svc.token);
      expect(result).toMatch(/TypeError: Failed to fetch/);
    } finally {
      await tab.close();
    }
  });
});
