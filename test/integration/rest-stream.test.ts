/**
 * Server-streaming REST routes (`GET /v1/commands/{id}/stream` -> WatchCommand)
 * on a real fastify server with real HTTP/1.1 clients: NDJSON and SSE framing,
 * Last-Event-ID resume, keepalives, errors before and after the first message,
 * access_token, abort on disconnect and backpressure; a stop of the service
 * (final line / `stopping` event with the offset to resume from), `retry` on
 * `end` and 204 for a reconnect after the end.
 */
import { request as httpRequest } from "node:http";
import { connect as http2Connect, constants as h2constants } from "node:http2";
import type { Http2Server } from "node:http2";
import type { IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import type { HandlerContext } from "@connectrpc/connect";
import Fastify from "fastify";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CommandEventSchema, CommandSchema, CommandService, CommandStatus, OutputStream } from "../../src/gen/fleetrun/v1/command_pb.js";
import type { CommandEvent, WatchCommandRequest } from "../../src/gen/fleetrun/v1/command_pb.js";
import { registerRestRoutes } from "../../src/rest/rest-routes.ts";

const KEEPALIVE_MS = 150;
const enc = new TextEncoder();

const watched: { req: WatchCommandRequest; auth: string | null }[] = [];
const aborted = new Set<string>();
let gate: (() => void) | undefined;
let floodProduced = 0;

function output(offset: number, text: string, stream = OutputStream.STDOUT): CommandEvent {
  return create(CommandEventSchema, { event: { case: "output", value: { stream, offset: BigInt(offset), data: enc.encode(text) } } });
}

function end(stdoutBytes: number): CommandEvent {
  const cmd = create(CommandSchema, { id: "cmd_done", status: CommandStatus.COMPLETED, exitCode: 0, stdoutBytes: BigInt(stdoutBytes) });
  return create(CommandEventSchema, { event: { case: "end", value: cmd } });
}

function untilAborted(ctx: HandlerContext, id: string): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      aborted.add(id);
      resolve();
    };
    if (ctx.signal.aborted) done();
    else ctx.signal.addEventListener("abort", done, { once: true });
  });
}

const log = ["hello\n", "world\n"];

const transport = createRouterTransport(({ service }) => {
  service(CommandService, {
    async *watchCommand(req: WatchCommandRequest, ctx: HandlerContext) {
      watched.push({ req, auth: ctx.requestHeader.get("authorization") });
      switch (req.id) {
        case "cmd_done": {
          let offset = 0;
          for (const chunk of log) {
            if (offset >= Number(req.offset)) yield output(offset, chunk);
            offset += chunk.length;
          }
          yield end(offset);
          return;
        }
        case "cmd_gated":
          yield output(0, "first\n");
          await new Promise<void>((resolve) => (gate = resolve));
          yield output(6, "second\n", OutputStream.STDERR);
          yield end(13);
          return;
        case "cmd_stopping":
          yield output(0, "partial\n");
          throw new ConnectError("the service is stopping", Code.Unavailable, { "fleetrun-resume-offset": "8" });
        case "cmd_stopping_early":
          throw new ConnectError("the service is stopping", Code.Unavailable, { "fleetrun-resume-offset": String(req.offset) });
        case "cmd_fail_mid":
          yield output(0, "partial\n");
          throw new ConnectError("connection to the machine was lost", Code.Unavailable, { "x-error-field": "machine_id" });
        case "cmd_idle":
          await untilAborted(ctx, req.id);
          return;
        case "cmd_live":
          yield output(0, "live\n");
          await untilAborted(ctx, req.id);
          return;
        case "cmd_flood": {
          // Parked at a yield nobody pulls, the generator cannot see the signal itself.
          void untilAborted(ctx, req.id);
          const big = "x".repeat(64 * 1024);
          for (let i = 0; !ctx.signal.aborted; i++) {
            floodProduced++;
            yield output(i * big.length, big);
          }
          return;
        }
        default:
          throw new ConnectError(`command ${JSON.stringify(req.id)} not found`, Code.NotFound, { "x-error-field": "id" });
      }
    },
  });
});

const logs: string[] = [];
let app: FastifyInstance;
let base: string;

beforeAll(async () => {
  app = Fastify({ logger: { level: "info", stream: { write: (line: string) => void logs.push(line) } } });
  registerRestRoutes(app, { services: [CommandService], transport, sseKeepaliveMs: KEEPALIVE_MS });
  await app.listen({ host: "127.0.0.1", port: 0 });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await app.close();
});

