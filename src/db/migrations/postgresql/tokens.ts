import { Migration } from "@mikro-orm/migrations";

/** PostgreSQL: scoped tokens (secrets stored as SHA-256 digests only) and who cancelled a command. */
export class Tokens extends Migration {
  override up(): void {
    this.addSql(`create table tokens (
      id text collate "C" not null primary key,
      name text not null,
      secret_hash text not null,
      scope text not null,
      limits text not null,
      bootstrap boolean not null,
      created_by text null,
      created_at bigint not null,
      expires_at bigint null,
      last_used_at bigint null,
      revoked_at bigint null
    )`);
    this.addSql(`create unique index tokens_secret_hash_unique on tokens (secret_hash)`);
    // A name is one token's at a time: it is what commands record as requested_by.
    this.addSql(`create unique index tokens_active_name_unique on tokens (name) where revoked_at is null`);
    this.addSql(`create index tokens_created_at_id_index on tokens (created_at, id)`);
    this.addSql(`alter table commands add column cancelled_by text null`);
  }
}
