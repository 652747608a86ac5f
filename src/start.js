// `npm start`'s entry: plain JavaScript so that any Node can read it. fleetrun is
// TypeScript run by Node 24's type stripping; an older Node (a system Node 20 when
// node_modules, which brings Node 24, is not installed yet) would fail with
// ERR_UNKNOWN_FILE_EXTENSION, so say what to do in one line instead.
var major = Number(process.versions.node.split(".")[0]);
if (major < 24) {
  process.stderr.write("fleetrun needs Node 24 (this is Node " + process.versions.node + "): run bash scripts/start.sh or npm ci\n");
  process.exit(2);
}
await import("./main.ts");
