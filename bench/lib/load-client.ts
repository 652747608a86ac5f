/**
 * Client side of the load section: JSON over HTTP/1.1 without client-side
 * timeouts (fetch gives up on headers after 300 s; a stalled service must be
 * measured, not cut off), NDJSON followers that check every byte, the /healthz
 * poller process, and the service's memory from /proc.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { onCleanup } from "./cleanup.ts";
import { NODE, ROOT } from "./service.ts";

const agent = new http.Agent({ keepAlive: true, maxSockets: Number.POSITIVE_INFINITY });

export interface JsonAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: any;
  text: string;
}

/** One JSON request; `timeoutMs` bounds the whole exchange (then it rejects). */
export function requestJson(url: string, token: string, method: string, urlPath: string, body?: unknown, timeoutMs = 1_800_000): Promise<JsonAnswer> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      url + urlPath,
      {
        method,
        agent,
        headers: {
          authorization: `Bearer ${token}`,
          ...(payload !== undefined ? { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (d: Buffer) => chunks.push(d));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let parsed: unknown = null;
          try {
            parsed = text ? JSON.parse(text) : null;
          } catch {
            parsed = null;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed, text });
        });
        res.on("error", reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${urlPath}: no answer within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end(payload);
  });
}

export interface FollowResult {
  stdout: string;
  stderr: string;
  /** Offsets were contiguous (no gap, no duplicate) and no `skipped` event came. */
  contiguous: boolean;
  end: any;
  problem: string | null;
}

/** Follows a command over REST NDJSON from offset 0 to its end event. */
export function followNdjson(url: string, token: string, id: string, timeoutMs = 1_800_000): Promise<FollowResult> {
  return new Promise((resolve) => {
    let stdout = "";
    let stderr = "";
    let offset = 0;
    let contiguous = true;
    let end: any = null;
    let buf = "";
    const done = (problem: string | null) => resolve({ stdout, stderr, contiguous, end, problem });
    const req = http.get(`${url}/v1/commands/${id}/stream`, { agent, headers: { authorization: `Bearer ${token}` } }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        done(`HTTP ${res.statusCode}`);
        return;
      }
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line.startsWith("{")) continue;
          const ev = (JSON.parse(line) as { data: any }).data;
          if (ev.output) {
            const o = ev.output as { stream: string; offset: number | string; data: string };
            if (Number(o.offset) !== offset) contiguous = false;
            offset = Number(o.offset) + Buffer.byteLength(o.data);
            if (String(o.stream).toLowerCase().includes("err")) stderr += o.data;
            else stdout += o.data;
          } else if (ev.skipped !== undefined) {
            contiguous = false;
          } else if (ev.end) {
            end = ev.end;
          }
        }
      });
      res.on("end", () => done(end === null ? "the stream ended without an end event" : null));
      res.on("error", (e) => done(e.message));
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error("follower timed out")));
    req.on("error", (e) => done(e.message));
  });
}

export interface PollerProcess {
  stop(): Promise<{ latenciesMs: number[]; failures: number; unanswered: number }>;
}

/** Starts bench/lib/healthz-poller.ts against `url`; resolves once it polls. */
export async function startPollerProcess(url: string, intervalMs: number): Promise<PollerProcess> {
  const child = spawn(NODE, [path.join(ROOT, "bench/lib/healthz-poller.ts"), url, String(intervalMs)], { stdio: ["pipe", "pipe", "inherit"] });
  let out = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const unregister = onCleanup(`healthz poller pid ${child.pid}`, async () => {
    if (child.exitCode === null) child.kill("SIGTERM");
    await exited;
  });
  const deadline = Date.now() + 30_000;
  while (!out.startsWith("ready\n")) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error("the healthz poller did not start");
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    async stop() {
      child.stdin.end();
      await exited;
      await unregister();
      const line = out.trim().split("\n").at(-1) ?? "";
      return JSON.parse(line) as { latenciesMs: number[]; failures: number; unanswered: number };
    },
  };
}

/** VmRSS and VmHWM (peak) of a process, bytes; null once it is gone. */
export function memoryOf(pid: number): { rss: number; peak: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? Number.NaN) * 1024;
    return { rss: kb("VmRSS"), peak: kb("VmHWM") };
  } catch {
    return null;
  }
}

/** The home directory of a local user, from /etc/passwd. */
export function homeOf(user: string): string {
  for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
    const f = line.split(":");
    if (f[0] === user && f[5]) return f[5];
  }
  throw new Error(`no user ${user} in /etc/passwd`);
}
