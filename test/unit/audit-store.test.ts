/** The audit store's write path with a fake writer: batching, order, retries and lost records. */
import { describe, expect, it } from "vitest";
import { SqlAuditLog } from "../../src/db/audit-store.ts";
import type { AuditWriter, TimedEvent } from "../../src/db/audit-writer.ts";
import type { DbContext } from "../../src/db/db-context.ts";

const NO_DB = { driver: "sqlite", fork: () => { throw new Error("no reads here"); } } as unknown as DbContext;

function fakeWriter(failures: number): AuditWriter & { batches: string[][]; calls: number } {
  const w = {
    batches: [] as string[][],
    calls: 0,
    async append(events: readonly TimedEvent[]) {
      w.calls++;
      if (w.calls <= failures) throw new Error("connection lost");
      w.batches.push(events.map((e) => e.event.action));
    },
    async prune() {
      return 0;
    },
  };
  return w;
}

describe("SqlAuditLog writes", () => {
  it("groups the records of one event-loop turn into one batch, in order", async () => {
    const w = fakeWriter(0);
    const log = new SqlAuditLog(NO_DB, w);
    for (let i = 0; i < 5; i++) log.record({ actor: "a", action: `a${i}`, outcome: "ok" });
    await log.drain();
    log.record({ actor: "a", action: "later", outcome: "ok" });
    await log.drain();
    expect(w.batches).toEqual([["a0", "a1", "a2", "a3", "a4"], ["later"]]);
  });

  it("retries a failed batch and keeps the order of the batches behind it", async () => {
    const w = fakeWriter(2);
    const log = new SqlAuditLog(NO_DB, w);
    const lost: number[] = [];
    log.onWriteError((_e, n) => lost.push(n));
    log.record({ actor: "a", action: "first", outcome: "ok" });
    await new Promise((r) => setImmediate(r));
    log.record({ actor: "a", action: "second", outcome: "ok" });
    await log.drain();
    expect(w.batches).toEqual([["first"], ["second"]]);
    expect(lost).toEqual([]);
  });

  it("reports records it could not write after the retries, and goes on", async () => {
    const w = fakeWriter(4);
    const log = new SqlAuditLog(NO_DB, w);
    const lost: number[] = [];
    log.onWriteError((_e, n) => lost.push(n));
    log.record({ actor: "a", action: "x", outcome: "ok" });
    log.record({ actor: "a", action: "y", outcome: "ok" });
    await log.drain();
    expect(lost).toEqual([2]);
    log.record({ actor: "a", action: "z", outcome: "ok" });
    await log.drain();
    expect(w.batches).toEqual([["z"]]);
  });
});
