import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as S } from "../../src/gen/grpc/health/v1/health_pb.js";
import { createHealthService } from "../../src/server/health.ts";
import type { HealthService } from "../../src/server/health.ts";

function clientFor(health: HealthService) {
  return createClient(Health, createRouterTransport((router) => health.register(router)));
}

describe("createHealthService", () => {
  it("starts with the server as a whole SERVING", async () => {
    const health = createHealthService();
    expect(health.getStatus("")).toBe("SERVING");
    expect((await clientFor(health).check({ service: "" })).status).toBe(S.SERVING);
  });

  it("takes initial statuses", async () => {
    const health = createHealthService({ initial: { "": "NOT_SERVING", "a.B": "SERVING" } });
    const client = clientFor(health);
    expect((await client.check({ service: "" })).status).toBe(S.NOT_SERVING);
    expect((await client.check({ service: "a.B" })).status).toBe(S.SERVING);
  });

  it("answers NOT_FOUND for a name that was never set", async () => {
    const err = await clientFor(createHealthService())
      .check({ service: "x.Y" })
      .catch((e: unknown) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.NotFound);
  });

  it("lists every known status", async () => {
    const health = createHealthService();
    health.setStatus("a.B", "NOT_SERVING");
    const { statuses } = await clientFor(health).list({});
    expect(Object.fromEntries(Object.entries(statuses).map(([k, v]) => [k, v.status]))).toEqual({
      "": S.SERVING,
      "a.B": S.NOT_SERVING,
    });
  });

  it("shutdown turns everything NOT_SERVING, ends Watch streams and ignores later updates", async () => {
    const health = createHealthService();
    const client = clientFor(health);
    const seen: S[] = [];
    const watching = (async () => {
      for await (const res of client.watch({ service: "" })) {
        seen.push(res.status);
        if (seen.length === 1) health.shutdown();
      }
    })();
    await watching; // ends by itself: shutdown completes the stream
    expect(seen).toEqual([S.SERVING, S.NOT_SERVING]);
    health.setStatus("", "SERVING");
    expect(health.getStatus("")).toBe("NOT_SERVING");
    expect((await client.check({ service: "" })).status).toBe(S.NOT_SERVING);
  });

  it("stops notifying a watcher that hung up", async () => {
    const health = createHealthService();
    const client = clientFor(health);
    const abort = new AbortController();
    const stream = client.watch({ service: "" }, { signal: abort.signal });
    const it = stream[Symbol.asyncIterator]();
    expect((await it.next()).value?.status).toBe(S.SERVING);
    abort.abort();
    await expect(it.next()).rejects.toMatchObject({ code: Code.Canceled });
    // No listener left behind: further updates must not throw or leak.
    health.setStatus("", "NOT_SERVING");
    expect(health.getStatus("")).toBe("NOT_SERVING");
  });
});
