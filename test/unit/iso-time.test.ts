/** ISO 8601 dates and date-times for `since`. */
import { describe, expect, it } from "vitest";
import { parseIsoInstant } from "../../src/exec/iso-time.ts";

const iso = (t: string) => parseIsoInstant(t)?.toISOString() ?? null;

describe("parseIsoInstant", () => {
  it("reads dates and date-times, UTC when no offset is given", () => {
    expect(iso("2026-01-01")).toBe("2026-01-01T00:00:00.000Z");
    expect(iso("2026-01-01T15:45")).toBe("2026-01-01T15:45:00.000Z");
    expect(iso("2026-01-01T15:45:07")).toBe("2026-01-01T15:45:07.000Z");
    expect(iso("2026-01-01t15:45:07.123456z")).toBe("2026-01-01T15:45:07.123Z");
    expect(iso("2026-01-01 15:45:07,5")).toBe("2026-01-01T15:45:07.500Z");
    expect(iso("2026-01-01T15:45:07Z")).toBe("2026-01-01T15:45:07.000Z");
    expect(iso("2026-01-01T17:45:07+02:00")).toBe("2026-01-01T15:45:07.000Z");
    expect(iso("2026-01-01T17:45:07+0200")).toBe("2026-01-01T15:45:07.000Z");
    expect(iso("2026-01-01T17:45:07+02")).toBe("2026-01-01T15:45:07.000Z");
    expect(iso("2026-01-01T17:45:07 02:00")).toBe("2026-01-01T15:45:07.000Z");
    expect(iso("2026-01-01T00:15:00-05:30")).toBe("2026-01-01T05:45:00.000Z");
    expect(iso("2024-02-29")).toBe("2024-02-29T00:00:00.000Z");
    expect(iso("2016-12-31T23:59:60Z")).toBe("2017-01-01T00:00:00.000Z");
    expect(iso("0099-01-01")).toBe("0099-01-01T00:00:00.000Z");
  });

  it("rejects what is not a valid date or time", () => {
    for (const bad of ["", "yesterday", "2026", "2026-01", "2026-1-1", "20260101", "2025-02-29", "2026-13-01", "2026-01-32", "2026-01-01T24:00", "2026-01-01T12:60", "2026-01-01T12", "2026-01-01T12:00+24:00", "2026-01-01Z", "2026-01-01T12:00:00ZZ", "1714000000"]) {
      expect(parseIsoInstant(bad), bad).toBeNull();
    }
  });
});
