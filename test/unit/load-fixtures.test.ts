/**
 * The load test's own instruments: the printer prints exactly what the test
 * expects, the /healthz poller reports a stall in full, and quantiles of a
 * Prometheus histogram are read from the difference of two scrapes.
 */
import { execFile } from "node:child_process";
import http from "node:http";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { expectedStderr, expectedStdout, histogramDelta, parseHistogram, printerCommand, quantiles, startHealthzPoller } from "../fixtures/load.ts";

const execFileAsync = promisify(execFile);

describe("load fixtures", () => {
  it("the printer's output and exit code are the expected ones, through the shell's eval as on a target", async () => {
    const spec = { mark: "frload-unit-1", index: 42, lines: 23, perTick: 5, tickSeconds: 0.01, exitCode: 57 };
    const err = await execFileAsync("/bin/sh", ["-c", 'eval "$1"', "sh", printerCommand(spec)]).then(
      () => null,
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    expect(err?.code).toBe(57);
    expect(err?.stdout).toBe(expectedStdout(spec));
    expect(err?.stderr).toBe(expectedStderr(spec));
    expect(expectedStdout(spec).split("\n")).toHaveLength(24);
  });

  it("counts the polls that fell due during a stall with the time they waited", async () => {
    let stallUntil = 0;
    const server = http.createServer((_req, res) => {
      const wait = Math.max(0, stallUntil - Date.now());
      setTimeout(() => res.end("ok"), wait);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const addr = server.address() as { port: number };
    try {
      const poller = startHealthzPoller(`http://127.0.0.1:${addr.port}`, 20);
      await new Promise((r) => setTimeout(r, 200));
      stallUntil = Date.now() + 600;
      await new Promise((r) => setTimeout(r, 900));
      const { latenciesMs, failures } = await poller.stop();
      expect(failures).toBe(0);
      // About 30 polls fell due during the 600 ms stall: many samples are long, the worst ≈ the stall.
      expect(latenciesMs.filter((l) => l > 200).length).toBeGreaterThanOrEqual(15);
      expect(quantiles(latenciesMs).max).toBeGreaterThan(500);
    } finally {
      server.close();
    }
  });

  it("reads p50/p99/max of a histogram from two scrapes as bucket bounds", () => {
    const scrape = (counts: number[]) =>
      [
        "# TYPE fleetrun_event_loop_lag_seconds histogram",
        ...[0.01, 0.1, 1].map((le, i) => `fleetrun_event_loop_lag_seconds_bucket{le="${le}"} ${counts[i]}`),
        `fleetrun_event_loop_lag_seconds_bucket{le="+Inf"} ${counts[3]}`,
        "fleetrun_event_loop_lag_seconds_count 0",
      ].join("\n");
    const before = parseHistogram(scrape([5, 5, 5, 5]), "fleetrun_event_loop_lag_seconds");
    const after = parseHistogram(scrape([105, 203, 204, 205]), "fleetrun_event_loop_lag_seconds")!;
    const q = histogramDelta(before, after);
    expect(q).toEqual({ n: 200, p50: 10, p99: 100, max: Number.POSITIVE_INFINITY });
    expect(parseHistogram("fleetrun_other 1", "fleetrun_event_loop_lag_seconds")).toBeNull();
  });
});
