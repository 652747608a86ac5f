#!/bin/sh
':' //; n="${0%/*}/node"; [ -x "$n" ] || { n="$(dirname "$(readlink -f "$0")")/../../node_modules/.bin/node"; [ -x "$n" ] || n=node; }; exec "$n" "$0" "$@"
// The `fleetrun` command (package.json `bin`). The line above is for sh: it
// runs this file with the project's Node 24 (node_modules/.bin/node, found next
// to the node_modules/.bin/fleetrun link without a fork, else from this file's
// real path) when it is there, so `node_modules/.bin/fleetrun` works without
// Node 24 on PATH; for Node it is a string and a comment. Plain JavaScript, so that an older Node
// can say what is wrong in one line.
import fs from "node:fs";
import module from "node:module";

var major = Number(process.versions.node.split(".")[0]);
if (major < 24) {
  process.stderr.write("fleetrun needs Node 24 (this is Node " + process.versions.node + "): run npm ci, then npx fleetrun\n");
  process.exit(78);
}
// Compiled code of the CLI and its dependencies is cached on disk (os.tmpdir()):
// later starts skip most of the parsing and compiling.
module.enableCompileCache?.();
const { main } = await import(entry());
await main(process.argv.slice(2));

// The bundle scripts/build-cli.js made at install (one module instead of a few
// hundred: a faster start), while every file it was built from is unchanged;
// else the sources. FLEETRUN_CLI_FROM_SOURCE=1 always runs the sources.
function entry() {
  if (process.env.FLEETRUN_CLI_FROM_SOURCE === "1") return "./main.ts";
  const root = new URL("../../", import.meta.url);
  const dir = new URL("node_modules/.cache/fleetrun-cli/", root);
  try {
    const { inputs } = JSON.parse(fs.readFileSync(new URL("inputs.json", dir), "utf8"));
    for (const [file, [mtimeMs, size]] of Object.entries(inputs)) {
      const st = fs.statSync(new URL(file, root));
      if (st.mtimeMs !== mtimeMs || st.size !== size) return "./main.ts";
    }
    return new URL("cli.mjs", dir).href;
  } catch {
    return "./main.ts";
  }
}
