/**
 * Async commands: live streaming (grpc-js, Connect, NDJSON, SSE), follow
 * from an offset, cancel of whole process trees, against real OpenSSH.
 */
import http from "node:http";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { CommandService, CommandStatus, OutputStream } from "../../src/gen/fleetrun/v1/command_pb.js";
import { GrpcClient, eventually, processesWith, registerMachine, startService, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");

function unique(): string {
  return `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
}

interface Line {
  at: number;
  json: any;
}

/** Reads an NDJSON or SSE response, recording when each piece arrived. */
function readStream(url: string, headers: Record<string, string>): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string; lines: Line[] }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers }, (res) => {
      let body = "";
      const lines: Line[] = [];
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        body += d;
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.startsWith("{")) lines.push({ at: Date.now(), json: JSON.parse(line) });
        }
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, lines }));
      res.on("error", reject);
    });
    req.on("error", reject);
  });
}

/** Parses SSE text into events. */
function sseEvents(body: string): { event: string; id: string | undefined; retry: string | undefined; data: any }[] {
  return body
    .split("\n\n")
    .filter((b) => b.includes("data:"))
    .map((block) => {
      const f: Record<string, string> = {};
      for (const line of block.split("\n")) {
        const i = line.indexOf(":");
        if (i > 0) f[line.slice(0, i)] = line.slice(i + 1).trimStart();
      }
      return { event: f.event ?? "message", id: f.id, retry: f.retry, data: JSON.parse(f.data!) };
    });
}

describe("async commands", () => {
  let svc: TestService;
  let root: string;
  let user: string;

  beforeAll(async () => {
    svc = await startService({ db: "sqlite", env: { FLEETRUN_KILL_GRACE_MS: "1500" } });
    root = await registerMachine(svc, fleet, { index: 3, user: "root" });
    user = await registerMachine(svc, fleet, { index: 4, user: "frtest" });
  });
  afterAll(async () => {
    await svc?.close();
  });

  const start = async (body: Record<string, unknown>) => {
    const r = await svc.rest("POST", "/v1/commands/async", body);
    expect(r.status).toBe(202);
    expect(["queued", "running"]).toContain(r.body.data.status);
    expect(Object.keys(r.body.data).sort()).toEqual(["id", "status"]);
    return r.body.data.id as string;
  };
  const get = async (id: string) => (await svc.rest("GET", `/v1/commands/${id}`)).body.data;
  const waitStatus = (id: string, status: string, ms = 15_000) => eventually(async () => (await get(id)).status === status, ms, `${id} ${status}`);

  it("returns at once, shows output so far while running, and the full result at the end", async () => {
    const t0 = Date.now();
    const id = await start({ machine_id: root, command: "echo first; sleep 4; echo second; exit 4" });
    expect(Date.now() - t0).toBeLessThan(3000);
    const partial = await eventually(async () => {
      const c = await get(id);
      return c.status === "running" && c.stdout === "first\n" ? c : null;
    });
    expect(partial.exit_code).toBeNull();
    expect(partial.finished_at).toBeNull();
    await waitStatus(id, "completed");
    const done = await get(id);
    expect(done).toMatchObject({ stdout: "first\nsecond\n", exit_code: 4, stdout_bytes: 13 });
  });

  it("streams ExecuteAsync live over grpc-js: id first, one line per second, the terminal command last", async () => {
    const client = new GrpcClient(svc.url, svc.token);
    try {
      const events: { at: number; msg: any }[] = [];
      const stream = client.stream(CommandService.method.executeAsync, { machineId: root, command: "for i in $(seq 5); do echo $i; sleep 1; done" });
      await new Promise<void>((resolve, reject) => {
        stream.on("data", (msg) => events.push({ at: Date.now(), msg }));
        stream.on("end", resolve);
        stream.on("error", reject);
      });
      expect(events[0]!.msg.event.case).toBe("started");
      expect(events[0]!.msg.event.value.id).toMatch(/^cmd_/);
      const outputs = events.filter((e) => e.msg.event.case === "output");
      const text = outputs.map((e) => Buffer.from(e.msg.event.value.data).toString()).join("");
      expect(text).toBe("1\n2\n3\n4\n5\n");
      // Offsets are contiguous in the combined log.
      let expected = 0;
      for (const e of outputs) {
        expect(Number(e.msg.event.value.offset)).toBe(expected);
        expect(e.msg.event.value.stream).toBe(OutputStream.STDOUT);
        expected += e.msg.event.value.data.length;
      }
      const last = events.at(-1)!;
      expect(last.msg.event.case).toBe("end");
      expect(last.msg.event.value.status).toBe(CommandStatus.COMPLETED);
      expect(last.msg.event.value.exitCode).toBe(0);
      // Live, not at the end: the first line arrived seconds before the end.
      const firstLine = outputs[0]!.at;
      expect(last.at - firstLine).toBeGreaterThan(3000);
      expect(outputs.length).toBeGreaterThanOrEqual(4);
    } finally {
      client.close();
    }
  });

  it("streams ExecuteAsync live over Connect (HTTP/2)", async () => {
    const client = createClient(CommandService, createConnectTransport({ baseUrl: svc.url, httpVersion: "2" }));
    const arrivals: number[] = [];
    let text = "";
    let end: any;
    for await (const ev of client.executeAsync(
      { machineId: user, command: "for i in 1 2 3 4; do echo line$i; sleep 1; done" },
      { headers: { authorization: `Bearer ${svc.token}` } },
    )) {
      if (ev.event.case === "output") {
        arrivals.push(Date.now());
        text += Buffer.from(ev.event.value.data).toString();
      }
      if (ev.event.case === "end") end = ev.event.value;
    }
    expect(text).toBe("line1\nline2\nline3\nline4\n");
    expect(end.status).toBe(CommandStatus.COMPLETED);
    expect(arrivals.at(-1)! - arrivals[0]!).toBeGreaterThan(2000);
  });

  it("follows over NDJSON from an offset, live, and a reconnect with the last offset misses nothing", async () => {
    const id = await start({ machine_id: root, command: "for i in 1 2 3 4 5 6; do echo out$i; echo err$i >&2; sleep 0.4; done" });
    const auth = { authorization: `Bearer ${svc.token}` };
    const first = await readStream(`${svc.url}/v1/commands/${id}/stream`, auth);
    expect(first.status).toBe(200);
    expect(first.headers["content-type"]).toContain("application/x-ndjson");
    const outputs = first.lines.filter((l) => l.json.data.output).map((l) => l.json.data.output);
    const end = first.lines.at(-1)!.json.data.end;
    expect(end.status).toBe("completed");
    const combined = outputs.map((o: any) => o.data).join("");
    expect(combined.split("\n").filter(Boolean).sort()).toEqual(
      ["out1", "out2", "out3", "out4", "out5", "out6", "err1", "err2", "err3", "err4", "err5", "err6"].sort(),
    );
    // Resume from every offset boundary: exactly the rest, no duplicate, no gap.
    const total = end.stdout_bytes + end.stderr_bytes;
    for (const o of outputs.slice(0, 4)) {
      const from = o.offset + Buffer.byteLength(o.data);
      const again = await readStream(`${svc.url}/v1/commands/${id}/stream?offset=${from}`, auth);
      const rest = again.lines.filter((l) => l.json.data.output).map((l) => l.json.data.output);
      expect(rest[0]?.offset ?? total).toBe(from);
      expect(rest.map((r: any) => r.data).join("")).toBe(Buffer.from(combined).subarray(from).toString());
      expect(again.lines.at(-1)!.json.data.end.id).toBe(id);
    }
  });

  it("follows over SSE with ids, honours Last-Event-ID, and answers a reconnect after the end with 204", async () => {
    const id = await start({ machine_id: root, command: "for i in 1 2 3; do echo s$i; sleep 0.3; done" });
    const headers = { accept: "text/event-stream", authorization: `Bearer ${svc.token}` };
    const r = await readStream(`${svc.url}/v1/commands/${id}/stream`, headers);
    expect(r.headers["content-type"]).toContain("text/event-stream");
    const events = sseEvents(r.body);
    const outs = events.filter((e) => e.event === "output");
    expect(outs.map((e) => e.data.data.output?.data ?? e.data.output?.data).join("")).toBe("s1\ns2\ns3\n");
    expect(events.at(-1)!.event).toBe("end");
    const firstId = outs[0]!.id!;
    const resumed = sseEvents((await readStream(`${svc.url}/v1/commands/${id}/stream`, { ...headers, "last-event-id": firstId })).body);
    const resumedText = resumed
      .filter((e) => e.event === "output")
      .map((e) => e.data.data?.output?.data ?? e.data.output?.data)
      .join("");
    expect(resumedText).toBe("s1\ns2\ns3\n".slice(Number(firstId)));
    const endId = events.at(-1)!.id!;
    expect(endId).toBe(String(Buffer.byteLength("s1\ns2\ns3\n")));
    expect(events.at(-1)!.retry).toBe("60000");
    // What an EventSource left open after `end` sends: 204 tells it to stop reconnecting.
    const afterEnd = await readStream(`${svc.url}/v1/commands/${id}/stream`, { ...headers, "last-event-id": endId });
    expect(afterEnd.status).toBe(204);
    expect(afterEnd.body).toBe("");
    // Short of the end offset, the rest and the end come as usual.
    const beforeEnd = sseEvents((await readStream(`${svc.url}/v1/commands/${id}/stream`, { ...headers, "last-event-id": String(Number(endId) - 3) })).body);
    expect(beforeEnd.map((e) => e.event)).toEqual(["output", "end"]);
    // EventSource cannot set headers: the token may travel as access_token.
    const viaQuery = await readStream(`${svc.url}/v1/commands/${id}/stream?access_token=${svc.token}`, { accept: "text/event-stream" });
    expect(viaQuery.status).toBe(200);
  });

  for (const who of ["root", "frtest", "run-as"] as const) {
    it(`cancel kills the whole process group (${who}), keeps partial output, and is idempotent`, async () => {
      const mark = `401.${unique()}`;
      const body: Record<string, unknown> = {
        machine_id: who === "root" ? root : user,
        command: `echo begun; sh -c 'sleep ${mark} & sleep ${mark} & wait'`,
      };
      if (who === "run-as") body.user = "frrunas";
      const id = await start(body);
      // Two sleeps plus the `sh -c` whose command line carries the marker too.
      await eventually(() => processesWith(mark).length === 3, 10_000, "both sleeps running");
      await eventually(async () => (await get(id)).stdout === "begun\n");
      const c1 = await svc.rest("DELETE", `/v1/commands/${id}`);
      expect(c1.status).toBe(200);
      expect(c1.body).toEqual({ data: { cancelled: true } });
      await waitStatus(id, "cancelled");
      const done = await get(id);
      expect(done.signal).toBe("SIGTERM");
      expect(done.exit_code).toBeNull();
      expect(done.stdout).toBe("begun\n");
      await eventually(() => processesWith(mark).length === 0, 10_000, "no survivor");
      // Repeating the cancel of a cancelled command answers as the first one did.
      const again = await svc.rest("DELETE", `/v1/commands/${id}`);
      expect(again.status).toBe(200);
      expect(again.body).toEqual({ data: { cancelled: true } });
      expect((await get(id)).status).toBe("cancelled");
    });
  }

  it("a tree that traps SIGTERM is killed after the grace period; cancelling twice is harmless", async () => {
    const mark = `402.${unique()}`;
    const id = await start({ machine_id: user, command: `trap '' TERM; sleep ${mark} & sleep ${mark} & wait` });
    await eventually(() => processesWith(mark).length === 2, 10_000, "both sleeps running");
    expect((await svc.rest("DELETE", `/v1/commands/${id}`)).status).toBe(200);
    expect((await svc.rest("DELETE", `/v1/commands/${id}`)).status).toBe(200);
    expect(processesWith(mark).length).toBe(2); // still alive during the grace period
    await waitStatus(id, "cancelled");
    expect((await get(id)).signal).toBe("SIGKILL");
    await eventually(() => processesWith(mark).length === 0, 10_000, "no survivor");
  });

  it("unknown commands are 404 for get, stream and cancel", async () => {
    for (const [m, p] of [
      ["GET", "/v1/commands/cmd_nope"],
      ["GET", "/v1/commands/cmd_nope/stream"],
      ["DELETE", "/v1/commands/cmd_nope"],
    ] as const) {
      const r = await svc.rest(m, p);
      expect(r.status, p).toBe(404);
      expect(r.body.error.code).toBe("not_found");
    }
  });

  it("bounds stored output, keeps head and tail, and a follower inside the dropped middle gets skipped", async () => {
    const local = await startService({ db: "sqlite", env: { FLEETRUN_OUTPUT_CAP_BYTES: "4096" } });
    try {
      const r = await local.rest("POST", "/v1/commands", { machine_id: "mach_local", command: "seq 1 5000" });
      const c = r.body.data;
      expect(c.stdout_truncated).toBe(true);
      expect(c.stdout_bytes).toBe(23893);
      // Head and tail are joined by a marker line saying how much is missing between them.
      const full = Array.from({ length: 5000 }, (_, i) => `${i + 1}\n`).join("");
      const seam = /\n… \[([\d,]+) bytes omitted\] …\n/.exec(c.stdout);
      expect(seam, c.stdout.slice(2000, 2200)).not.toBeNull();
      const [head, tail, ...more] = (c.stdout as string).split(seam![0]);
      expect(more).toEqual([]);
      expect(head!.length + tail!.length).toBeLessThanOrEqual(4096);
      expect(head!.length + tail!.length + Number(seam![1]!.replace(/,/g, ""))).toBe(23893);
      expect(full.startsWith(head!)).toBe(true);
      expect(full.endsWith(tail!)).toBe(true);
      expect(head!.startsWith("1\n2\n3\n")).toBe(true);
      expect(tail!.endsWith("4999\n5000\n")).toBe(true);
      const s = await readStream(`${local.url}/v1/commands/${c.id}/stream?offset=3000`, { authorization: `Bearer ${local.token}` });
      const first = s.lines[0]!.json.data;
      expect(first.skipped).toBeGreaterThan(0);
      const next = s.lines[1]!.json.data.output;
      expect(next.offset).toBe(3000 + first.skipped);
      expect(s.lines.at(-1)!.json.data.end.id).toBe(c.id);
    } finally {
      await local.close();
    }
  });
});
