import { describe, expect, it } from "vitest";
import { decodeHistoryCursor, encodeHistoryCursor } from "../../src/db/history-cursor.ts";

describe("history cursor", () => {
  it("round-trips (created_at, id) as opaque base64url", () => {
    const text = encodeHistoryCursor(new Date(1_735_732_800_123), "cmd_01J/+x");
    expect(text).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(decodeHistoryCursor(text)).toEqual({ createdAt: 1_735_732_800_123, id: "cmd_01J/+x" });
  });

  it("rejects what it did not write", () => {
    const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
    for (const bad of [
      "",
      "a.b",
      "%%%",
      b64({ createdAt: 1, id: "x" }),
      b64([1]),
      b64([1, "x", 2]),
      b64(["1", "x"]),
      b64([1.5, "x"]),
      b64([1, ""]),
      b64([1, 2]),
      Buffer.from("not json").toString("base64url"),
    ]) {
      expect(decodeHistoryCursor(bad), bad).toBeNull();
    }
  });
});
