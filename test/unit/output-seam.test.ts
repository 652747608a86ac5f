/** Joining stored output: the seam of a truncated stream is marked where the middle was dropped. */
import { describe, expect, it } from "vitest";
import { FlushClock } from "../../src/exec/flush-clock.ts";
import { OutputLog } from "../../src/exec/output-log.ts";
import { joinStoredOutput, seamMarker } from "../../src/exec/output-seam.ts";
import type { CommandStore, OutputChunkRecord, OutputCounters } from "../../src/exec/ports.ts";

function memoryStore() {
  const chunks = new Map<number, OutputChunkRecord>();
  let counters: OutputCounters | null = null;
  const store = {
    async appendOutput(_id: string, add: OutputChunkRecord[], drop: number[], c: OutputCounters) {
      for (const ch of add) chunks.set(ch.offset, ch);
      for (const o of drop) chunks.delete(o);
      counters = c;
    },
    async readOutput() {
      return [...chunks.values()].sort((a, b) => a.offset - b.offset);
    },
  } as unknown as CommandStore;
  return { store, read: () => [...chunks.values()].sort((a, b) => a.offset - b.offset), counters: () => counters! };
}

const lines = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}${i + 1}\n`).join("");

/** Writes both streams interleaved in small pieces through a real OutputLog. */
async function storeInterleaved(cap: number, out: string, err: string) {
  const m = memoryStore();
  const log = OutputLog.fresh(m.store, "cmd_x", { capPerStream: cap, clock: new FlushClock({ minIntervalMs: 1 }) });
  const step = 37;
  for (let i = 0; i < Math.max(out.length, err.length); i += step) {
    if (i < out.length) await log.append("stdout", Buffer.from(out.slice(i, i + step)));
    if (i < err.length) await log.append("stderr", Buffer.from(err.slice(i, i + step)));
  }
  await log.flush();
  log.close();
  return m;
}

function checkSeam(joined: string, full: string): number {
  const marker = /\n… \[([\d,]+) bytes omitted\] …\n/g;
  const found = [...joined.matchAll(marker)];
  expect(found).toHaveLength(1);
  const [head, tail] = joined.split(found[0]![0]);
  const omitted = Number(found[0]![1]!.replace(/,/g, ""));
  expect(full.startsWith(head!)).toBe(true);
  expect(full.endsWith(tail!)).toBe(true);
  expect(head!.length + omitted + tail!.length).toBe(full.length);
  return omitted;
}

describe("joinStoredOutput", () => {
  it("formats the marker with grouped digits on a line of its own", () => {
    expect(seamMarker(12345678).toString()).toBe("\n… [12,345,678 bytes omitted] …\n");
  });

  it("leaves output that was not truncated byte for byte", async () => {
    const m = await storeInterleaved(1 << 20, lines("o", 100), lines("e", 50));
    const j = joinStoredOutput(m.read(), m.counters(), 1 << 19);
    expect(j.stdout.toString()).toBe(lines("o", 100));
    expect(j.stderr.toString()).toBe(lines("e", 50));
  });

  it("marks the seam of each truncated stream where its middle was dropped, with both streams interleaved", async () => {
    const out = lines("out-", 3000);
    const err = lines("err-", 2000);
    const m = await storeInterleaved(4096, out, err);
    const c = m.counters();
    expect(c.stdoutTruncated && c.stderrTruncated).toBe(true);
    const j = joinStoredOutput(m.read(), c, 2048);
    expect(checkSeam(j.stdout.toString(), out)).toBeGreaterThan(0);
    expect(checkSeam(j.stderr.toString(), err)).toBeGreaterThan(0);
  });

  it("finds the seam from the gap when the head size is not the configured one (the cap changed)", async () => {
    const out = lines("", 5000);
    const m = await storeInterleaved(4096, out, "only a little on stderr\n");
    const c = m.counters();
    expect(c.stdoutTruncated).toBe(true);
    const j = joinStoredOutput(m.read(), c, 999_999);
    checkSeam(j.stdout.toString(), out);
    expect(j.stderr.toString()).toBe("only a little on stderr\n");
  });
});
