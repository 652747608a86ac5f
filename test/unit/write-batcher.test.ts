/** Group commit: batching per event-loop turn, order, size bound, per-write failures. */
import { describe, expect, it } from "vitest";
import { WriteBatcher } from "../../src/db/write-batcher.ts";

describe("WriteBatcher", () => {
  it("applies the writes of one turn as one batch, in submission order", async () => {
    const batches: number[][] = [];
    const b = new WriteBatcher<number, number>((ops) => {
      batches.push([...ops]);
      return ops.map((n) => n * 2);
    });
    const results = await Promise.all([1, 2, 3, 4].map((n) => b.submit(n)));
    expect(results).toEqual([2, 4, 6, 8]);
    expect(batches).toEqual([[1, 2, 3, 4]]);
    // Writes submitted while a batch runs go into the next one.
    const late = await Promise.all([b.submit(5), Promise.resolve().then(() => b.submit(6))]);
    expect(late).toEqual([10, 12]);
    expect(batches.at(-1)).toEqual([5, 6]);
    expect(b.stats()).toMatchObject({ batches: 2, writes: 6, queued: 0, largestBatch: 4 });
  });

  it("bounds a batch and runs one batch at a time", async () => {
    let running = 0;
    let most = 0;
    const sizes: number[] = [];
    const b = new WriteBatcher<number, void>(
      async (ops) => {
        running++;
        most = Math.max(most, running);
        sizes.push(ops.length);
        await new Promise((r) => setTimeout(r, 2));
        running--;
        return ops.map(() => undefined);
      },
      { maxBatch: 3 },
    );
    await Promise.all(Array.from({ length: 8 }, (_, i) => b.submit(i)));
    expect(sizes).toEqual([3, 3, 2]);
    expect(most).toBe(1);
  });

  it("fails a write alone when the executor says so, and every write of a batch that throws", async () => {
    const b = new WriteBatcher<string, string>((ops) => {
      if (ops.includes("boom")) throw new Error("connection lost");
      return ops.map((o) => (o === "bad" ? new Error(`bad write ${o}`) : o.toUpperCase()));
    });
    const [a, bad, c] = await Promise.allSettled([b.submit("a"), b.submit("bad"), b.submit("c")]);
    expect(a).toEqual({ status: "fulfilled", value: "A" });
    expect(bad.status).toBe("rejected");
    expect(c).toEqual({ status: "fulfilled", value: "C" });
    const all = await Promise.allSettled([b.submit("x"), b.submit("boom")]);
    expect(all.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    // The batcher keeps working afterwards.
    expect(await b.submit("y")).toBe("Y");
    await b.drain();
    expect(b.stats().queued).toBe(0);
  });
});
