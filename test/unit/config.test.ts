/**
 * Settings from the environment: the SSH ones reach the transport's options,
 * and a bad value is refused with the variable's name.
 */
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig, sshOptionsFrom } from "../../src/config.ts";

describe("configuration", () => {
  it("defaults the SSH deadlines and pacing", () => {
    expect(sshOptionsFrom(loadConfig({}))).toEqual({
      connectTimeoutMs: 10_000,
      handshakeTimeoutMs: 30_000,
      handshakesPerDestination: 6,
      handshakesOverall: 64,
    });
  });

  it("takes the SSH settings from the environment", () => {
    const config = loadConfig({
      FLEETRUN_SSH_CONNECT_TIMEOUT_MS: "2500",
      FLEETRUN_SSH_HANDSHAKE_TIMEOUT_MS: "45000",
      FLEETRUN_SSH_HANDSHAKES_PER_HOST: "2",
      FLEETRUN_SSH_HANDSHAKES_TOTAL: "300",
    });
    expect(sshOptionsFrom(config)).toEqual({
      connectTimeoutMs: 2_500,
      handshakeTimeoutMs: 45_000,
      handshakesPerDestination: 2,
      handshakesOverall: 300,
    });
  });

  it.each([
    ["FLEETRUN_SSH_HANDSHAKES_PER_HOST", "0"],
    ["FLEETRUN_SSH_HANDSHAKES_TOTAL", "many"],
    ["FLEETRUN_SSH_CONNECT_TIMEOUT_MS", "-1"],
    ["FLEETRUN_SSH_HANDSHAKE_TIMEOUT_MS", "1.5"],
  ])("refuses %s=%s, naming the variable", (name, value) => {
    let caught: unknown;
    try {
      loadConfig({ [name]: value });
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as Error).message).toContain(name);
  });
});
