/**
 * `fleetrun login` checks a token against the service and saves it with the
 * URL in a profile of the config file (mode 0600); `fleetrun config list|path`
 * show what is saved (tokens shortened).
 */
import fs from "node:fs";
import { Code, ConnectError } from "@connectrpc/connect";
import { CliError, UsageError } from "../errors.ts";
import { EXIT } from "../exit-codes.ts";
import { createOut, parseOutputMode, printJson, renderTable } from "../output.ts";
import { DEFAULT_PROFILE, DEFAULT_URL, checkUrl, configPath, readConfig, writeConfig } from "../profile.ts";
import type { Profile } from "../profile.ts";
import { openSession } from "../session.ts";
import type { GlobalOptions } from "../session.ts";

export async function loginAction(_args: string[], opts: Record<string, unknown>, globals: GlobalOptions): Promise<number> {
  let token = globals.token ?? process.env.FLEETRUN_TOKEN;
  if (opts.withToken === true) {
    token = fs.readFileSync(0, "utf8").trim();
    if (token === "") throw new UsageError("--with-token: stdin was empty");
  }
  if (token === undefined) throw new UsageError("give the token on stdin with --with-token (fleetrun login --with-token < token-file), or in FLEETRUN_TOKEN");
  const profile = globals.profile ?? process.env.FLEETRUN_PROFILE ?? DEFAULT_PROFILE;
  const file = configPath();
  const profiles = readConfig(file) ?? new Map<string, Profile>();
  const url = checkUrl(globals.url ?? process.env.FLEETRUN_URL ?? profiles.get(profile)?.url ?? DEFAULT_URL);
  // Check the token before saving it: any authenticated call will do.
  const s = openSession({ ...globals, url, token, profile: undefined });
  try {
    await s.fleet.machines.listMachines({ limit: 1 });
  } catch (e) {
    // Authenticated, but its scope does not cover listing machines: still a good token.
    if (ConnectError.from(e).code !== Code.PermissionDenied) throw e;
  } finally {
    s.fleet.close();
  }
  profiles.set(profile, { ...profiles.get(profile), url, token });
  writeConfig(file, profiles);
  process.stderr.write(`fleetrun: logged in to ${url}; saved as profile ${profile} in ${file}\n`);
  return EXIT.ok;
}

export async function configListAction(_args: string[], _opts: Record<string, unknown>, globals: GlobalOptions): Promise<number> {
  const out = createOut(parseOutputMode(globals.output));
  const file = configPath();
  const profiles = readConfig(file);
  if (profiles === undefined) throw new CliError(`no config file at ${file} (fleetrun login writes one)`, EXIT.config);
  const rows = [...profiles].map(([name, p]) => ({ profile: name, url: p.url ?? null, token: p.token ? `${p.token.slice(0, 4)}…` : null }));
  if (out.mode !== "table") printJson(out, rows, rows);
  else out.write(renderTable(out, ["PROFILE", "URL", "TOKEN"], rows.map((r) => [r.profile, r.url ?? "-", r.token ?? "-"])));
  return EXIT.ok;
}

export async function configPathAction(): Promise<number> {
  process.stdout.write(`${configPath()}\n`);
  return EXIT.ok;
}
