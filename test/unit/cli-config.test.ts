/**
 * The CLI's connection settings: the profile file's format, its permission
 * check (like ssh's for keys), precedence flags > env > profile, and the
 * output helpers (tables, colours, NO_COLOR).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ConfigError } from "../../src/cli/errors.ts";
import { colorsFor, renderFields, renderTable } from "../../src/cli/output.ts";
import { checkUrl, configPath, parseConfig, readConfig, resolveSettings, writeConfig } from "../../src/cli/profile.ts";
import { hostKeyFields } from "../../src/cli/commands/machines.ts";
import { HostKeyPolicy } from "../../src/gen/fleetrun/v1/machine_pb.js";

describe("profile file", () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-cli-config-"));
    file = path.join(dir, "fleetrun", "config");
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("lives under XDG_CONFIG_HOME, else ~/.config, unless FLEETRUN_CONFIG names it", () => {
    expect(configPath({ XDG_CONFIG_HOME: "/x/cfg" })).toBe("/x/cfg/fleetrun/config");
    expect(configPath({ HOME: os.homedir() })).toBe(path.join(os.homedir(), ".config/fleetrun/config"));
    expect(configPath({ FLEETRUN_CONFIG: "/y/z" })).toBe("/y/z");
  });

  it("parses named profiles and rejects unknown keys with the line number", () => {
    const p = parseConfig("# comment\n[default]\nurl = http://a:1\ntoken = t1\n\n[prod]\nurl=https://b\n", "f");
    expect(p.get("default")).toEqual({ url: "http://a:1", token: "t1" });
    expect(p.get("prod")).toEqual({ url: "https://b" });
    expect(() => parseConfig("[d]\npassword = x\n", "f")).toThrow(/^f:2: unknown key "password"/);
    expect(() => parseConfig("url = x\n", "f")).toThrow(/^f:1: expected \[profile\]/);
  });

  it("is written 0600 and read back; refused when group or others may read it", () => {
    writeConfig(file, new Map([["default", { url: "http://a:1", token: "secret-token" }]]));
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
    expect(readConfig(file)?.get("default")?.token).toBe("secret-token");
    fs.chmodSync(file, 0o644);
    expect(() => readConfig(file)).toThrow(ConfigError);
    expect(() => readConfig(file)).toThrow(/permissions 0644 for .* are too open.*chmod 600/);
    fs.chmodSync(file, 0o620);
    expect(() => readConfig(file)).toThrow(/too open/);
    expect(readConfig(path.join(dir, "missing"))).toBeUndefined();
  });

  it("resolves flags > environment > profile > default", () => {
    writeConfig(file, new Map([
      ["default", { url: "http://profile:1", token: "profile-token" }],
      ["prod", { url: "https://prod", token: "prod-token" }],
    ]));
    const env = { FLEETRUN_CONFIG: file };
    expect(resolveSettings({}, env)).toMatchObject({ url: "http://profile:1", token: "profile-token", profile: "default", source: { url: "profile", token: "profile" } });
    expect(resolveSettings({}, { ...env, FLEETRUN_URL: "http://env:2" })).toMatchObject({ url: "http://env:2", token: "profile-token", source: { url: "env" } });
    expect(resolveSettings({ url: "http://flag:3/" }, { ...env, FLEETRUN_URL: "http://env:2", FLEETRUN_TOKEN: "env-token" })).toMatchObject({ url: "http://flag:3", token: "env-token" });
    expect(resolveSettings({ token: "flag-token" }, { ...env, FLEETRUN_TOKEN: "env-token" }).token).toBe("flag-token");
    expect(resolveSettings({}, { ...env, FLEETRUN_PROFILE: "prod" })).toMatchObject({ url: "https://prod", token: "prod-token", profile: "prod" });
    expect(resolveSettings({ profile: "prod" }, env).url).toBe("https://prod");
    expect(() => resolveSettings({ profile: "nope" }, env)).toThrow(/no profile "nope" in .*\(profiles: default, prod\)/);
    expect(resolveSettings({}, { FLEETRUN_CONFIG: path.join(dir, "none") })).toMatchObject({ url: "http://localhost:8080", token: undefined, source: { url: "default", token: "none" } });
  });

  it("does not read the file when flags and environment say everything", () => {
    writeConfig(file, new Map([["default", { url: "http://p:1" }]]));
    fs.chmodSync(file, 0o644);
    expect(resolveSettings({}, { FLEETRUN_CONFIG: file, FLEETRUN_URL: "http://e:1", FLEETRUN_TOKEN: "t" }).url).toBe("http://e:1");
    expect(() => resolveSettings({}, { FLEETRUN_CONFIG: file, FLEETRUN_URL: "http://e:1" })).toThrow(/too open/);
  });

  it("checks URLs", () => {
    expect(checkUrl("https://h/")).toBe("https://h");
    expect(() => checkUrl("localhost:8080")).toThrow(/only http:\/\/ and https:\/\//);
    expect(() => checkUrl("nope")).toThrow(/bad service URL/);
    expect(() => checkUrl("http://user:pw@h")).toThrow(/not in the URL/);
  });
});

describe("output", () => {
  const plain = { paint: (_s: unknown, t: string) => t };

  it("renders borderless aligned tables without trailing spaces", () => {
    const t = renderTable(plain, ["ID", "STATUS"], [["cmd_1", "completed"], ["cmd_22222", "failed"]]);
    expect(t).toBe("ID         STATUS\ncmd_1      completed\ncmd_22222  failed\n");
    expect(renderFields(plain, [["id", "x"], ["status", "y"]])).toBe("id:     x\nstatus: y\n");
  });

  it("colours terminals only, never with NO_COLOR or TERM=dumb", () => {
    expect(colorsFor(true, {})).toBe(true);
    expect(colorsFor(false, {})).toBe(false);
    expect(colorsFor(true, { NO_COLOR: "1" })).toBe(false);
    expect(colorsFor(true, { NO_COLOR: "" })).toBe(true);
    expect(colorsFor(true, { TERM: "dumb" })).toBe(false);
  });
});

describe("machines add: host key", () => {
  it("pins a fingerprint, or asks for tofu or insecure_accept_any by name; exactly one is required", () => {
    expect(hostKeyFields({ fingerprint: "SHA256:abc" })).toEqual({ hostKeyFingerprint: "SHA256:abc", hostKeyPolicy: HostKeyPolicy.PINNED });
    expect(hostKeyFields({ fingerprint: "SHA256:abc", hostKeyAlgorithm: "ssh-ed25519" })).toEqual({ hostKeyFingerprint: "SHA256:abc", hostKeyPolicy: HostKeyPolicy.PINNED, hostKeyAlgorithm: "ssh-ed25519" });
    expect(hostKeyFields({ tofu: true })).toEqual({ hostKeyPolicy: HostKeyPolicy.TOFU });
    expect(hostKeyFields({ insecureAcceptAny: true })).toEqual({ hostKeyPolicy: HostKeyPolicy.INSECURE_ACCEPT_ANY });
    expect(() => hostKeyFields({})).toThrow(/--fingerprint SHA256:… .*, or choose --tofu/);
    expect(() => hostKeyFields({ fingerprint: "SHA256:abc", tofu: true })).toThrow(/--tofu/);
    expect(() => hostKeyFields({ tofu: true, insecureAcceptAny: true })).toThrow(/--tofu/);
    expect(() => hostKeyFields({ tofu: true, hostKeyAlgorithm: "ssh-rsa" })).toThrow(/goes with --fingerprint/);
  });
});
