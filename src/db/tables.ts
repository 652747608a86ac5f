/**
 * Row shapes of the tables as the drivers return them, for the Kysely
 * queries of the hot paths. `bigint` columns come back as numbers from
 * SQLite and as strings from PostgreSQL; booleans as 0/1 from SQLite.
 */
type Int = number | string;
type Bool = boolean | number;

export interface MachineRow {
  id: string;
  name: string;
  host: string;
  port: number;
  username: string;
  private_key: string | null;
  passphrase: string | null;
  password: string | null;
  host_key_fingerprint: string | null;
  host_key_algorithm: string | null;
  host_key_policy: string;
  labels: string;
  created_at: Int;
  updated_at: Int;
}

export interface CommandRow {
  id: string;
  machine_id: string;
  command: string;
  cwd: string | null;
  env_keys: string;
  run_as: string | null;
  timeout_ms: Int;
  status: string;
  exit_code: number | null;
  signal: string | null;
  stdout_bytes: Int;
  stderr_bytes: Int;
  stdout_truncated: Bool;
  stderr_truncated: Bool;
  log_bytes: Int;
  duration_ms: Int | null;
  created_at: Int;
  started_at: Int | null;
  finished_at: Int | null;
  error_code: string | null;
  error_message: string | null;
  batch_id: string | null;
  requested_by: string;
  cancelled_by: string | null;
  runner: string | null;
  sync: Bool;
}

export interface OutputChunkRow {
  command_id: string;
  byte_offset: Int;
  stream: string;
  data: Buffer;
}

export interface MachineCommandCountRow {
  machine_id: string;
  total: Int;
}

export interface TokenRow {
  id: string;
  name: string;
  secret_hash: string;
  scope: string;
  limits: string;
  bootstrap: Bool;
  created_by: string | null;
  created_at: Int;
  expires_at: Int | null;
  last_used_at: Int | null;
  revoked_at: Int | null;
}

export interface Tables {
  machines: MachineRow;
  commands: CommandRow;
  command_output: OutputChunkRow;
  machine_command_counts: MachineCommandCountRow;
  tokens: TokenRow;
}
