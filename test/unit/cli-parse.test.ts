/**
 * The CLI's value parsers and formatters: human durations, env pairs,
 * selectors, label changes, counts or percentages, --since, exit codes and
 * one-line errors.
 */
import { describe, expect, it } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { CommandSchema, CommandStatus } from "../../src/gen/fleetrun/v1/command_pb.js";
import { describeError, UsageError } from "../../src/cli/errors.ts";
import { EXIT, exitCodeOf } from "../../src/cli/exit-codes.ts";
import {
  formatDuration,
  joinCommand,
  parseCountOrPercent,
  parseDuration,
  parseEnvPairs,
  parseIntFlag,
  parseLabelChanges,
  parseSelector,
  parseSince,
  parseStatus,
  resolveCount,
} from "../../src/cli/parse.ts";

describe("parseDuration", () => {
  it.each([
    ["30s", 30_000],
    ["250ms", 250],
    ["5m", 300_000],
    ["1h30m", 5_400_000],
    ["1.5h", 5_400_000],
    ["2d", 172_800_000],
    ["1m30s", 90_000],
    ["10", 10_000],
    ["0.5", 500],
    [" 2H ", 7_200_000],
  ])("%s is %d ms", (text, ms) => {
    expect(parseDuration(text, "--timeout")).toBe(ms);
  });

  it.each(["", "abc", "10x", "1h 30m", "-5s", "0s", "0", "s", "5s5", "1e3s"])("refuses %j naming the flag", (text) => {
    expect(() => parseDuration(text, "--timeout")).toThrow(UsageError);
    expect(() => parseDuration(text, "--timeout")).toThrow(/^--timeout: /);
  });

  it("formats durations short", () => {
    expect(formatDuration(350)).toBe("350ms");
    expect(formatDuration(4200)).toBe("4.2s");
    expect(formatDuration(42_000)).toBe("42s");
    expect(formatDuration(90_000)).toBe("1m30s");
    expect(formatDuration(5_400_000)).toBe("1h30m");
    expect(formatDuration(90_000_000)).toBe("1d1h");
    expect(formatDuration(Number.NaN)).toBe("-");
  });
});

describe("env, selectors and labels", () => {
  it("takes NAME=VALUE pairs byte for byte (= and empty values included)", () => {
    expect(parseEnvPairs(["A=1", "B=x=y", "C=", "D= spaced 'quoted' $(not) "])).toEqual({ A: "1", B: "x=y", C: "", D: " spaced 'quoted' $(not) " });
    expect(() => parseEnvPairs(["NOVALUE"])).toThrow(/--env: expected NAME=VALUE/);
    expect(() => parseEnvPairs(["=x"])).toThrow(UsageError);
  });

  it("parses selectors, comma-separated or repeated", () => {
    expect(parseSelector(["env=prod,role=web"])).toEqual({ env: "prod", role: "web" });
    expect(parseSelector(["env=prod", "tier = 1 "])).toEqual({ env: "prod", tier: "1" });
    expect(() => parseSelector(["env"])).toThrow(/--selector: expected KEY=VALUE/);
    expect(() => parseSelector([","])).toThrow(/at least one/);
  });

  it("parses label changes as kubectl does: KEY=VALUE sets, KEY- removes", () => {
    expect(parseLabelChanges(["env=prod", "canary-", "a=b=c"])).toEqual({ set: { env: "prod", a: "b=c" }, remove: ["canary"] });
    expect(() => parseLabelChanges(["oops"])).toThrow(/KEY=VALUE to set or KEY- to remove/);
    expect(() => parseLabelChanges(["-"])).toThrow(UsageError);
  });
});

