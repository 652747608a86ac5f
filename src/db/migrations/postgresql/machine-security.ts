import { Migration } from "@mikro-orm/migrations";

/**
 * Machines get a host key policy. Rows that have a fingerprint become
 * `pinned` (they were checked against it already); rows without one become
 * `tofu`: their next connection records the key the server presents and pins
 * it (before, they accepted any key at every connection). Credentials stored
 * in clear text by earlier versions are encrypted at the next start, which
 * holds the key (see `src/db/machine-secrets.ts`); this migration only
 * changes the schema.
 */
export class MachineSecurity extends Migration {
  override up(): void {
    this.addSql(`alter table machines add column host_key_policy text not null default 'tofu'`);
    this.addSql(`update machines set host_key_fingerprint = null where host_key_fingerprint = ''`);
    this.addSql(`update machines set host_key_policy = 'pinned' where host_key_fingerprint is not null`);
  }
}
