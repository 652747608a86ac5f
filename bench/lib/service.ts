/**
 * The real service as a child process (`node src/main.ts`), with a REST
 * helper and machine registration against the bench fleet.
 */
import { spawn, type ChildProcess } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { restClient, type RestResponse } from "../../test/fixtures/service.ts";
import { onCleanup } from "./cleanup.ts";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const NODE = path.join(ROOT, "node_modules/.bin/node");
// A busy 2-core box (other test runs) has taken over 30 s to start the service.
const START_DEADLINE_MS = 90_000;
const STOP_DEADLINE_MS = 20_000;

export type { RestResponse };

export interface ServiceProcess {
  url: string;
  pid: number;
  child: ChildProcess;
  rest(method: string, urlPath: string, body?: unknown): Promise<RestResponse>;
  /** SIGTERM, then SIGKILL past the deadline; resolves once it exited. */
  stop(): Promise<void>;
  output(): string;
}

export interface ServiceOptions {
  dataDir: string;
  token: string;
  /** Extra environment (e.g. DATABASE_URL). */
  env?: Record<string, string>;
  /** Extra node flags (e.g. --cpu-prof). */
  nodeArgs?: string[];
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (typeof a === "object" && a ? resolve(a.port) : reject(new Error("no port"))));
    });
  });
}

export async function startServiceProcess(opts: ServiceOptions): Promise<ServiceProcess> {
  const port = await freePort();
  const child = spawn(NODE, [...(opts.nodeArgs ?? []), path.join(ROOT, "src/main.ts")], {
    cwd: ROOT,
    env: {
      ...process.env,
      PORT: String(port),
      HOST: "127.0.0.1",
      FLEETRUN_DATA_DIR: opts.dataDir,
      FLEETRUN_ADMIN_TOKEN: opts.token,
      FLEETRUN_LOG_LEVEL: "warn",
      ...opts.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const keep = (d: Buffer) => {
    out = (out + d.toString("utf8")).slice(-64 * 1024);
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const url = `http://127.0.0.1:${port}`;

  let stopping: Promise<void> | null = null;
  const stopNow = (): Promise<void> => {
    stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_DEADLINE_MS);
      await exited;
      clearTimeout(timer);
    })();
    return stopping;
  };
  const unregister = onCleanup(`service pid ${child.pid}`, stopNow);

  const rest = restClient(url, opts.token);

  const deadline = Date.now() + START_DEADLINE_MS;
  for (;;) {
    if (child.exitCode !== null) {
      await unregister();
      throw new Error(`the service exited during start:\n${out}`);
    }
    const ok = await fetch(url + "/healthz").then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) {
      await unregister();
      throw new Error(`the service did not answer /healthz within ${START_DEADLINE_MS} ms:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url, pid: child.pid as number, child, rest, stop: unregister, output: () => out };
}

export interface FleetTarget {
  port: number;
  addresses: string[];
  clientKey: { privateKey: string };
  hostKeys: { algorithm: string; fingerprint: string }[];
}

/**
 * Registers every fleet address as a machine (`username`, the client key, pinned
 * ed25519 fingerprint and key type); returns the ids in address order.
 */
export async function registerFleet(svc: ServiceProcess, fleet: FleetTarget, username: string): Promise<string[]> {
  const ed = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519");
  if (!ed) throw new Error("the fleet serves no ed25519 host key");
  const ids: string[] = new Array(fleet.addresses.length);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      const host = fleet.addresses[i];
      if (host === undefined) return;
      const r = await svc.rest("POST", "/v1/machines", {
        name: `bench-${host}`,
        host,
        port: fleet.port,
        username,
        private_key: fleet.clientKey.privateKey,
        host_key_fingerprint: ed.fingerprint,
        host_key_algorithm: "ssh-ed25519",
        labels: { bench: "1" },
      });
      if (r.status !== 201) throw new Error(`register ${host}: ${r.status} ${r.text}`);
      ids[i] = r.body.data.id as string;
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  return ids;
}
