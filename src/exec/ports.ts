/**
 * The ports the domain needs from the outside world. `src/ssh` implements
 * `Transport`, `src/db` implements the stores. Nothing here depends on ssh2,
 * MikroORM, Connect or fastify.
 */
import type { Readable } from "node:stream";
import type { TokenStore } from "./tokens.ts";

export type CommandStatus =
  | "queued"
  | "running"
  | "completed"
  | "failed"
  | "timed_out"
  | "cancelled"
  | "skipped"
  | "lost";

export const TERMINAL_STATUSES: readonly CommandStatus[] = [
  "completed",
  "failed",
  "timed_out",
  "cancelled",
  "skipped",
  "lost",
];

export function isTerminal(status: CommandStatus): boolean {
  return TERMINAL_STATUSES.includes(status);
}

export type OutputStreamName = "stdout" | "stderr";

/**
 * How a machine's host key is checked, during key exchange and before any
 * credential is sent. `pinned`: it must have the stored fingerprint. `tofu`:
 * the first key seen is recorded (compare-and-set) and the machine becomes
 * `pinned`. `insecure_accept_any`: any key, audited at every connection.
 */
export type HostKeyPolicy = "pinned" | "tofu" | "insecure_accept_any";

export const HOST_KEY_POLICIES: readonly HostKeyPolicy[] = ["pinned", "tofu", "insecure_accept_any"];

/** A registered machine, credentials included: never leaves the service. */
export interface MachineRecord {
  id: string;
  name: string;
  host: string;
  port: number;
  username: string;
  privateKey: string | null;
  passphrase: string | null;
  password: string | null;
  /** `SHA256:<base64 without padding>`, as `ssh-keygen -lf` prints it. */
  hostKeyFingerprint: string | null;
  /** The key type the fingerprint belongs to (e.g. `ssh-ed25519`), once known. */
  hostKeyAlgorithm: string | null;
  /** Null only for the built-in machine, which is not reached over SSH. */
  hostKeyPolicy: HostKeyPolicy | null;
  labels: Record<string, string>;
  createdAt: Date;
  updatedAt: Date;
}

/** What a transport needs to reach a machine. */
export interface MachineTarget {
  id: string;
  host: string;
  port: number;
  username: string;
  privateKey: string | null;
  passphrase: string | null;
  password: string | null;
  hostKeyFingerprint: string | null;
  hostKeyAlgorithm: string | null;
  /** Null: no policy (the built-in machine); an SSH transport then requires a fingerprint. */
  hostKeyPolicy: HostKeyPolicy | null;
  /** The built-in machine: runs on the service's own host without SSH. */
  local?: boolean;
}

/** How a remote process ended, as the SSH channel reported it. */
export interface ExitInfo {
  /** Exit code; null when the channel closed without one. */
  code: number | null;
  /** Signal name without `SIG` as OpenSSH reports it (`TERM`), or null. */
  signal: string | null;
}

/** One process started on a target by `Transport.exec`. */
export interface RemoteProcess {
  stdout: Readable;
  stderr: Readable;
  /**
   * Settles when the channel is closed and both streams have ended. Rejects
   * with a `TargetError` (`connection_lost`) when the connection dies first.
   */
  done: Promise<ExitInfo>;
  /** Closes the channel. Does NOT kill what runs on the target. */
  close(): void;
}

export interface ExecOptions {
  /** Written to the process's stdin, which is then closed. */
  stdin?: string | Buffer;
  /** Aborting closes the channel (it does not kill the remote processes). */
  signal?: AbortSignal;
}

export interface ProbeResult {
  /** Connect (or reuse) + authenticate + run `true`, in milliseconds. */
  latencyMs: number;
  hostKeyFingerprint: string | null;
  hostKeyAlgorithm: string | null;
}

export interface TransportStats {
  connections: number;
  channels: number;
}

/** SSH handshakes in progress and waiting for a slot (the pacer's queue). */
export interface HandshakeStats {
  active: number;
  queued: number;
  /** Bound of `queued` for new starts. */
  maxQueued: number;
}

