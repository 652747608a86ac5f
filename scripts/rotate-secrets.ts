/**
 * Re-encrypts every stored credential under the newest secret key.
 *
 *   npm run rotate-secrets                      (same settings as npm start)
 *   npm run rotate-secrets -- --data-dir /srv/fleetrun
 *
 * Key rotation: put the new key first (FLEETRUN_SECRET_KEY=new,old, or the
 * same in the key file) and restart the service, so new writes use it and the
 * old values still open; run this; then drop the old key and restart. With
 * SQLite the service must be stopped (it holds the data dir); with PostgreSQL
 * it may run, as long as every replica already has the new key.
 */
import { ConfigError, loadConfig } from "../src/config.ts";
import { DataDirLockedError, lockDataDir } from "../src/data-dir-lock.ts";
import { openStores } from "../src/db/index.ts";
import { loadKeyRing, SecretKeyError } from "../src/secrets/index.ts";

async function main(): Promise<void> {
  const config = loadConfig(process.env, process.argv.slice(2));
  const lock = config.databaseUrl === null ? lockDataDir(config.dataDir) : null;
  try {
    const { box } = loadKeyRing(config);
    const stores = await openStores({ dataDir: config.dataDir, secrets: box, ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}) });
    try {
      const r = await stores.rotateSecrets();
      process.stdout.write(
        `re-encrypted ${r.resealed} value${r.resealed === 1 ? "" : "s"} of ${r.machines} machine${r.machines === 1 ? "" : "s"} under key ${r.keyId}; ` +
          `every credential is now under it, so older keys may be removed\n`,
      );
    } finally {
      await stores.close();
    }
  } finally {
    lock?.release();
  }
}

main().catch((err: unknown) => {
  if (err instanceof ConfigError || err instanceof SecretKeyError || err instanceof DataDirLockedError) {
    process.stderr.write(`fleetrun rotate-secrets: ${err.message}\n`);
    process.exit(2);
  }
  console.error("fleetrun rotate-secrets: failed:", err);
  process.exit(1);
});
