/**
 * Where the CLI finds the service and its token: flags, then the environment
 * (`FLEETRUN_URL`, `FLEETRUN_TOKEN`, `FLEETRUN_PROFILE`), then a named profile
 * of the config file (`$XDG_CONFIG_HOME/fleetrun/config`, default
 * `~/.config/fleetrun/config`, or `FLEETRUN_CONFIG`):
 *
 * ```ini
 * [default]
 * url = http://localhost:8080
 * token = frt_…
 *
 * [prod]
 * url = https://fleetrun.example.com
 * token = frt_…
 * ```
 *
 * Like ssh with private keys, the file is refused while group or others may
 * read or write it; `fleetrun login` writes it with mode 0600.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ConfigError } from "./errors.ts";

export const DEFAULT_URL = "http://localhost:8080";
export const DEFAULT_PROFILE = "default";
const KEYS = ["url", "token"] as const;
export type ProfileKey = (typeof KEYS)[number];
export type Profile = Partial<Record<ProfileKey, string>>;

/** The connection settings a command runs with, and where each came from. */
export interface Settings {
  url: string;
  token: string | undefined;
  profile: string;
  source: { url: "flag" | "env" | "profile" | "default"; token: "flag" | "env" | "profile" | "none" };
}

export interface GlobalFlags {
  url?: string | undefined;
  token?: string | undefined;
  profile?: string | undefined;
}

/** The config file's path for this environment. */
export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.FLEETRUN_CONFIG) return env.FLEETRUN_CONFIG;
  const base = env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : path.join(os.homedir(), ".config");
  return path.join(base, "fleetrun", "config");
}

/** Parses the INI-style file: `[name]` sections of `key = value` lines, `#`/`;` comments. */
export function parseConfig(text: string, file: string): Map<string, Profile> {
  const profiles = new Map<string, Profile>();
  let current: Profile | undefined;
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const section = /^\[\s*([^\]\s]+)\s*\]$/.exec(line);
    if (section) {
      current = profiles.get(section[1]!) ?? {};
      profiles.set(section[1]!, current);
      continue;
    }
    const eq = line.indexOf("=");
    if (eq <= 0 || current === undefined) throw new ConfigError(`${file}:${i + 1}: expected [profile] or key = value`);
    const key = line.slice(0, eq).trim();
    if (!(KEYS as readonly string[]).includes(key)) throw new ConfigError(`${file}:${i + 1}: unknown key ${JSON.stringify(key)} (known: ${KEYS.join(", ")})`);
    current[key as ProfileKey] = line.slice(eq + 1).trim();
  }
  return profiles;
}

export function formatConfig(profiles: Map<string, Profile>): string {
  const parts: string[] = [];
  for (const [name, p] of profiles) {
    parts.push(`[${name}]\n${KEYS.filter((k) => p[k] !== undefined).map((k) => `${k} = ${p[k]}`).join("\n")}\n`);
  }
  return parts.join("\n");
}

/** Reads the file; undefined when there is none. Refuses one that group or others may access. */
export function readConfig(file: string): Map<string, Profile> | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new ConfigError(`cannot read ${file}: ${(e as Error).message}`);
  }
  try {
    const mode = fs.fstatSync(fd).mode & 0o777;
    if ((mode & 0o077) !== 0) {
      throw new ConfigError(
        `permissions ${mode.toString(8).padStart(4, "0")} for ${file} are too open: it holds tokens, so only you may read it (chmod 600 ${file})`,
      );
    }
    return parseConfig(fs.readFileSync(fd, "utf8"), file);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes the file atomically with mode 0600 (its directory 0700 when created). */
export function writeConfig(file: string, profiles: Map<string, Profile>): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, formatConfig(profiles), { mode: 0o600 });
  fs.chmodSync(tmp, 0o600);
  fs.renameSync(tmp, file);
}

/** Flags > environment > profile > defaults. The file is read only when a value is still missing or a profile was named. */
export function resolveSettings(flags: GlobalFlags, env: NodeJS.ProcessEnv = process.env): Settings {
  const named = flags.profile ?? env.FLEETRUN_PROFILE;
  const profileName = named ?? DEFAULT_PROFILE;
  let url: string | undefined = flags.url ?? env.FLEETRUN_URL;
  let token: string | undefined = flags.token ?? env.FLEETRUN_TOKEN;
  const source: Settings["source"] = {
    url: flags.url !== undefined ? "flag" : env.FLEETRUN_URL !== undefined ? "env" : "default",
    token: flags.token !== undefined ? "flag" : env.FLEETRUN_TOKEN !== undefined ? "env" : "none",
  };
  if (url === undefined || token === undefined || named !== undefined) {
    const file = configPath(env);
    const profiles = readConfig(file);
    const profile = profiles?.get(profileName);
    if (profile === undefined && named !== undefined) {
      const known = profiles ? [...profiles.keys()].join(", ") : "";
      throw new ConfigError(`no profile ${JSON.stringify(profileName)} in ${file}${known ? ` (profiles: ${known})` : " (run fleetrun login --profile " + profileName + ")"}`);
    }
    if (url === undefined && profile?.url !== undefined) {
      url = profile.url;
      source.url = "profile";
    }
    if (token === undefined && profile?.token !== undefined) {
      token = profile.token;
      source.token = "profile";
    }
  }
  return { url: checkUrl(url ?? DEFAULT_URL), token: token === "" ? undefined : token, profile: profileName, source };
}

/** `http(s)://host[:port]` without a trailing slash. */
export function checkUrl(text: string): string {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new ConfigError(`bad service URL ${JSON.stringify(text)}: expected http://host:port or https://host`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new ConfigError(`bad service URL ${JSON.stringify(text)}: only http:// and https:// are supported`);
  if (u.username !== "" || u.password !== "") throw new ConfigError("bad service URL: put the token in FLEETRUN_TOKEN or --token, not in the URL");
  return text.replace(/\/+$/, "");
}