/** Incremental reader of a streamed body. */
function bodyReader(res: Response): { until(pred: (text: string) => boolean, timeoutMs?: number): Promise<string>; rest(): Promise<string> } {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = "";
  return {
    async until(pred, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (!pred(text)) {
        if (Date.now() > deadline) throw new Error(`stream did not produce the expected text in time; got ${JSON.stringify(text)}`);
        const { done, value } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
      }
      return text;
    },
    async rest() {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return text;
        text += decoder.decode(value, { stream: true });
      }
    },
  };
}

async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("condition not met before the deadline");
    await new Promise((r) => setTimeout(r, 10));
  }
}

function lastWatch(id: string): { req: WatchCommandRequest; auth: string | null } | undefined {
  return watched.filter((w) => w.req.id === id).at(-1);
}

describe("NDJSON", () => {
  it("is the default: one {data: event} per line, the end event last", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_done/stream`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/x-ndjson");
    const lines = (await res.text()).split("\n");
    expect(lines.pop()).toBe("");
    expect(lines.map((l) => JSON.parse(l))).toEqual([
      { data: { output: { stream: "stdout", offset: 0, data: "hello\n" } } },
      { data: { output: { stream: "stdout", offset: 6, data: "world\n" } } },
      { data: { end: expect.objectContaining({ id: "cmd_done", status: "completed", exit_code: 0, stdout_bytes: 12, signal: null }) } },
    ]);
  });

  it("takes offset as a query parameter", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_done/stream?offset=6`);
    const lines = (await res.text()).trim().split("\n");
    expect(lastWatch("cmd_done")?.req.offset).toBe(6n);
    expect(lines).toHaveLength(2);
    expect(JSON.parse(lines[0]!).data.output.offset).toBe(6);
  });

  it("flushes each message as it arrives", async () => {
    gate = undefined;
    const res = await fetch(`${base}/v1/commands/cmd_gated/stream`);
    // The producer is blocked on the gate: the first line must already be here.
    const body = bodyReader(res);
    const first = await body.until((t) => t.includes("\n"));
    expect(JSON.parse(first.trim())).toEqual({ data: { output: { stream: "stdout", offset: 0, data: "first\n" } } });
    await waitFor(() => gate !== undefined);
    gate!();
    const all = await body.rest();
    const lines = all.trim().split("\n").map((l) => JSON.parse(l)).slice(1);
    expect(lines[0]).toEqual({ data: { output: { stream: "stderr", offset: 6, data: "second\n" } } });
    expect(Object.keys(lines[1].data)).toEqual(["end"]);
  });

  it("an error before the first message is an ordinary HTTP error", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_nope/stream`);
    expect(res.status).toBe(404);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    expect(await res.json()).toEqual({ error: { code: "not_found", message: 'command "cmd_nope" not found', field: "id" } });
  });

  it("an error after the stream started is a final {error} line", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_fail_mid/stream`);
    expect(res.status).toBe(200);
    const lines = (await res.text()).trim().split("\n").map((l) => JSON.parse(l));
    expect(lines).toEqual([
      { data: { output: { stream: "stdout", offset: 0, data: "partial\n" } } },
      { error: { code: "unavailable", message: "connection to the machine was lost", field: "machine_id" } },
    ]);
  });

  it("a stop of the service ends the stream with a final {error} line carrying the offset to resume from", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_stopping/stream`);
    expect(res.status).toBe(200);
    const lines = (await res.text()).trim().split("\n").map((l) => JSON.parse(l));
    expect(lines).toEqual([
      { data: { output: { stream: "stdout", offset: 0, data: "partial\n" } } },
      { error: { code: "unavailable", message: "the service is stopping", resume_offset: 8 } },
    ]);
  });

  it("a stop before the first message is a 503 carrying the offset to resume from", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_stopping_early/stream?offset=5`);
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ error: { code: "unavailable", message: "the service is stopping", resume_offset: 5 } });
  });

  it("Last-Event-ID at the end offset is not a reason for 204 over NDJSON", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_done/stream`, { headers: { "last-event-id": "12" } });
    expect(res.status).toBe(200);
    expect((await res.text()).trim().split("\n").map((l) => Object.keys(JSON.parse(l).data)[0])).toEqual(["end"]);
  });

  it("bad query parameters are 400 before anything streams", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_done/stream?offset=-x`);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: unknown }).error).toMatchObject({ code: "invalid_argument", field: "offset" });
  });
});

