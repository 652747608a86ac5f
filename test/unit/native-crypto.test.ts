/**
 * `npm ci` must leave ssh2's native crypto binding loadable in Node 24 (the postinstall
 * rebuilds it when the machine's npmrc built it for another Node); without it ssh2
 * silently uses a much slower JS path.
 */
import { createRequire } from "node:module";
import { describe, expect, it } from "vitest";
import { sshNativeCrypto } from "../../src/ssh/native-crypto.ts";

describe("ssh2's native crypto binding", () => {
  it("loads in this Node, and ssh2 uses it", () => {
    expect(sshNativeCrypto()).toEqual({ loaded: true });
    const require = createRequire(import.meta.url);
    expect((require("ssh2/lib/protocol/crypto.js") as { bindingAvailable: boolean }).bindingAvailable).toBe(true);
  });
});
