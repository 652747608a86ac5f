/**
 * The typed client (`fleetrun/client`) against the real service and sshd
 * fleet: every protocol, auth and deadlines, live async iteration, and resume
 * without gap or duplicate after the connection is cut mid-stream.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Code, CommandStatus, ConnectError, createFleetrunClient } from "fleetrun/client";
import type { CommandEvent, FleetrunClient, FleetrunClientOptions } from "fleetrun/client";
import { eventually, registerMachine, startService, type TestService } from "../fixtures/service.ts";
import { startCutProxy } from "../fixtures/cut-proxy.ts";

const fleet = inject("sshFleet");

function text(events: CommandEvent[]): string {
  return events
    .filter((e) => e.event.case === "output")
    .map((e) => Buffer.from((e.event.value as { data: Uint8Array }).data).toString())
    .join("");
}

const variants: { name: string; opts: Pick<FleetrunClientOptions, "protocol" | "httpVersion"> }[] = [
  { name: "Connect over HTTP/1.1", opts: { protocol: "connect" } },
  { name: "Connect over h2c", opts: { protocol: "connect", httpVersion: "2" } },
  { name: "gRPC", opts: { protocol: "grpc" } },
  { name: "gRPC-Web", opts: { protocol: "grpc-web" } },
];

describe("fleetrun/client", () => {
  let svc: TestService;
  let machine: string;
  const clients: FleetrunClient[] = [];
  const client = (opts: Partial<FleetrunClientOptions> = {}): FleetrunClient => {
    const c = createFleetrunClient({ baseUrl: svc.url, token: svc.token, ...opts });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    svc = await startService({ db: "sqlite" });
    machine = await registerMachine(svc, fleet, { index: 6, user: "root" });
  });
  afterAll(async () => {
    for (const c of clients) c.close();
    await svc?.close();
  });

  for (const v of variants) {
    it(`runs Execute over ${v.name}: exit code, stdout and stderr, typed`, async () => {
      const fleetrun = client(v.opts);
      const cmd = await fleetrun.commands.execute({ machineId: machine, command: "echo out; echo err >&2; exit 7" });
      expect(cmd.status).toBe(CommandStatus.COMPLETED);
      expect(cmd.exitCode).toBe(7);
      expect(Buffer.from(cmd.stdout).toString()).toBe("out\n");
      expect(Buffer.from(cmd.stderr).toString()).toBe("err\n");
      const again = await fleetrun.commands.getCommand({ id: cmd.id });
      expect(again.requestedBy).toBe("admin");
    });
  }

  it("sends the token (a missing or wrong one is unauthenticated; health needs none)", async () => {
    const anonymous = client({ token: undefined });
    await expect(anonymous.commands.getCommand({ id: "cmd_x" })).rejects.toMatchObject({ code: Code.Unauthenticated });
    await expect(client({ token: "wrong-token-0123456789" }).machines.listMachines({})).rejects.toMatchObject({ code: Code.Unauthenticated });
    expect((await anonymous.health.check({})).status).toBe(1); // SERVING
    let calls = 0;
    const rotating = client({ token: () => (calls++, svc.token) });
    await rotating.machines.listMachines({});
    expect(calls).toBe(1);
  });

  it("puts the default deadline on unary calls: an expired Execute is deadline_exceeded and its command cancelled", async () => {
    const fleetrun = client({ timeoutMs: 1500 });
    const marker = `deadline-${Date.now()}`;
    const t0 = Date.now();
    const err = await fleetrun.commands.execute({ machineId: machine, command: `sleep 20 # ${marker}` }).catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.DeadlineExceeded);
    expect(Date.now() - t0).toBeLessThan(8000);
    const history = await fleetrun.commands.listMachineCommands({ machineId: machine, limit: 20 });
    const item = history.data.find((h) => h.command.includes(marker));
    expect(item).toBeDefined();
    await eventually(async () => (await fleetrun.commands.getCommand({ id: item!.id })).status === CommandStatus.CANCELLED, 15_000, "cancelled");
  });

  it("iterates ExecuteAsync live: started first, output while it runs, end last", async () => {
    const fleetrun = client();
    const stream = fleetrun.executeAsync({ machineId: machine, command: "echo one; sleep 1.5; echo two; exit 3" });
    const seen: { at: number; e: CommandEvent }[] = [];
    for await (const e of stream) seen.push({ at: Date.now(), e });
    expect(seen[0]!.e.event.case).toBe("started");
    expect(stream.commandId).toMatch(/^cmd_/);
    const last = seen.at(-1)!.e;
    expect(last.event.case).toBe("end");
    expect(last.event.case === "end" && last.event.value.exitCode).toBe(3);
    expect(text(seen.map((s) => s.e))).toBe("one\ntwo\n");
    const first = seen.find((s) => s.e.event.case === "output")!;
    expect(seen.at(-1)!.at - first.at).toBeGreaterThan(1000); // "one" arrived before the command ended
    expect(stream.offset).toBe(8n);
    expect(stream.reconnects).toBe(0);
  });

  it("watch() follows from an offset and ends with the command", async () => {
    const fleetrun = client();
    const done = await fleetrun.commands.execute({ machineId: machine, command: "printf 'abcdef'" });
    const events: CommandEvent[] = [];
    for await (const e of fleetrun.watch(done.id, { offset: 2 })) events.push(e);
    expect(text(events)).toBe("cdef");
    expect(events.at(-1)!.event.case).toBe("end");
  });

  for (const v of [variants[0]!, variants[2]!]) {
    it(`resumes after the connection is cut mid-stream (${v.name}): every line once, in order`, async () => {
      const proxy = await startCutProxy(svc.port);
      try {
        const reconnects: bigint[] = [];
        const fleetrun = client({ ...v.opts, baseUrl: proxy.url, resume: { initialDelayMs: 50 } });
        const stream = fleetrun.executeAsync(
          { machineId: machine, command: "for i in $(seq 1 30); do echo line-$i; sleep 0.1; done; echo bye >&2" },
          { onReconnect: (info) => reconnects.push(info.offset) },
        );
        const events: CommandEvent[] = [];
        let cut = false;
        for await (const e of stream) {
          events.push(e);
          if (!cut && text(events).includes("line-5\n")) {
            cut = true;
            expect(proxy.connections()).toBeGreaterThan(0);
            proxy.cutAll();
          }
        }
        expect(cut).toBe(true);
        expect(stream.reconnects).toBeGreaterThanOrEqual(1);
        expect(reconnects[0]).toBeGreaterThan(0n);
        const expected = Array.from({ length: 30 }, (_, i) => `line-${i + 1}\n`).join("") + "bye\n";
        expect(text(events)).toBe(expected);
        // Offsets are contiguous: no gap, no duplicate.
        let at = 0n;
        for (const e of events) {
          if (e.event.case !== "output") continue;
          expect(e.event.value.offset).toBe(at);
          at += BigInt(e.event.value.data.length);
        }
        const end = events.at(-1)!;
        expect(end.event.case).toBe("end");
        expect(end.event.case === "end" && end.event.value.exitCode).toBe(0);
        expect(events.filter((e) => e.event.case === "started")).toHaveLength(1);
      } finally {
        await proxy.close();
      }
    }, 90_000); // a 3 s command plus reconnects; room for a busy machine
  }

  it("does not retry errors of the request itself", async () => {
    const fleetrun = client();
    const events: CommandEvent[] = [];
    const err = await (async () => {
      for await (const e of fleetrun.watch("cmd_doesnotexist")) events.push(e);
    })().catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.NotFound);
    expect(events).toHaveLength(0);
  });
});
