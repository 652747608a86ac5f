/**
 * Host key helpers and the handshake pacer.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createHandshakePacer } from "../../src/ssh/handshake-pacer.ts";
import {
  fingerprintOf,
  fingerprintsEqual,
  keyTypeOf,
  normalizeKeyType,
  serverHostKeyAlgorithmsFor,
} from "../../src/ssh/host-key.ts";

describe("host key fingerprints", () => {
  it("match ssh-keygen -lf for every key type", () => {
    const dir = mkdtempSync(join(tmpdir(), "fr-hostkey-"));
    try {
      for (const [type, bits, keyType] of [
        ["ed25519", "256", "ssh-ed25519"],
        ["ecdsa", "384", "ecdsa-sha2-nistp384"],
        ["rsa", "2048", "ssh-rsa"],
      ] as const) {
        const file = join(dir, type);
        execFileSync("ssh-keygen", ["-q", "-t", type, "-b", bits, "-N", "", "-f", file]);
        const expected = execFileSync("ssh-keygen", ["-lf", `${file}.pub`]).toString().split(" ")[1];
        const blob = Buffer.from(readFileSync(`${file}.pub`, "utf8").split(" ")[1] ?? "", "base64");
        expect(fingerprintOf(blob)).toBe(expected);
        expect(fingerprintOf(blob)).not.toContain("=");
        expect(keyTypeOf(blob)).toBe(keyType);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("compare tolerating padding, not case", () => {
    expect(fingerprintsEqual("SHA256:abc", "SHA256:abc=")).toBe(true);
    expect(fingerprintsEqual("SHA256:abc", "abc")).toBe(true);
    expect(fingerprintsEqual("SHA256:abc", "SHA256:ABC")).toBe(false);
  });

  it("normalise algorithm names to key types and back to serverHostKey lists", () => {
    expect(normalizeKeyType("ed25519")).toBe("ssh-ed25519");
    expect(normalizeKeyType("rsa-sha2-512")).toBe("ssh-rsa");
    expect(normalizeKeyType("ECDSA-SHA2-NISTP521")).toBe("ecdsa-sha2-nistp521");
    expect(normalizeKeyType("ssh-dss")).toBeNull();
    expect(serverHostKeyAlgorithmsFor("ssh-rsa")).toEqual(["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]);
    expect(serverHostKeyAlgorithmsFor("ssh-ed25519")).toEqual(["ssh-ed25519"]);
  });
});

describe("handshake pacer", () => {
  it("limits per destination, grants FIFO, and lets other destinations pass", async () => {
    const pacer = createHandshakePacer({ perDestination: 2, overall: 3 });
    const order: string[] = [];
    const a1 = await pacer.acquire("a");
    const a2 = await pacer.acquire("a");
    const a3 = pacer.acquire("a").then((r) => (order.push("a3"), r));
    const a4 = pacer.acquire("a").then((r) => (order.push("a4"), r));
    const b1 = await pacer.acquire("b"); // not blocked by the queue for "a"
    expect(pacer.active("a")).toBe(2);
    expect(pacer.active()).toBe(3);
    const b2 = pacer.acquire("b").then((r) => (order.push("b2"), r));
    expect(pacer.waiting()).toBe(3);
    a1();
    a1(); // idempotent
    const r3 = await a3;
    expect(order).toEqual(["a3"]);
    expect(pacer.active()).toBe(3);
    b1();
    const rb2 = await b2;
    expect(order).toEqual(["a3", "b2"]);
    a2();
    const r4 = await a4;
    expect(order).toEqual(["a3", "b2", "a4"]);
    for (const r of [r3, rb2, r4]) r();
    expect(pacer.active()).toBe(0);
  });

  it("an aborted waiter leaves the queue", async () => {
    const pacer = createHandshakePacer({ perDestination: 1 });
    const first = await pacer.acquire("a");
    const ac = new AbortController();
    const waiting = pacer.acquire("a", ac.signal);
    ac.abort(new Error("gone"));
    await expect(waiting).rejects.toThrow("gone");
    expect(pacer.waiting()).toBe(0);
    first();
    expect(pacer.active()).toBe(0);
  });
});
