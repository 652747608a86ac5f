import { Migration } from "@mikro-orm/migrations";

/** SQLite: machines, batches, commands, their output chunks and per-machine counts. */
export class InitialSchema extends Migration {
  override up(): void {
    this.addSql(`create table machines (
      id text not null primary key,
      name text not null,
      host text not null,
      port integer not null,
      username text not null,
      private_key text null,
      passphrase text null,
      password text null,
      host_key_fingerprint text null,
      host_key_algorithm text null,
      labels text not null,
      created_at bigint not null,
      updated_at bigint not null
    )`);
    this.addSql(`create unique index machines_name_unique on machines (name)`);
    this.addSql(`create index machines_created_at_id_index on machines (created_at, id)`);

    this.addSql(`create table batches (
      id text not null primary key,
      command text not null,
      status text not null,
      machine_ids text not null,
      max_concurrency integer not null,
      max_errors integer not null,
      requested_by text not null,
      created_at bigint not null,
      finished_at bigint null
    )`);

    this.addSql(`create table commands (
      id text not null primary key,
      machine_id text not null,
      command text not null,
      cwd text null,
      env_keys text not null,
      run_as text null,
      timeout_ms bigint not null,
      status text not null,
      exit_code integer null,
      signal text null,
      stdout_bytes bigint not null,
      stderr_bytes bigint not null,
      stdout_truncated integer not null,
      stderr_truncated integer not null,
      log_bytes bigint not null,
      duration_ms bigint null,
      created_at bigint not null,
      started_at bigint null,
      finished_at bigint null,
      error_code text null,
      error_message text null,
      batch_id text null,
      requested_by text not null,
      runner text null,
      sync integer not null
    )`);
    this.addSql(`create index commands_history_index on commands (machine_id, created_at desc, id desc)`);
    this.addSql(`create index commands_status_index on commands (status, machine_id)`);
    this.addSql(`create index commands_batch_index on commands (batch_id, created_at, id)`);

    this.addSql(`create table command_output (
      command_id text not null references commands (id) on delete cascade,
      byte_offset bigint not null,
      stream text not null,
      data blob not null,
      primary key (command_id, byte_offset)
    )`);

    this.addSql(`create table machine_command_counts (
      machine_id text not null primary key,
      total bigint not null
    )`);
  }
}