describe("counts and percentages", () => {
  it("passes counts as numbers and percentages as the API's strings", () => {
    expect(parseCountOrPercent("25", "--max-concurrency", false)).toBe(25);
    expect(parseCountOrPercent("25%", "--max-concurrency", false)).toBe("25%");
    expect(parseCountOrPercent("0", "--max-errors", true)).toBe(0);
    expect(() => parseCountOrPercent("0", "--max-concurrency", false)).toThrow(/at least 1/);
    expect(() => parseCountOrPercent("150%", "--max-errors", true)).toThrow(/at most 100%/);
    expect(() => parseCountOrPercent("lots", "--max-errors", true)).toThrow(/--max-errors: expected a count/);
  });

  it("resolves them against the number of machines", () => {
    expect(resolveCount("25%", 40, 50)).toBe(10);
    expect(resolveCount("1%", 3, 50)).toBe(1);
    expect(resolveCount(7, 40, 50)).toBe(7);
    expect(resolveCount(undefined, 3, 50)).toBe(3);
    expect(resolveCount(undefined, 300, 50)).toBe(50);
  });

  it("checks integer flags", () => {
    expect(parseIntFlag("50", "--limit", 1, 1000)).toBe(50);
    expect(() => parseIntFlag("0", "--limit", 1, 1000)).toThrow(/--limit: must be from 1 to 1000/);
    expect(() => parseIntFlag("5.5", "--limit", 1, 1000)).toThrow(/whole number/);
  });
});

describe("since, status and the command words", () => {
  it("turns a duration into a time that far back, and passes dates as written", () => {
    const now = Date.parse("2026-12-02T12:00:00Z");
    expect(parseSince("1h", now)).toBe("2026-12-02T11:00:00.000Z");
    expect(parseSince("2d", now)).toBe("2026-11-30T12:00:00.000Z");
    expect(parseSince("2026-01-01", now)).toBe("2026-01-01");
    expect(parseSince("2026-01-01T15:45+02:00", now)).toBe("2026-01-01T15:45+02:00");
    expect(() => parseSince("yesterday", now)).toThrow(/--since/);
  });

  it("accepts status names as the API spells them (and with a dash)", () => {
    expect(parseStatus("failed")).toBe("failed");
    expect(parseStatus("timed-out")).toBe("timed_out");
    expect(() => parseStatus("broken")).toThrow(/--status: expected one of queued, running/);
  });

  it("joins command words with spaces, as ssh does", () => {
    expect(joinCommand(["echo", "a b", "$HOME"])).toBe("echo a b $HOME");
    expect(joinCommand(["ps aux | grep x"])).toBe("ps aux | grep x");
    expect(() => joinCommand([])).toThrow(/no command given/);
  });
});

describe("exit codes and errors", () => {
  const cmd = (status: CommandStatus, exitCode?: number) => create(CommandSchema, { status, ...(exitCode !== undefined ? { exitCode } : {}) });

  it("maps how a command ended to the documented exit codes", () => {
    expect(exitCodeOf(cmd(CommandStatus.COMPLETED, 0))).toBe(0);
    expect(exitCodeOf(cmd(CommandStatus.COMPLETED, 42))).toBe(42);
    expect(exitCodeOf(cmd(CommandStatus.COMPLETED, 143))).toBe(143);
    expect(exitCodeOf(cmd(CommandStatus.TIMED_OUT))).toBe(124);
    expect(exitCodeOf(cmd(CommandStatus.CANCELLED))).toBe(130);
    expect(exitCodeOf(cmd(CommandStatus.FAILED))).toBe(255);
    expect(exitCodeOf(cmd(CommandStatus.LOST))).toBe(255);
  });

  it("describes the service's errors in one line with their code", () => {
    const unauth = describeError(new ConnectError("invalid token", Code.Unauthenticated), "http://h:1");
    expect(unauth.exitCode).toBe(EXIT.auth);
    expect(unauth.line).toMatch(/^unauthenticated: invalid token/);
    expect(describeError(new ConnectError("no machine mach_x", Code.NotFound)).exitCode).toBe(EXIT.refused);
    expect(describeError(new ConnectError("x", Code.PermissionDenied)).exitCode).toBe(EXIT.auth);
    expect(describeError(new ConnectError("boom", Code.Internal)).exitCode).toBe(EXIT.internal);
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
    const down = describeError(new ConnectError("fetch failed", Code.Unavailable, undefined, undefined, refused), "http://127.0.0.1:1");
    expect(down).toEqual({ line: "unavailable: cannot reach the service at http://127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1)", exitCode: EXIT.unavailable });
    expect(describeError(new UsageError("--limit: bad"))).toEqual({ line: "--limit: bad", exitCode: EXIT.usage });
    const multi = describeError(new Error("line one\n    at stack (x.ts:1)"));
    expect(multi.line).not.toContain("\n");
  });
});
