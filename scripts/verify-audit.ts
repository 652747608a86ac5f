/**
 * Checks the audit trail's hash chain in the service's database (the same
 * settings as the service: DATABASE_URL, FLEETRUN_DATA_DIR or their flags).
 *
 *   npm run verify-audit
 *   npm run verify-audit -- --data-dir /srv/fleetrun
 *   npm run verify-audit -- --head 1234:9f86d081…   (a head kept outside the database)
 *
 * Exit 0: the chain is intact; it prints the head (`SEQ:HASH`) to keep
 * somewhere else for the next run. Exit 1: the chain is broken; it names
 * the first bad record and why. Exit 2: bad arguments or no database.
 * Safe while the service runs (it only reads).
 */
import fs from "node:fs";
import path from "node:path";
import { loadConfig, ConfigError } from "../src/config.ts";
import { openStores } from "../src/db/index.ts";

function usage(message: string): never {
  process.stderr.write(`verify-audit: ${message}\nusage: npm run verify-audit -- [--head SEQ:HASH] [service settings such as --data-dir DIR]\n`);
  process.exit(2);
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  let expectHead: { seq: number; hash: string } | undefined;
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") usage("checks the audit trail's hash chain");
    if (arg === "--head" || arg.startsWith("--head=")) {
      const v = arg === "--head" ? argv[++i] : arg.slice("--head=".length);
      const m = v === undefined ? null : /^(\d+):([0-9a-f]{64})$/.exec(v);
      if (m === null) usage("--head must be SEQ:HASH as printed by an earlier run (64 lowercase hex digits)");
      expectHead = { seq: Number(m[1]), hash: m[2]! };
      continue;
    }
    rest.push(arg);
  }
  let config;
  try {
    config = loadConfig(process.env, rest);
  } catch (err) {
    if (err instanceof ConfigError) usage(err.message);
    throw err;
  }
  const sqliteFile = path.join(config.dataDir, "fleetrun.db");
  if (!config.databaseUrl && !fs.existsSync(sqliteFile)) usage(`no database at ${sqliteFile}: set FLEETRUN_DATA_DIR (or --data-dir) or DATABASE_URL as for the service`);
  let stores;
  try {
    // Read only: no migrations (the service applies them).
    stores = await openStores({ dataDir: config.dataDir, migrate: false, ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}) });
  } catch (err) {
    const reason = err instanceof Error ? err.message.split("\n")[0]! : String(err);
    usage(`cannot open the database (${config.databaseUrl ? reason.replaceAll(config.databaseUrl, "DATABASE_URL") : reason})`);
  }
  try {
    const audit = stores.audit;
    if (!audit) usage("this database has no audit trail");
    const r = await audit.verify(expectHead ? { expectHead } : {});
    if (!r.ok) {
      process.stderr.write(`audit chain BROKEN at record ${r.brokenSeq}: ${r.reason} (${r.records} records checked)\n`);
      return 1;
    }
    const range = r.firstSeq === null ? "no records" : `records ${r.firstSeq}–${r.lastSeq}`;
    process.stdout.write(`audit chain ok: ${r.records} records checked (${range})${expectHead ? `, holds head ${expectHead.seq}` : ""}\n`);
    if (r.lastSeq !== null) process.stdout.write(`head ${r.lastSeq}:${r.lastHash}\n`);
    return 0;
  } finally {
    await stores.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`verify-audit: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(2);
  },
);