/**
 * A place for a new start in the transport's handshake queue, held from
 * admission until the start reaches `exec` (or gives up). `release` is
 * idempotent.
 */
export interface StartReservation {
  release(): void;
}

/**
 * Runs processes on targets. `commandLine` is fixed text chosen by the
 * domain (never request data); everything request-specific travels on stdin.
 * Failures to connect reject with a `TargetError` whose reason is
 * `unreachable`, `auth_failed`, `host_key_mismatch` or `spawn_failed`.
 */
export interface Transport {
  exec(target: MachineTarget, commandLine: string, options?: ExecOptions): Promise<RemoteProcess>;
  probe(target: MachineTarget): Promise<ProbeResult>;
  /** Drops pooled connections of a machine (after its credentials changed or it was deleted). */
  forget(machineId: string): void;
  stats(): TransportStats;
  /**
   * Admission of a new start on `target`, synchronous: null when it would need
   * a new connection whose handshake would have to wait in a full queue;
   * otherwise a reservation to release once `exec` was called. Transports
   * without handshakes leave it out.
   */
  reserveStart?(target: MachineTarget): StartReservation | null;
  /** Where host keys of `tofu` machines are recorded and checks reported (SSH transports). */
  useHostKeyTrust?(trust: HostKeyTrust): void;
  handshakeStats?(): HandshakeStats;
  close(): Promise<void>;
}

/** Where a command's remote job lives, for cancel and re-attach. */
export interface RunnerState {
  /**
   * `spool`: detached job with output spooled on the target (re-attachable).
   * `direct`: output streamed straight over the channel while a caller waits
   * (lighter; cannot be re-attached). Absent means `spool`.
   */
  mode?: "spool" | "direct";
  /** Job directory on the target, relative to the login user's home (spool). */
  jobDir: string;
  /** Run-as user, when the command runs through sudo. */
  user: string | null;
  /** Process group of the command on the target, once known (direct). */
  pgid?: number;
  /** Start time (clock ticks since boot) of that group's leader: tells it from a reused id. */
  pgidStart?: string;
  /**
   * Spool: true from the transition to `running` until the target answered
   * that the job exists. A job still `starting` whose directory is gone never
   * started (absent on older records: then its outcome is unknown).
   */
  starting?: boolean;
}

export interface CommandRecord {
  id: string;
  machineId: string;
  command: string;
  cwd: string | null;
  envKeys: string[];
  user: string | null;
  timeoutMs: number;
  status: CommandStatus;
  exitCode: number | null;
  signal: string | null;
  stdoutBytes: number;
  stderrBytes: number;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Total bytes of the combined output log (stdout + stderr). */
  logBytes: number;
  durationMs: number | null;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
  errorCode: string | null;
  errorMessage: string | null;
  batchId: string | null;
  requestedBy: string;
  /** Name of the token that asked to cancel it (`system`: the service itself); null when nobody did. */
  cancelledBy: string | null;
  /** Remote job location; set when the command starts. */
  runner: RunnerState | null;
  /** Whether the command was started by a caller that waits for it (Execute, Batch). */
  sync: boolean;
}

/** One stored piece of the combined output log. */
export interface OutputChunkRecord {
  offset: number;
  stream: OutputStreamName;
  data: Buffer;
}

export interface OutputCounters {
  stdoutBytes: number;
  stderrBytes: number;
  logBytes: number;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
}

export interface HistoryQuery {
  machineId: string;
  since: Date | null;
  limit: number;
  offset: number;
  /** Opaque keyset cursor from a previous page; replaces offset. */
  cursor: string | null;
  status: CommandStatus | null;
  exitCode: number | null;
  requestedBy: string | null;
}

export interface HistoryPage {
  items: CommandRecord[];
  total: number;
  nextCursor: string | null;
}

