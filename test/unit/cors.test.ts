/** FLEETRUN_CORS_ORIGINS: parsed into exact origins, bad values refused at start naming the variable. */
import { expect, it } from "vitest";
import { loadConfig } from "../../src/config.ts";

it("is off by default and reads a comma list of origins (normalised, blanks skipped)", () => {
  expect(loadConfig({}).corsOrigins).toEqual([]);
  expect(loadConfig({ FLEETRUN_CORS_ORIGINS: " https://App.Example.com , http://127.0.0.1:5173/,," }).corsOrigins).toEqual([
    "https://app.example.com",
    "http://127.0.0.1:5173",
  ]);
  expect(loadConfig({ FLEETRUN_CORS_ORIGINS: "*" }).corsOrigins).toEqual(["*"]);
});

it("refuses values that are not origins", () => {
  for (const bad of ["app.example.com", "https://app.example.com/path", "ftp://x.example", "https://x.example?q=1"]) {
    expect(() => loadConfig({ FLEETRUN_CORS_ORIGINS: bad }), bad).toThrow(/^FLEETRUN_CORS_ORIGINS: .*not an origin/);
  }
});
