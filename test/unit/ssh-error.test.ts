/**
 * The one place ssh2 failures become TargetErrors.
 */
import { describe, expect, it } from "vitest";
import { TargetError } from "../../src/exec/errors.ts";
import { scrubSecrets, toTargetError } from "../../src/ssh/ssh-error.ts";
import type { SshErrorContext } from "../../src/ssh/ssh-error.ts";

const connect: SshErrorContext = {
  machineId: "mach_1",
  host: "10.0.0.5",
  port: 2222,
  username: "deploy",
  phase: "connect",
  secrets: ["hunter2-secret", null],
  connectTimeoutMs: 10_000,
  handshakeTimeoutMs: 30_000,
};
const exec: SshErrorContext = { ...connect, phase: "exec" };

function leveled(message: string, level: string, code?: string | number): Error {
  return Object.assign(new Error(message), { level, ...(code === undefined ? {} : { code }) });
}

describe("toTargetError", () => {
  it.each([
    [leveled("All configured authentication methods failed", "client-authentication"), connect, "auth_failed", 'authentication as "deploy" at 10.0.0.5:2222 failed'],
    [leveled("Timed out while waiting for handshake", "client-timeout"), connect, "unreachable", "timed out connecting to 10.0.0.5:2222"],
    [
      Object.assign(leveled("Timed out waiting for the server to answer", "client-timeout"), { phase: "answer" }),
      connect,
      "unreachable",
      "timed out connecting to 10.0.0.5:2222: no SSH answer within 10000 ms",
    ],
    [
      Object.assign(leveled("Timed out while waiting for handshake", "client-timeout"), { phase: "handshake" }),
      connect,
      "unreachable",
      "timed out connecting to 10.0.0.5:2222: the SSH handshake did not finish within 30000 ms of the server's answer",
    ],
    [leveled("Keepalive timeout", "client-timeout"), exec, "connection_lost", "connection to 10.0.0.5:2222 lost: no keepalive reply"],
    [leveled("connect ECONNREFUSED 10.0.0.5:2222", "client-socket", "ECONNREFUSED"), connect, "unreachable", "cannot connect to 10.0.0.5:2222: ECONNREFUSED"],
    [leveled("connect EHOSTUNREACH", "client-socket", "EHOSTUNREACH"), connect, "unreachable", "cannot connect to 10.0.0.5:2222: EHOSTUNREACH"],
    [leveled("read ECONNRESET", "client-socket", "ECONNRESET"), exec, "connection_lost", "connection to 10.0.0.5:2222 lost: ECONNRESET"],
    [leveled("getaddrinfo ENOTFOUND", "client-dns"), connect, "unreachable", 'cannot resolve "10.0.0.5": getaddrinfo ENOTFOUND'],
    [leveled("Handshake failed: no matching host key format", "handshake"), connect, "unreachable", "SSH handshake with 10.0.0.5:2222 failed: Handshake failed: no matching host key format"],
    [Object.assign(new Error("(SSH) Channel open failure: open failed"), { reason: 2 }), exec, "spawn_failed", "cannot open a session on 10.0.0.5:2222: Channel open failure: open failed"],
    [Object.assign(new Error("Too many connections"), { code: 11 }), exec, "connection_lost", "10.0.0.5:2222 disconnected: Too many connections"],
    [new Error("No response from server"), exec, "connection_lost", "connection to 10.0.0.5:2222 closed"],
  ] as const)("%s (%s)", (err, ctx, reason, message) => {
    const mapped = toTargetError(err, ctx);
    expect(mapped).toBeInstanceOf(TargetError);
    expect(mapped.reason).toBe(reason);
    expect(mapped.message).toBe(message);
    expect(mapped.machineId).toBe("mach_1");
  });

  it("passes a TargetError through unchanged", () => {
    const original = new TargetError("host_key_mismatch", "x", "mach_1");
    expect(toTargetError(original, connect)).toBe(original);
  });

  it("never lets a secret through, even if a library put it in a message", () => {
    const mapped = toTargetError(new Error("weird failure with hunter2-secret inside"), connect);
    expect(mapped.message).not.toContain("hunter2-secret");
    expect(mapped.message).toContain("[redacted]");
    expect(scrubSecrets("a hunter2-secret b", ["hunter2-secret"])).toBe("a [redacted] b");
  });
});