export interface CommandStore {
  insert(cmd: CommandRecord): Promise<void>;
  insertMany(cmds: CommandRecord[]): Promise<void>;
  get(id: string): Promise<CommandRecord | null>;
  /**
   * Applies `patch` only while the command's status is one of `from`.
   * Returns whether it was applied (compare-and-set on status).
   */
  transition(id: string, from: readonly CommandStatus[], patch: Partial<CommandRecord>): Promise<boolean>;
  /**
   * In one transaction: stores `chunks`, deletes the chunks at `dropOffsets`
   * (a truncated middle) and sets the counters.
   */
  appendOutput(id: string, chunks: OutputChunkRecord[], dropOffsets: number[], counters: OutputCounters): Promise<void>;
  /** Stored chunks whose range ends after `fromOffset`, in offset order, up to about `maxBytes`. */
  readOutput(id: string, fromOffset: number, maxBytes: number): Promise<OutputChunkRecord[]>;
  /** Commands in `queued` or `running`. */
  listActive(): Promise<CommandRecord[]>;
  countActiveOnMachine(machineId: string): Promise<number>;
  history(query: HistoryQuery): Promise<HistoryPage>;
  listByBatch(batchId: string): Promise<CommandRecord[]>;
  /**
   * Retention: deletes terminal commands (and their output) created before
   * `olderThan`, and beyond the newest `keepPerMachine` of each machine.
   * Returns how many were deleted.
   */
  prune(options: { olderThan: Date | null; keepPerMachine: number | null }): Promise<number>;
}

export interface MachineListQuery {
  limit: number;
  offset: number;
  labels: Record<string, string> | null;
}

export interface MachineStore {
  create(machine: MachineRecord): Promise<void>;
  get(id: string): Promise<MachineRecord | null>;
  getMany(ids: string[]): Promise<MachineRecord[]>;
  list(query: MachineListQuery): Promise<{ items: MachineRecord[]; total: number }>;
  /** Every machine that carries all of `labels`. */
  selectByLabels(labels: Record<string, string>): Promise<MachineRecord[]>;
  update(id: string, patch: Partial<MachineRecord>): Promise<MachineRecord | null>;
  /**
   * Trust on first use, atomically: pins `fingerprint` (of `keyType`) and
   * turns the machine `pinned` only while it is `tofu` without a fingerprint
   * (compare-and-set), so two first connections never pin two keys. Returns
   * whether this call pinned, and the fingerprint stored now (null: none, e.g.
   * the policy changed meanwhile or the machine is gone).
   */
  pinHostKey(id: string, fingerprint: string, keyType: string): Promise<{ pinned: boolean; fingerprint: string | null }>;
  delete(id: string): Promise<boolean>;
}

/**
 * What the SSH transport asks of, and reports to, the service about host
 * keys. `pinFirstKey` runs inside key exchange, before authentication.
 */
export interface HostKeyTrust {
  /** TOFU: pins the presented key unless one is pinned already; resolves to the pinned fingerprint (null: none). */
  pinFirstKey(machineId: string, fingerprint: string, keyType: string): Promise<string | null>;
  /** A presented key did not match: the connection was refused before authentication. */
  mismatch(machineId: string, expected: string, presented: { fingerprint: string; keyType: string }): void;
  /** `insecure_accept_any`: a connection accepted whatever key the server presented. */
  acceptedInsecure(machineId: string, presented: { fingerprint: string; keyType: string }): void;
}

export type BatchStatus = "running" | "completed" | "cancelled";

export interface BatchRecord {
  id: string;
  command: string;
  status: BatchStatus;
  machineIds: string[];
  maxConcurrency: number;
  maxErrors: number;
  requestedBy: string;
  createdAt: Date;
  finishedAt: Date | null;
}

export interface BatchStore {
  insert(batch: BatchRecord): Promise<void>;
  get(id: string): Promise<BatchRecord | null>;
  update(id: string, patch: Partial<BatchRecord>): Promise<void>;
}

/** Everything the domain persists. */
export interface Stores {
  commands: CommandStore;
  machines: MachineStore;
  batches: BatchStore;
  tokens: TokenStore;
  /** Cheap liveness check for /readyz. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
