/**
 * What every subcommand that talks to the service gets: the typed client
 * (`fleetrun/client`, Connect over HTTP/1.1, or HTTP/2 with TLS), the output
 * settings, and the lookups they share (a machine by id or name).
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { createFleetrunClient } from "../client/index.ts";
import type { FleetrunClient } from "../client/index.ts";
import type { Machine } from "../gen/fleetrun/v1/machine_pb.js";
import { CliError } from "./errors.ts";
import { EXIT } from "./exit-codes.ts";
import { createOut, parseOutputMode } from "./output.ts";
import type { Out } from "./output.ts";
import { resolveSettings } from "./profile.ts";
import type { GlobalFlags, Settings } from "./profile.ts";

export interface GlobalOptions extends GlobalFlags {
  output?: string | undefined;
}

export interface Session {
  readonly fleet: FleetrunClient;
  readonly settings: Settings;
  readonly out: Out;
}

/** Unary calls get this deadline; streams (run, follow, batch) none. */
const UNARY_TIMEOUT_MS = 60_000;

export function openSession(opts: GlobalOptions): Session {
  const out = createOut(parseOutputMode(opts.output));
  const settings = resolveSettings(opts);
  if (settings.token === undefined) {
    throw new CliError(
      `unauthenticated: no token for ${settings.url}: set FLEETRUN_TOKEN, pass --token, or save one with fleetrun login (profile ${settings.profile})`,
      EXIT.auth,
    );
  }
  const fleet = createFleetrunClient({
    baseUrl: settings.url,
    token: settings.token,
    protocol: "connect",
    httpVersion: settings.url.startsWith("https:") ? "2" : "1.1",
    timeoutMs: UNARY_TIMEOUT_MS,
    headers: { "user-agent": "fleetrun-cli" },
  });
  return { fleet, settings, out };
}

const MACHINE_ID = /^mach_[A-Za-z0-9]+$/;
const PAGE = 1000;

/** All machines (optionally those carrying every label of `selector`), page by page. */
export async function listAllMachines(fleet: FleetrunClient, selector?: string): Promise<Machine[]> {
  const all: Machine[] = [];
  for (let offset = 0; ; offset += PAGE) {
    const page = await fleet.machines.listMachines({ limit: PAGE, offset, ...(selector !== undefined ? { labelSelector: selector } : {}) });
    all.push(...page.data);
    if (page.data.length < PAGE || all.length >= Number(page.meta?.total ?? 0)) return all;
  }
}

/** `MACHINE` as users type it: an id (`mach_…`) or a machine's name. */
export async function resolveMachine(fleet: FleetrunClient, ref: string): Promise<Machine> {
  if (MACHINE_ID.test(ref)) {
    try {
      return await fleet.machines.getMachine({ id: ref });
    } catch (e) {
      if (ConnectError.from(e).code !== Code.NotFound) throw e;
      // Perhaps a machine whose name looks like an id.
    }
  }
  const [machine] = await resolveMachines(fleet, [ref]);
  return machine!;
}

/** Several refs at once: one listing for all names, ids taken as they are. */
export async function resolveMachines(fleet: FleetrunClient, refs: readonly string[]): Promise<Machine[]> {
  const all = await listAllMachines(fleet);
  const missing: string[] = [];
  const found: Machine[] = [];
  for (const ref of refs) {
    const m = all.find((x) => x.id === ref) ?? all.find((x) => x.name === ref);
    if (m) found.push(m);
    else missing.push(ref);
  }
  if (missing.length > 0) {
    throw new CliError(`not_found: no machine with the id or name ${missing.map((m) => JSON.stringify(m)).join(", ")} (fleetrun machines list)`, EXIT.refused);
  }
  return found;
}

/** The machine id for a ref, without a round trip when it is already an id. */
export async function machineIdOf(fleet: FleetrunClient, ref: string): Promise<string> {
  return MACHINE_ID.test(ref) ? ref : (await resolveMachine(fleet, ref)).id;
}
