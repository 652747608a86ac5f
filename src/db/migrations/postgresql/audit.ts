import { Migration } from "@mikro-orm/migrations";

/**
 * PostgreSQL: the append-only audit log and its chain state (the retention
 * anchor and the head, one row). See src/db/audit-chain.ts for the hashes.
 */
export class Audit extends Migration {
  override up(): void {
    this.addSql(`create table audit_events (
      seq bigint not null primary key,
      time bigint not null,
      actor text not null,
      action text not null,
      outcome text not null,
      machine_id text null,
      command_id text null,
      batch_id text null,
      client_address text null,
      detail text null,
      command text null,
      prev_hash text not null,
      hash text not null
    )`);
    this.addSql(`create index audit_events_time_index on audit_events (time)`);
    this.addSql(`create index audit_events_actor_index on audit_events (actor, seq)`);
    this.addSql(`create index audit_events_machine_index on audit_events (machine_id, seq)`);
    this.addSql(`create index audit_events_command_index on audit_events (command_id, seq)`);
    // Append-only in the schema too: an UPDATE is refused (retention only deletes).
    this.addSql(`create function audit_events_append_only() returns trigger language plpgsql as $$
      begin raise exception 'audit_events is append-only'; end $$`);
    this.addSql(`create trigger audit_events_append_only before update on audit_events
      for each row execute function audit_events_append_only()`);
    this.addSql(`create table audit_chain_state (
      id integer not null primary key,
      pruned_seq bigint not null,
      pruned_hash text not null,
      head_seq bigint not null,
      head_hash text not null
    )`);
    this.addSql(`insert into audit_chain_state (id, pruned_seq, pruned_hash, head_seq, head_hash) values (1, 0, '${"0".repeat(64)}', 0, '${"0".repeat(64)}')`);
  }
}
