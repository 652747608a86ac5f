/**
 * Bare ssh2 fan-out: connect to every host in parallel, exec one command on
 * each, disconnect. Run as its own process (a cold start, like the service's
 * cold batch). Prints one JSON line: {ms, ok, failed, errors}; `ms` is from
 * the first connect to the last result (process start-up excluded).
 *
 *   node bench/ssh2-fanout.ts <spec.json>
 *   spec: {hosts: string[], port, username, privateKeyFile, fingerprint, command}
 */
import { readFileSync } from "node:fs";
import { connectExec } from "./lib/ssh2-client.ts";

interface Spec {
  hosts: string[];
  port: number;
  username: string;
  privateKeyFile: string;
  fingerprint: string;
  command: string;
}

const specFile = process.argv[2];
if (specFile === undefined) {
  console.error("usage: node bench/ssh2-fanout.ts <spec.json>");
  process.exit(2);
}
// A floor must finish: with every handshake started at once on a slow box,
// ssh2's default 20 s readyTimeout cut some of them off.
const HANDSHAKE_TIMEOUT_MS = 120_000;

const spec = JSON.parse(readFileSync(specFile, "utf8")) as Spec;
const privateKey = readFileSync(spec.privateKeyFile, "utf8");

const t0 = performance.now();
const results = await Promise.allSettled(
  spec.hosts.map((host) =>
    connectExec({ host, port: spec.port, username: spec.username, privateKey, fingerprint: spec.fingerprint }, spec.command, HANDSHAKE_TIMEOUT_MS),
  ),
);
const ms = performance.now() - t0;
let ok = 0;
const errors: string[] = [];
for (const r of results) {
  if (r.status === "fulfilled" && r.value.code === 0) ok++;
  else if (errors.length < 5) errors.push(r.status === "rejected" ? String(r.reason) : `exit ${r.value.code}: ${r.value.stderr}`);
}
process.stdout.write(JSON.stringify({ ms, ok, failed: spec.hosts.length - ok, errors }) + "\n");
