/**
 * Settings from the environment: the SSH ones reach the transport's options,
 * and a bad value is refused with the variable's name.
 */
import { describe, expect, it } from "vitest";
import { ConfigError, describeConfig, flagOf, loadConfig, settingName, sshOptionsFrom, unknownSettings } from "../../src/config.ts";

describe("configuration", () => {
  it("defaults the SSH deadlines and pacing", () => {
    expect(sshOptionsFrom(loadConfig({}))).toEqual({
      connectTimeoutMs: 10_000,
      handshakeTimeoutMs: 30_000,
      handshakesPerDestination: 6,
      handshakesOverall: 64,
      handshakeQueue: 500,
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
      handshakeQueue: 500,
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

  it("defaults the admission limits so one process takes ~1,000 commands on 50 machines", () => {
    const c = loadConfig({});
    expect(c.maxActiveCommands).toBe(2_000);
    expect(c.maxPendingStarts).toBe(1_500);
    expect(c.sshHandshakeQueue).toBe(500);
    expect(c.maxFollowers).toBe(2_000);
    expect(c.maxActiveCommands).toBeGreaterThanOrEqual(1_000);
    expect(c.maxPendingStarts).toBeGreaterThanOrEqual(1_000);
  });

  it("takes the admission limits from the environment, the handshake queue to the transport", () => {
    const c = loadConfig({
      FLEETRUN_MAX_ACTIVE_COMMANDS: "3",
      FLEETRUN_MAX_PENDING_STARTS: "2",
      FLEETRUN_SSH_HANDSHAKE_QUEUE: "0",
      FLEETRUN_MAX_FOLLOWERS: "7",
    });
    expect([c.maxActiveCommands, c.maxPendingStarts, c.sshHandshakeQueue, c.maxFollowers]).toEqual([3, 2, 0, 7]);
    expect(sshOptionsFrom(c).handshakeQueue).toBe(0);
    expect(settingName("maxActiveCommands")).toBe("FLEETRUN_MAX_ACTIVE_COMMANDS");
  });

  it("documents every admission limit for --help", () => {
    const names = describeConfig().map((d) => d.env);
    for (const n of ["FLEETRUN_MAX_ACTIVE_COMMANDS", "FLEETRUN_MAX_PENDING_STARTS", "FLEETRUN_SSH_HANDSHAKE_QUEUE", "FLEETRUN_MAX_FOLLOWERS"]) {
      expect(names).toContain(n);
    }
    for (const d of describeConfig()) expect(d.description.length).toBeGreaterThan(10);
  });

  it.each([
    ["FLEETRUN_MAX_ACTIVE_COMMANDS", "0"],
    ["FLEETRUN_MAX_ACTIVE_COMMANDS", "lots"],
    ["FLEETRUN_MAX_PENDING_STARTS", "0"],
    ["FLEETRUN_MAX_PENDING_STARTS", "2.5"],
    ["FLEETRUN_SSH_HANDSHAKE_QUEUE", "-1"],
    ["FLEETRUN_SSH_HANDSHAKE_QUEUE", "1e3"],
    ["FLEETRUN_MAX_FOLLOWERS", "0"],
    ["FLEETRUN_MAX_FOLLOWERS", "10000000"],
  ])("refuses the admission limit %s=%s, naming the variable", (name, value) => {
    expect(() => loadConfig({ [name]: value })).toThrowError(new RegExp(`^${name}: must be an integer`));
  });

  it("takes every setting as a flag too, and a flag wins over the variable", () => {
    expect(flagOf("PORT")).toBe("--port");
    expect(flagOf("FLEETRUN_DATA_DIR")).toBe("--data-dir");
    expect(flagOf("DATABASE_URL")).toBe("--database-url");
    const config = loadConfig({ PORT: "9000", FLEETRUN_KILL_GRACE_MS: "700" }, ["--port", "9001", "--ssh-handshakes-total=12", "--local-machine=1"]);
    expect(config.port).toBe(9001);
    expect(config.graceMs).toBe(700);
    expect(config.sshHandshakesTotal).toBe(12);
    expect(config.localMachine).toBe(true);
  });

  it.each([
    [["--prot", "9000"], "--prot"],
    [["9000"], "9000"],
    [["--port"], "--port"],
    [["--port=x"], "--port"],
  ])("refuses the arguments %j, naming %s", (argv, named) => {
    expect(() => loadConfig({}, argv)).toThrow(ConfigError);
    expect(() => loadConfig({}, argv)).toThrow(new RegExp(`^${named}: `));
  });

  it("refuses a short admin token and a DATABASE_URL that is not postgres://", () => {
    expect(() => loadConfig({ FLEETRUN_ADMIN_TOKEN: "short" })).toThrow(/^FLEETRUN_ADMIN_TOKEN: must be at least 16/);
    expect(() => loadConfig({ DATABASE_URL: "mysql://db/x" })).toThrow(/^DATABASE_URL: must be a postgres:\/\//);
    expect(loadConfig({ DATABASE_URL: "postgresql://u@db:5432/x" }).databaseUrl).toBe("postgresql://u@db:5432/x");
  });

  it("refuses secrets on the command line (visible to every local user), naming the variable to use", () => {
    expect(() => loadConfig({}, ["--admin-token", "a".repeat(20)])).toThrow(/^--admin-token: is a secret, .*: set FLEETRUN_ADMIN_TOKEN in the environment instead$/);
    expect(() => loadConfig({}, [`--metrics-token=${"m".repeat(20)}`])).toThrow(/^--metrics-token: is a secret, .*set FLEETRUN_METRICS_TOKEN in the environment/);
    expect(() => loadConfig({}, ["--secret-key", "k".repeat(44)])).toThrow(/^--secret-key: is a secret, .*set FLEETRUN_SECRET_KEY in the environment/);
    expect(() => loadConfig({}, ["--database-url", "postgres://u:pw@db/x"])).toThrow(/^--database-url: holds a password, .*set DATABASE_URL in the environment/);
    expect(loadConfig({}, ["--database-url", "postgres://u@db/x"]).databaseUrl).toBe("postgres://u@db/x");
    expect(loadConfig({ FLEETRUN_ADMIN_TOKEN: "a".repeat(20) }).adminToken).toBe("a".repeat(20));
  });

  it("validates the connection limits and the metrics token", () => {
    const d = loadConfig({});
    expect([d.headersTimeoutMs, d.idleTimeoutMs, d.maxConnectionsPerAddress, d.maxConnections, d.metricsToken]).toEqual([10_000, 72_000, 512, 10_000, null]);
    expect(loadConfig({ FLEETRUN_MAX_CONNECTIONS_PER_ADDRESS: "0" }).maxConnectionsPerAddress).toBe(0);
    expect(() => loadConfig({ FLEETRUN_HEADERS_TIMEOUT_MS: "0" })).toThrow(/^FLEETRUN_HEADERS_TIMEOUT_MS: must be an integer from 100 to/);
    expect(() => loadConfig({ FLEETRUN_IDLE_TIMEOUT_MS: "1s" })).toThrow(/^FLEETRUN_IDLE_TIMEOUT_MS: must be an integer/);
    expect(() => loadConfig({ FLEETRUN_MAX_CONNECTIONS_PER_ADDRESS: "-1" })).toThrow(/^FLEETRUN_MAX_CONNECTIONS_PER_ADDRESS: must be an integer/);
    expect(() => loadConfig({ FLEETRUN_METRICS_TOKEN: "short" })).toThrow(/^FLEETRUN_METRICS_TOKEN: must be at least 16 characters/);
  });

  it("checks FLEETRUN_SECRET_KEY's keys without echoing them, and refuses it together with FLEETRUN_SECRET_KEY_FILE", () => {
    const key = Buffer.alloc(32, 7).toString("base64");
    expect(loadConfig({ FLEETRUN_SECRET_KEY: `${key}, ${Buffer.alloc(32, 8).toString("base64")}` }).secretKey).toContain(key);
    expect(() => loadConfig({ FLEETRUN_SECRET_KEY: "dG9vLXNob3J0" })).toThrow(/^FLEETRUN_SECRET_KEY: the key is 9 bytes, not 32/);
    expect(() => loadConfig({ FLEETRUN_SECRET_KEY: `${key},${key}` })).toThrow(/^FLEETRUN_SECRET_KEY: key 2 of 2 is listed twice$/);
    expect(() => loadConfig({ FLEETRUN_SECRET_KEY: key, FLEETRUN_SECRET_KEY_FILE: "/etc/keys" })).toThrow(/not both/);
    try {
      loadConfig({ FLEETRUN_SECRET_KEY: "dG9vLXNob3J0" });
    } catch (err) {
      expect((err as Error).message).not.toContain("dG9vLXNob3J0");
    }
  });

  it("names FLEETRUN_ variables that are no setting, with the closest one", () => {
    expect(unknownSettings({ FLEETRUN_LOCAL_MACHINES: "1", FLEETRUN_PORT: "1", FLEETRUN_DATA_DIR: "/x", PATH: "/bin", FLEETRUN_ZZZZZZZZZZZZZZ: "" })).toEqual([
      { env: "FLEETRUN_LOCAL_MACHINES", suggestion: "FLEETRUN_LOCAL_MACHINE" },
      { env: "FLEETRUN_PORT", suggestion: "PORT" },
      { env: "FLEETRUN_ZZZZZZZZZZZZZZ", suggestion: null },
    ]);
  });

  it("leaves the CLI's variables alone", () => {
    expect(unknownSettings({ FLEETRUN_URL: "http://x", FLEETRUN_TOKEN: "t", FLEETRUN_PROFILE: "p", FLEETRUN_CONFIG: "/c" })).toEqual([]);
  });
});
