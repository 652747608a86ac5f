// Bundles the `fleetrun` CLI (src/cli/main.ts with the client, the generated
// code, Connect and protobuf) into one file under node_modules/.cache, so that
// each start reads and compiles one module instead of a few hundred: it about
// halves the CLI's start-up (bench/README.md). Run by the package's postinstall
// and by `npm run build:cli`. Nothing here is committed, and nothing depends on
// it: src/cli/bin.js uses the bundle only while every source file it was built
// from is unchanged (same size and modification time), and runs the sources
// otherwise. Never fails the install: it prints one line instead.
import fs from "node:fs";
import path from "node:path";

const root = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), "..");
const outDir = path.join(root, "node_modules/.cache/fleetrun-cli");

let esbuild;
try {
  esbuild = await import("esbuild");
} catch {
  // Installed without dev dependencies: the CLI runs from its sources.
  process.exit(0);
}

try {
  fs.rmSync(outDir, { recursive: true, force: true });
  fs.mkdirSync(outDir, { recursive: true });
  const result = await esbuild.build({
    absWorkingDir: root,
    entryPoints: ["src/cli/main.ts"],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node24",
    // One chunk per subcommand group, loaded when it runs (as the sources are).
    splitting: true,
    outdir: outDir,
    outExtension: { ".js": ".mjs" },
    entryNames: "cli",
    metafile: true,
    logLevel: "silent",
    // CommonJS dependencies (cli-table3, cli-progress) call require().
    banner: { js: 'import { createRequire as __fleetrunRequire } from "node:module"; const require = __fleetrunRequire(import.meta.url);' },
  });
  const inputs = {};
  for (const file of Object.keys(result.metafile.inputs)) {
    const st = fs.statSync(path.join(root, file));
    inputs[file] = [st.mtimeMs, st.size];
  }
  fs.writeFileSync(path.join(outDir, "inputs.json"), JSON.stringify({ inputs }));
} catch (e) {
  fs.rmSync(outDir, { recursive: true, force: true });
  process.stderr.write(`fleetrun: the CLI bundle was not built (${String(e?.message ?? e).split("\n")[0]}); the CLI runs from its sources\n`);
}
