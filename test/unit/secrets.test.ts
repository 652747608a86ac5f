/** The secret box (AES-256-GCM envelopes) and where its keys come from. */
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SecretBox, SecretKeyError, SecretOpenError, isSealed, keyIdOf, loadKeyRing, parseKeys, sealedKeyId } from "../../src/secrets/index.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-secrets-unit-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe("SecretBox", () => {
  const k1 = randomBytes(32);
  const k2 = randomBytes(32);

  it("seals to a versioned envelope that opens only under its context", () => {
    const box = new SecretBox([k1], "test");
    const a = box.seal("hunter2 🔑", "fleetrun/machines/m1/password");
    const b = box.seal("hunter2 🔑", "fleetrun/machines/m1/password");
    expect(a).toMatch(new RegExp(`^v1:${keyIdOf(k1)}:[A-Za-z0-9_-]{16}:[A-Za-z0-9_-]+$`));
    expect(a).not.toBe(b);
    expect(isSealed(a)).toBe(true);
    expect(sealedKeyId(a)).toBe(keyIdOf(k1));
    expect(box.open(a, "fleetrun/machines/m1/password")).toBe("hunter2 🔑");
    expect(() => box.open(a, "fleetrun/machines/m2/password")).toThrow(SecretOpenError);
    expect(() => box.open(a, "fleetrun/machines/m1/passphrase")).toThrow(SecretOpenError);
  });

  it("detects any altered byte, and a key it does not have", () => {
    const box = new SecretBox([k1], "test");
    const sealed = box.seal("secret", "ctx");
    const body = sealed.split(":")[3]!;
    const flipped = body.slice(0, 5) + (body[5] === "A" ? "B" : "A") + body.slice(6);
    expect(() => box.open(sealed.replace(body, flipped), "ctx")).toThrow(/does not open/);
    expect(() => new SecretBox([k2], "test").open(sealed, "ctx")).toThrow(/not configured/);
    expect(() => box.open("clear text", "ctx")).toThrow(SecretOpenError);
    expect(isSealed("clear text")).toBe(false);
  });

  it("seals under the first key and opens under any key of the ring", () => {
    const old = new SecretBox([k1], "test").seal("v", "ctx");
    const ring = new SecretBox([k2, k1], "test");
    expect(ring.open(old, "ctx")).toBe("v");
    expect(sealedKeyId(ring.seal("v", "ctx"))).toBe(keyIdOf(k2));
    expect(ring.keyIds).toEqual([keyIdOf(k2), keyIdOf(k1)]);
  });
});

describe("key ring settings", () => {
  const b64 = (k: Buffer) => k.toString("base64");

  it("parses base64 keys separated by commas or white space, newest first", () => {
    const [a, b] = [randomBytes(32), randomBytes(32)];
    expect(parseKeys(`${b64(a)}, ${b64(b)}\n`, "S")).toEqual([a, b]);
    expect(parseKeys(a.toString("base64url"), "S")).toEqual([a]);
  });

  it("refuses malformed keys naming the setting and the key's position, never its text", () => {
    const short = randomBytes(16).toString("base64");
    const cases: [string, RegExp][] = [
      ["", /^S: no key/],
      [short, /^S: the key is 16 bytes, not 32/],
      [`${b64(randomBytes(32))},not*base64`, /^S: key 2 of 2 is not base64/],
    ];
    for (const [text, message] of cases) {
      const err = (() => {
        try {
          parseKeys(text, "S");
        } catch (e) {
          return e as Error;
        }
        return null;
      })();
      expect(err).toBeInstanceOf(SecretKeyError);
      expect(err!.message).toMatch(message);
      if (text) expect(err!.message).not.toContain(text);
    }
    const k = b64(randomBytes(32));
    expect(() => parseKeys(`${k},${k}`, "S")).toThrow(/listed twice/);
  });

  it("generates <data dir>/secret-key once (0600) and reads it back", () => {
    const dataDir = path.join(tmp, "gen");
    const first = loadKeyRing({ secretKey: null, secretKeyFile: null, dataDir });
    const second = loadKeyRing({ secretKey: null, secretKeyFile: null, dataDir });
    expect([first.generated, second.generated]).toEqual([true, false]);
    expect(second.box.currentKeyId).toBe(first.box.currentKeyId);
    expect(fs.statSync(path.join(dataDir, "secret-key")).mode & 0o777).toBe(0o600);
    expect(first.warnings).toEqual([]);
  });

  it("reads FLEETRUN_SECRET_KEY_FILE, warns when others may read it, and names it when missing", () => {
    const file = path.join(tmp, "keys");
    const key = randomBytes(32);
    fs.writeFileSync(file, `${b64(key)}\n`, { mode: 0o644 });
    fs.chmodSync(file, 0o644);
    const ring = loadKeyRing({ secretKey: null, secretKeyFile: file, dataDir: tmp });
    expect(ring.box.currentKeyId).toBe(keyIdOf(key));
    expect(ring.warnings.join()).toContain(`chmod 600 ${file}`);
    expect(() => loadKeyRing({ secretKey: null, secretKeyFile: path.join(tmp, "nope"), dataDir: tmp })).toThrow(/^FLEETRUN_SECRET_KEY_FILE: cannot read .*nope \(ENOENT\)/);
    expect(() => loadKeyRing({ secretKey: b64(key), secretKeyFile: file, dataDir: tmp })).toThrow(/not both/);
  });
});
