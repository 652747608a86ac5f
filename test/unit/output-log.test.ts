/** The combined output log: offsets, head/tail truncation, coalescing, backpressure. */
import { describe, expect, it } from "vitest";
import { FlushClock } from "../../src/exec/flush-clock.ts";
import { OutputLog } from "../../src/exec/output-log.ts";
import type { CommandStore, OutputChunkRecord, OutputCounters } from "../../src/exec/ports.ts";

/** Just enough of a CommandStore to hold chunks in memory. */
function memoryStore() {
  const chunks = new Map<number, OutputChunkRecord>();
  let counters: OutputCounters | null = null;
  let writes = 0;
  const store = {
    async appendOutput(_id: string, add: OutputChunkRecord[], drop: number[], c: OutputCounters) {
      writes++;
      for (const ch of add) chunks.set(ch.offset, ch);
      for (const o of drop) chunks.delete(o);
      counters = c;
    },
    async readOutput(_id: string, from: number) {
      return [...chunks.values()].filter((c) => c.offset + c.data.length > from).sort((a, b) => a.offset - b.offset);
    },
  } as unknown as CommandStore;
  return { store, chunks, counters: () => counters, writes: () => writes };
}

function text(chunks: Map<number, OutputChunkRecord>, stream: "stdout" | "stderr"): string {
  return [...chunks.values()]
    .filter((c) => c.stream === stream)
    .sort((a, b) => a.offset - b.offset)
    .map((c) => c.data.toString())
    .join("");
}

describe("OutputLog", () => {
  it("assigns contiguous offsets across both streams in arrival order and coalesces small writes", async () => {
    const m = memoryStore();
    const log = OutputLog.fresh(m.store, "cmd_x", { capPerStream: 1 << 20, clock: new FlushClock() });
    await log.append("stdout", Buffer.from("ab"));
    await log.append("stdout", Buffer.from("cd"));
    await log.append("stderr", Buffer.from("E"));
    await log.append("stdout", Buffer.from("ef"));
    await log.flush();
    const all = [...m.chunks.values()].sort((a, b) => a.offset - b.offset);
    expect(all.map((c) => [c.offset, c.stream, c.data.toString()])).toEqual([
      [0, "stdout", "abcd"],
      [4, "stderr", "E"],
      [5, "stdout", "ef"],
    ]);
    expect(m.counters()).toEqual({ stdoutBytes: 6, stderrBytes: 1, logBytes: 7, stdoutTruncated: false, stderrTruncated: false });
    expect(m.writes()).toBe(1);
  });

  it("keeps the head and the tail of each stream within the cap and drops the middle", async () => {
    const m = memoryStore();
    const cap = 1024;
    const log = OutputLog.fresh(m.store, "cmd_x", { capPerStream: cap, clock: new FlushClock() });
    let all = "";
    for (let i = 0; i < 2000; i++) {
      const line = `line ${i}\n`;
      all += line;
      await log.append("stdout", Buffer.from(line));
      if (i % 100 === 0) await log.append("stderr", Buffer.from("e"));
    }
    await log.flush();
    const out = text(m.chunks, "stdout");
    expect(out.length).toBeLessThanOrEqual(cap);
    expect(out.startsWith(all.slice(0, 512))).toBe(true);
    expect(all.endsWith(out.slice(512))).toBe(true);
    expect(out.length).toBeGreaterThan(cap - 200);
    expect(m.counters()!.stdoutTruncated).toBe(true);
    expect(m.counters()!.stdoutBytes).toBe(Buffer.byteLength(all));
    expect(m.counters()!.stderrTruncated).toBe(false);
    expect(text(m.chunks, "stderr")).toBe("e".repeat(20));
    // Every stored chunk still sits at its original offset of the combined log.
    const offsets = [...m.chunks.keys()].sort((a, b) => a - b);
    expect(offsets[0]).toBe(0);
  });

  it("continues after a restart from the stored counters and tail", async () => {
    const m = memoryStore();
    const cap = 256;
    const a = OutputLog.fresh(m.store, "cmd_x", { capPerStream: cap, clock: new FlushClock() });
    for (let i = 0; i < 100; i++) await a.append("stdout", Buffer.from(`${i % 10}`.repeat(10)));
    await a.flush();
    const stored = m.counters()!;
    const b = await OutputLog.restore(m.store, "cmd_x", stored, { capPerStream: cap, clock: new FlushClock() });
    expect(b.received).toEqual({ stdout: 1000, stderr: 0 });
    for (let i = 0; i < 50; i++) await b.append("stdout", Buffer.from("z".repeat(10)));
    await b.flush();
    const out = text(m.chunks, "stdout");
    expect(out.length).toBeLessThanOrEqual(cap);
    // The tail is kept in whole chunks: between half the cap less one chunk (64 bytes here) and half the cap.
    const tail = out.slice(128);
    expect(tail).toMatch(/^z+$/);
    expect(tail.length).toBeGreaterThanOrEqual(128 - 64);
    expect(m.counters()!.logBytes).toBe(1500);
  });

  it("flushes every log waiting on one clock in the same turn, with one timer", async () => {
    const m = memoryStore();
    const clock = new FlushClock({ minIntervalMs: 5, maxIntervalMs: 50, logsPerMs: 10 });
    const logs = Array.from({ length: 300 }, (_, i) => OutputLog.fresh(m.store, `cmd_${i}`, { capPerStream: 1 << 20, clock }));
    for (const [i, log] of logs.entries()) await log.append("stdout", Buffer.from(`out ${i}\n`));
    expect(m.writes()).toBe(0);
    expect(clock.waiting).toBe(300);
    // 300 waiting logs stretch the tick to 30 ms (10 per ms), within [5, 50].
    expect(clock.intervalMs).toBe(30);
    const deadline = Date.now() + 5_000;
    while (m.writes() < 300 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(m.writes()).toBe(300);
    expect(clock.waiting).toBe(0);
    // A log that flushed by itself is not flushed again by the tick.
    await logs[0]!.append("stdout", Buffer.from("more\n"));
    expect(clock.waiting).toBe(1);
    await logs[0]!.flush();
    expect(clock.waiting).toBe(0);
    expect(m.writes()).toBe(301);
    clock.stop();
  });
});
