/**
 * The event loop lag sampler: a blocked loop shows up in the right bucket,
 * and stop() ends the sampling.
 */
import { expect, it } from "vitest";
import { EVENT_LOOP_LAG_BUCKETS, Histogram, sampleEventLoopLag } from "../../src/metrics.ts";

function count(h: Histogram, le: string): number {
  const line = h.render().split("\n").find((l) => l.includes(`le="${le}"`));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(" ") + 1));
}

async function until(cond: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setImmediate(r));
  }
}

it("observes a 120 ms stall above 100 ms, and nothing after stop()", async () => {
  const h = new Histogram("lag", "test", EVENT_LOOP_LAG_BUCKETS);
  const sampler = sampleEventLoopLag(h, 10);
  try {
    await until(() => count(h, "+Inf") > 0);
    const slowBefore = count(h, "+Inf") - count(h, "0.1");
    const end = performance.now() + 120;
    while (performance.now() < end) {
      // block the event loop
    }
    await until(() => count(h, "+Inf") - count(h, "0.1") > slowBefore);
  } finally {
    sampler.stop();
  }
  const n = count(h, "+Inf");
  const later = Date.now() + 50;
  await until(() => Date.now() > later);
  expect(count(h, "+Inf")).toBe(n);
});