describe("Server-Sent Events", () => {
  const sse = { accept: "text/event-stream" };

  it("frames each message with event name, resume id and data, and ends with end", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_done/stream`, { headers: sse });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const text = await res.text();
    const events = text.split("\n\n").filter((e) => e !== "");
    expect(events[0]).toBe(`event: output\nid: 6\ndata: {"data":{"output":{"stream":"stdout","offset":0,"data":"hello\\n"}}}`);
    expect(events[1]).toBe(`event: output\nid: 12\ndata: {"data":{"output":{"stream":"stdout","offset":6,"data":"world\\n"}}}`);
    // The end advises a late reconnect (answered 204 below).
    expect(events[2]).toMatch(/^event: end\nid: 12\nretry: 60000\ndata: \{"data":\{"end":\{"id":"cmd_done",/);
    expect(events).toHaveLength(3);
  });

  it("Last-Event-ID resumes from that offset", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_done/stream`, { headers: { ...sse, "last-event-id": "6" } });
    const events = (await res.text()).split("\n\n").filter((e) => e !== "");
    expect(lastWatch("cmd_done")?.req.offset).toBe(6n);
    expect(events.map((e) => e.split("\n")[0])).toEqual(["event: output", "event: end"]);
    expect(events[0]).toContain('"offset":6');
  });

  it("a reconnect with Last-Event-ID at or after the end offset is 204, so EventSource stops", async () => {
    for (const id of ["12", "99"]) {
      const again = await fetch(`${base}/v1/commands/cmd_done/stream`, { headers: { ...sse, "last-event-id": id } });
      expect(again.status, id).toBe(204);
      expect(await again.text()).toBe("");
    }
    // Before the end offset the client still misses the end: it gets it.
    const before = await fetch(`${base}/v1/commands/cmd_done/stream`, { headers: { ...sse, "last-event-id": "11" } });
    expect(before.status).toBe(200);
    expect((await before.text()).split("\n\n").filter((e) => e !== "").map((e) => e.split("\n")[0])).toEqual(["event: end"]);
    // A new EventSource (no Last-Event-ID) replays the finished command.
    const fresh = await fetch(`${base}/v1/commands/cmd_done/stream?offset=12`, { headers: sse });
    expect(fresh.status).toBe(200);
  });

  it("a stop of the service is a `stopping` event whose id is the offset to resume from", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_stopping/stream`, { headers: sse });
    const events = (await res.text()).split("\n\n").filter((e) => e !== "");
    expect(events.at(-1)).toBe(
      'event: stopping\nid: 8\nretry: 2000\ndata: {"error":{"code":"unavailable","message":"the service is stopping","resume_offset":8}}',
    );
    // Before the first message too: a 200 stream, since any other status makes EventSource give up.
    const early = await fetch(`${base}/v1/commands/cmd_stopping_early/stream`, { headers: { ...sse, "last-event-id": "3" } });
    expect(early.status).toBe(200);
    expect(await early.text()).toBe(
      'event: stopping\nid: 3\nretry: 2000\ndata: {"error":{"code":"unavailable","message":"the service is stopping","resume_offset":3}}\n\n',
    );
  });

  it("a malformed Last-Event-ID is 400", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_done/stream`, { headers: { ...sse, "last-event-id": "abc" } });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { field: string } }).error.field).toBe("Last-Event-ID");
  });

  it("an error after the stream started is an error event", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_fail_mid/stream`, { headers: sse });
    const events = (await res.text()).split("\n\n").filter((e) => e !== "");
    expect(events.at(-1)).toBe(
      'event: error\ndata: {"error":{"code":"unavailable","message":"connection to the machine was lost","field":"machine_id"}}',
    );
  });

  it("sends keepalive comments while idle, and a closed connection aborts the call", async () => {
    const ac = new AbortController();
    const res = await fetch(`${base}/v1/commands/cmd_idle/stream`, { headers: sse, signal: ac.signal });
    expect(res.status).toBe(200);
    const text = await bodyReader(res).until((t) => t.split(": keepalive\n\n").length > 2);
    expect(text.startsWith(": keepalive\n\n")).toBe(true);
    ac.abort();
    await waitFor(() => aborted.has("cmd_idle"));
  });

  it("accepts the token as access_token, which never reaches the logs", async () => {
    const res = await fetch(`${base}/v1/commands/cmd_done/stream?access_token=tok_sse_secret`, { headers: sse });
    expect(res.status).toBe(200);
    await res.text();
    expect(lastWatch("cmd_done")?.auth).toBe("Bearer tok_sse_secret");
    expect(logs.some((l) => l.includes("/v1/commands/cmd_done/stream?access_token=[REDACTED]"))).toBe(true);
    expect(logs.join("\n")).not.toContain("tok_sse_secret");

    // The Authorization header wins over the query parameter.
    const res2 = await fetch(`${base}/v1/commands/cmd_done/stream?access_token=tok_other`, { headers: { ...sse, authorization: "Bearer tok_header" } });
    await res2.text();
    expect(lastWatch("cmd_done")?.auth).toBe("Bearer tok_header");
  });
});

describe("connection handling", () => {
  it("a client that disconnects mid-stream aborts the call", async () => {
    const req = httpRequest(`${base}/v1/commands/cmd_live/stream`);
    req.on("error", () => {});
    const res = await new Promise<IncomingMessage>((resolve) => req.on("response", resolve).end());
    await new Promise<void>((resolve) => res.once("data", () => resolve()));
    expect(aborted.has("cmd_live")).toBe(false);
    req.destroy();
    await waitFor(() => aborted.has("cmd_live"));
    const ok = await fetch(`${base}/v1/commands/cmd_done/stream`);
    expect(ok.status).toBe(200);
    await ok.text();
  });

  it("a slow reader slows the producer (memory stays bounded), and reading again resumes it", async () => {
    floodProduced = 0;
    const req = httpRequest(`${base}/v1/commands/cmd_flood/stream`);
    req.on("error", () => {});
    const res = await new Promise<IncomingMessage>((resolve) => req.on("response", resolve).end());
    res.pause();
    // Wait until the producer stalls: no progress over several polls.
    let last = -1;
    let stable = 0;
    const deadline = Date.now() + 15_000;
    while (stable < 8) {
      if (Date.now() > deadline) throw new Error(`producer never stalled (${floodProduced} chunks)`);
      await new Promise((r) => setTimeout(r, 50));
      stable = floodProduced === last ? stable + 1 : 0;
      last = floodProduced;
    }
    const stalledAt = floodProduced;
    // 64 KiB chunks: whatever fits into socket buffers, nothing like an unbounded queue.
    expect(stalledAt * 64 * 1024).toBeLessThan(64 * 1024 * 1024);
    res.resume();
    await waitFor(() => floodProduced > stalledAt + 100);
    req.destroy();
    await waitFor(() => aborted.has("cmd_flood"));
  });
});

describe("HTTP/2 (h2c)", () => {
  let h2app: FastifyInstance<Http2Server>;
  let h2base: string;

  beforeAll(async () => {
    h2app = Fastify({ http2: true });
    registerRestRoutes(h2app, { services: [CommandService], transport, sseKeepaliveMs: KEEPALIVE_MS });
    await h2app.listen({ host: "127.0.0.1", port: 0 });
    h2base = `http://127.0.0.1:${(h2app.server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await h2app.close();
  });

  it("streams NDJSON, and a cancelled stream aborts the call", async () => {
    const session = http2Connect(h2base);
    session.on("error", () => {});
    try {
      const done = session.request({ ":path": "/v1/commands/cmd_done/stream" });
      let status = 0;
      done.on("response", (h) => (status = Number(h[":status"])));
      let text = "";
      done.setEncoding("utf8");
      done.on("data", (c: string) => (text += c));
      await new Promise((resolve) => done.on("end", resolve));
      expect(status).toBe(200);
      expect(text.trim().split("\n").map((l) => Object.keys(JSON.parse(l).data)[0])).toEqual(["output", "output", "end"]);

      aborted.delete("cmd_live");
      const live = session.request({ ":path": "/v1/commands/cmd_live/stream", accept: "text/event-stream" });
      live.setEncoding("utf8");
      live.on("error", () => {});
      const first = await new Promise<string>((resolve) => live.once("data", resolve));
      expect(first).toContain("event: output");
      live.close(h2constants.NGHTTP2_CANCEL);
      await waitFor(() => aborted.has("cmd_live"));
    } finally {
      session.close();
    }
  });
});
