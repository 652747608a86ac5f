/**
 * The `Transport` port over ssh2, against OpenSSH.
 *
 * Connections are pooled per machine and per hash of its connection settings
 * (so changed credentials never reuse an old connection): up to
 * `maxConnectionsPerMachine` connections of at most `maxChannelsPerConnection`
 * channels each. OpenSSH refuses channels past `MaxSessions` (10), and frees
 * slots asynchronously, so a refused channel is retried with backoff, on
 * another connection when one is open or may be opened.
 *
 * Callers must read BOTH `stdout` and `stderr` of every process: nothing is
 * buffered beyond the streams' high-water marks, so an unread stream stalls
 * the SSH window (that is the backpressure that throttles the remote side),
 * and `done` settles only after both streams ended.
 */
import { createHash } from "node:crypto";
import type net from "node:net";
import type { Client as Ssh2Client, ClientChannel, ParsedKey } from "ssh2";
import { TargetError } from "../exec/errors.ts";
import type {
  ExecOptions,
  ExitInfo,
  HandshakeStats,
  HostKeyTrust,
  MachineTarget,
  ProbeResult,
  RemoteProcess,
  StartReservation,
  Transport,
  TransportStats,
} from "../exec/ports.ts";
import { createHandshakePacer } from "./handshake-pacer.ts";
import type { HandshakePacer } from "./handshake-pacer.ts";
import { connectSsh, errorContext, parsePrivateKey } from "./ssh-connect.ts";
import { destination, isChannelOpenFailure, scrubSecrets, toTargetError } from "./ssh-error.ts";

export interface SshTransportOptions {
  /** Connections per machine. @default 4 */
  maxConnectionsPerMachine?: number;
  /** Concurrent channels per connection (OpenSSH `MaxSessions` is 10). @default 8 */
  maxChannelsPerConnection?: number;
  /** An unused connection is closed after this long. @default 60000 */
  idleTimeoutMs?: number;
  /** TCP connect until the server's SSH version line must take at most this. @default 10000 */
  connectTimeoutMs?: number;
  /** From the server's version line until authenticated (a busy server answers, then is slow). @default 30000 */
  handshakeTimeoutMs?: number;
  /** Interval of SSH keepalive requests. @default 3000 */
  keepaliveIntervalMs?: number;
  /** Unanswered keepalives before the connection is declared dead. @default 4 */
  keepaliveCountMax?: number;
  /** Concurrent unauthenticated handshakes per `host:port` (below OpenSSH's MaxStartups 10, with room for its lag). @default 6 */
  handshakesPerDestination?: number;
  /** Concurrent unauthenticated handshakes overall. @default 64 */
  handshakesOverall?: number;
  /** Handshakes a new start may have to wait behind; beyond it `reserveStart` refuses. @default 256 */
  handshakeQueue?: number;
  /** Retries of a refused channel (`Channel open failure`) before `spawn_failed`. @default 8 */
  channelOpenRetries?: number;
  /** First backoff after a refused channel; doubles per retry, capped at 1 s. @default 20 */
  channelOpenBackoffMs?: number;
  /**
   * Called when a pinned fingerprint turned out to be of a key type the
   * target did not declare, so the service can store it as `hostKeyAlgorithm`.
   */
  onHostKeyLearned?: (machineId: string, algorithm: string) => void;
  /**
   * Records first keys of `tofu` machines and hears of mismatches and
   * insecure accepts (the service's store and audit trail).
   * @default none: a `tofu` machine without a pinned key is refused
   */
  hostKeys?: HostKeyTrust;
}

/** Without a store nothing can be trusted on first use: tofu machines are refused. */
const NO_TRUST: HostKeyTrust = {
  pinFirstKey: async () => null,
  mismatch() {},
  acceptedInsecure() {},
};

interface Conn {
  pool: Pool;
  client: Ssh2Client;
  socket: net.Socket;
  /** Reserved or open channel slots. */
  slots: number;
  /** Channels opened and not yet closed (for stats). */
  channels: number;
  cooldownUntil: number;
  /** end() was called: takes no new channels and no longer counts as open. */
  closing: boolean;
  closed: boolean;
  lastError: unknown;
  idleTimer: NodeJS.Timeout | null;
  hostKeyFingerprint: string;
  hostKeyType: string;
}

interface Waiter {
  resolve: (conn: Conn) => void;
  reject: (err: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: () => void;
}

interface Pool {
  key: string;
  machineId: string;
  target: MachineTarget;
  parsedKey: ParsedKey | null | undefined;
  conns: Set<Conn>;
  connecting: number;
  waiters: Waiter[];
  /** Superseded by new settings or forgotten: no new connections, close when idle. */
  retired: boolean;
  /** After a failed connect while others are open: no new attempts until then. */
  connectBlockedUntil: number;
  timer: NodeJS.Timeout | null;
}

/** Hash of everything that decides how a machine is reached and who we are there. */
function settingsHash(t: MachineTarget): string {
  return createHash("sha256")
    .update(
      JSON.stringify([t.host, t.port, t.username, t.privateKey, t.passphrase, t.password, t.hostKeyFingerprint, t.hostKeyPolicy]),
    )
    .digest("hex")
    .slice(0, 32);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Channel events that may arrive before `wrap` listens (see `openExec`). */
interface EarlyEvents {
  exit: ExitInfo | null;
  closed: boolean;
}
const earlyEvents = new WeakMap<ClientChannel, EarlyEvents>();

function exitInfoOf(code: number | null, signal?: string): ExitInfo {
  return typeof code === "number"
    ? { code, signal: null }
    : { code: null, signal: typeof signal === "string" ? signal.replace(/^SIG/, "") : null };
}

export function createSshTransport(options: SshTransportOptions = {}): Transport {
  const maxConns = Math.max(1, options.maxConnectionsPerMachine ?? 4);
  const maxChannels = Math.max(1, options.maxChannelsPerConnection ?? 8);
  const idleTimeoutMs = options.idleTimeoutMs ?? 60_000;
  const timeouts = { connectTimeoutMs: options.connectTimeoutMs ?? 10_000, handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000 };
  const keepaliveIntervalMs = options.keepaliveIntervalMs ?? 3_000;
  const keepaliveCountMax = options.keepaliveCountMax ?? 4;
  const channelOpenRetries = options.channelOpenRetries ?? 8;
  const channelOpenBackoffMs = options.channelOpenBackoffMs ?? 20;
  let trust = options.hostKeys ?? NO_TRUST;
  const pacer: HandshakePacer = createHandshakePacer({
    perDestination: options.handshakesPerDestination ?? 6,
    overall: options.handshakesOverall ?? 64,
    maxQueued: options.handshakeQueue ?? 256,
  });

  /** Pools by `machineId + settings hash`. */
  const pools = new Map<string, Pool>();
  /** The current pool of each machine. */
  const currentPool = new Map<string, Pool>();
  /** Admitted starts not yet at `exec`, and the handshake places they hold, per pool key. */
  const reservations = new Map<string, { holds: number; starts: number }>();
  /** Key types learned for a pinned fingerprint, per machine (in memory only). */
  const learned = new Map<string, { fingerprint: string; keyType: string }>();
  let closed = false;

  const poolFor = (target: MachineTarget): Pool => {
    const key = `${target.id}:${settingsHash(target)}`;
    let pool = pools.get(key);
    if (pool && !pool.retired) {
      pool.target = target;
      return pool;
    }
    const previous = currentPool.get(target.id);
    if (previous && previous !== pool) retire(previous);
    pool = {
      key,
      machineId: target.id,
      target,
      parsedKey: undefined,
      conns: new Set(),
      connecting: 0,
      waiters: [],
      retired: false,
      connectBlockedUntil: 0,
      timer: null,
    };
    pools.set(key, pool);
    currentPool.set(target.id, pool);
    return pool;
  };

  /** No new work for this pool: close idle connections now, busy ones when their last channel ends. */
  const retire = (pool: Pool): void => {
    pool.retired = true;
    if (currentPool.get(pool.machineId) === pool) currentPool.delete(pool.machineId);
    for (const conn of pool.conns) if (conn.slots === 0) closeConn(conn);
    dropPoolIfEmpty(pool);
  };

  const dropPoolIfEmpty = (pool: Pool): void => {
    if (pool.retired && pool.conns.size === 0 && pool.connecting === 0 && pool.waiters.length === 0) {
      if (pool.timer) clearTimeout(pool.timer);
      if (pools.get(pool.key) === pool) pools.delete(pool.key);
    }
  };

  const closeConn = (conn: Conn): void => {
    if (conn.idleTimer) clearTimeout(conn.idleTimer);
    conn.idleTimer = null;
    conn.closing = true;
    if (!conn.closed) {
      conn.client.end();
      // end() sends a disconnect; make sure the socket goes even if the peer is gone.
      setTimeout(() => conn.socket.destroy(), 1_000).unref();
    }
  };

  /** The open connection with a free slot and the fewest channels, or null. */
  const bestConn = (pool: Pool, now: number): Conn | null => {
    let best: Conn | null = null;
    for (const c of pool.conns) {
      if (c.closed || c.closing || c.slots >= maxChannels || c.cooldownUntil > now) continue;
      if (best === null || c.slots < best.slots) best = c;
    }
    return best;
  };

  const reserve = (conn: Conn): Conn => {
    conn.slots++;
    if (conn.idleTimer) {
      clearTimeout(conn.idleTimer);
      conn.idleTimer = null;
    }
    return conn;
  };

  const releaseSlot = (conn: Conn): void => {
    conn.slots--;
    const pool = conn.pool;
    if (conn.slots === 0 && !conn.closed) {
      if (pool.retired || closed) closeConn(conn);
      else {
        conn.idleTimer = setTimeout(() => closeConn(conn), idleTimeoutMs);
        conn.idleTimer.unref();
      }
    }
    pump(pool);
  };

  const schedulePump = (pool: Pool, at: number): void => {
    if (pool.timer) clearTimeout(pool.timer);
    pool.timer = setTimeout(() => {
      pool.timer = null;
      pump(pool);
    }, Math.max(1, at - Date.now()));
    pool.timer.unref();
  };

  /** Hands free slots to waiters in FIFO order and opens connections for the rest. */
  const pump = (pool: Pool): void => {
    const now = Date.now();
    while (pool.waiters.length > 0) {
      const conn = bestConn(pool, now);
      if (conn === null) break;
      const w = pool.waiters.shift() as Waiter;
      w.signal?.removeEventListener("abort", w.onAbort);
      w.resolve(reserve(conn));
    }
    if (pool.waiters.length === 0) {
      dropPoolIfEmpty(pool);
      return;
    }
    // Each connection being opened will serve `maxChannels` waiters.
    while (
      !pool.retired &&
      !closed &&
      pool.waiters.length > pool.connecting * maxChannels &&
      pool.conns.size + pool.connecting < maxConns &&
      now >= pool.connectBlockedUntil
    ) {
      startConnect(pool);
    }
    // Wake up when a cooled-down connection or a blocked connect becomes usable.
    let wake = Number.POSITIVE_INFINITY;
    for (const c of pool.conns) if (!c.closed && c.cooldownUntil > now && c.slots < maxChannels) wake = Math.min(wake, c.cooldownUntil);
    if (pool.connectBlockedUntil > now) wake = Math.min(wake, pool.connectBlockedUntil);
    if (wake !== Number.POSITIVE_INFINITY) schedulePump(pool, wake);
    else if (pool.conns.size === 0 && pool.connecting === 0) {
      // Nothing open, nothing coming, nothing allowed: fail the waiters.
      const err = new TargetError(
        "unreachable",
        closed ? "transport closed" : `no connection to ${destination(pool.target.host, pool.target.port)} can be opened`,
        pool.machineId,
      );
      for (const w of pool.waiters.splice(0)) {
        w.signal?.removeEventListener("abort", w.onAbort);
        w.reject(err);
      }
      dropPoolIfEmpty(pool);
    }
  };

  const startConnect = (pool: Pool): void => {
    pool.connecting++;
    const target = pool.target;
    const pin = target.hostKeyFingerprint?.trim() || null;
    const remembered = learned.get(target.id);
    const learnedKeyType = pin !== null && remembered?.fingerprint === pin ? remembered.keyType : null;
    let key: ParsedKey | null;
    try {
      if (pool.parsedKey === undefined) pool.parsedKey = parsePrivateKey(target);
      key = pool.parsedKey;
    } catch (err) {
      queueMicrotask(() => onConnectFailed(pool, err));
      return;
    }
    connectSsh(target, key, {
      ...timeouts,
      keepaliveIntervalMs,
      keepaliveCountMax,
      pacer,
      learnedKeyType,
      trust,
    }).then(
      (est) => {
        pool.connecting--;
        if (est.learnedKeyType !== null && pin !== null) {
          const known = learned.get(target.id);
          learned.set(target.id, { fingerprint: pin, keyType: est.learnedKeyType });
          if (!target.hostKeyAlgorithm && (known?.fingerprint !== pin || known.keyType !== est.learnedKeyType)) {
            try {
              options.onHostKeyLearned?.(target.id, est.learnedKeyType);
            } catch {
              // The callback's failure must not break the connection.
            }
          }
        }
        const conn: Conn = {
          pool,
          client: est.client,
          socket: est.socket,
          slots: 0,
          channels: 0,
          cooldownUntil: 0,
          closing: false,
          closed: false,
          lastError: null,
          idleTimer: null,
          hostKeyFingerprint: est.hostKeyFingerprint,
          hostKeyType: est.hostKeyType,
        };
        est.client.on("error", (err: Error) => {
          conn.lastError = err;
        });
        est.client.on("close", () => {
          conn.closed = true;
          if (conn.idleTimer) clearTimeout(conn.idleTimer);
          conn.idleTimer = null;
          pool.conns.delete(conn);
          pump(pool);
          dropPoolIfEmpty(pool);
        });
        pool.conns.add(conn);
        if (pool.retired || closed) {
          closeConn(conn);
        } else {
          // Unused until a waiter takes it: start the idle clock.
          conn.idleTimer = setTimeout(() => closeConn(conn), idleTimeoutMs);
          conn.idleTimer.unref();
        }
        pump(pool);
      },
      (err: unknown) => onConnectFailed(pool, err),
    );
  };

  const onConnectFailed = (pool: Pool, err: unknown): void => {
    pool.connecting--;
    const openConns = [...pool.conns].filter((c) => !c.closed && !c.closing).length;
    if (openConns === 0 && pool.connecting === 0) {
      // Nobody can serve the waiters: they all fail with this reason.
      const mapped = toTargetError(err, errorContext(pool.target, "connect", timeouts));
      for (const w of pool.waiters.splice(0)) {
        w.signal?.removeEventListener("abort", w.onAbort);
        w.reject(mapped);
      }
      dropPoolIfEmpty(pool);
      return;
    }
    // Other connections are open: their slots will serve the waiters; try
    // opening more a little later.
    pool.connectBlockedUntil = Date.now() + 1_000;
    pump(pool);
  };

  const acquire = (pool: Pool, signal: AbortSignal | undefined, front: boolean): Promise<Conn> => {
    if (closed) return Promise.reject(new TargetError("unreachable", "transport closed", pool.machineId));
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (pool.waiters.length === 0 || front) {
      const conn = bestConn(pool, Date.now());
      if (conn) return Promise.resolve(reserve(conn));
    }
    return new Promise<Conn>((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        signal,
        onAbort: () => {
          const i = pool.waiters.indexOf(waiter);
          if (i >= 0) pool.waiters.splice(i, 1);
          reject(signal?.reason);
          dropPoolIfEmpty(pool);
        },
      };
      signal?.addEventListener("abort", waiter.onAbort, { once: true });
      if (front) pool.waiters.unshift(waiter);
      else pool.waiters.push(waiter);
      pump(pool);
    });
  };

  const openExec = (conn: Conn, commandLine: string): Promise<ClientChannel> =>
    new Promise((resolve, reject) => {
      try {
        conn.client.exec(commandLine, (err, channel) => {
          if (err) return reject(err);
          // A quick command's exit status and close can arrive in the same read
          // as the exec's confirmation: record them now, before any await.
          const early: EarlyEvents = { exit: null, closed: false };
          earlyEvents.set(channel, early);
          channel.on("exit", (code: number | null, signal?: string) => {
            early.exit = exitInfoOf(code, signal);
          });
          channel.once("close", () => {
            early.closed = true;
          });
          resolve(channel);
        });
      } catch (err) {
        reject(err);
      }
    });

  /** A channel on a pooled connection, with retries of refused channels. */
  const openChannel = async (
    target: MachineTarget,
    commandLine: string,
    signal: AbortSignal | undefined,
  ): Promise<{ conn: Conn; channel: ClientChannel }> => {
    const pool = poolFor(target);
    let lastErr: unknown = null;
    for (let attempt = 0; ; attempt++) {
      const conn = await acquire(pool, signal, attempt > 0);
      try {
        const channel = await openExec(conn, commandLine);
        if (signal?.aborted) {
          channel.on("error", () => {});
          channel.close();
          releaseSlot(conn);
          throw signal.reason;
        }
        return { conn, channel };
      } catch (err) {
        if (signal?.aborted && err === signal.reason) throw err;
        lastErr = err;
        const retryable = isChannelOpenFailure(err) || conn.closed;
        if (retryable && attempt < channelOpenRetries) {
          const backoff = Math.min(1_000, channelOpenBackoffMs * 2 ** attempt);
          // The connection rests for a while; others (or a new one) take the retry.
          if (isChannelOpenFailure(err)) conn.cooldownUntil = Date.now() + backoff;
          releaseSlot(conn);
          if (conn.closed) await delay(Math.min(backoff, 100));
          continue;
        }
        releaseSlot(conn);
        break;
      }
    }
    const dest = destination(target.host, target.port);
    const why = lastErr instanceof Error ? lastErr.message.replace(/^\(SSH\) /, "") : String(lastErr);
    throw new TargetError(
      "spawn_failed",
      scrubSecrets(`cannot start a process on ${dest}: ${why}`, [target.password, target.passphrase, target.privateKey]),
      target.id,
    );
  };

  const wrap = (target: MachineTarget, conn: Conn, channel: ClientChannel, options: ExecOptions): RemoteProcess => {
    conn.channels++;
    const early = earlyEvents.get(channel) ?? { exit: null, closed: false };
    let exit: ExitInfo | null = early.exit;
    channel.on("error", () => {
      // Channel errors are reflected in `done` through the connection state.
    });
    channel.stderr.on("error", () => {});
    channel.on("exit", (code: number | null, signal?: string) => {
      exit = exitInfoOf(code, signal);
    });

    let channelClosed = early.closed;
    let stderrEnded = false;
    let settled = false;
    let resolveDone!: (info: ExitInfo) => void;
    let rejectDone!: (err: unknown) => void;
    const done = new Promise<ExitInfo>((resolve, reject) => {
      resolveDone = resolve;
      rejectDone = reject;
    });
    // Callers that only watch the streams must not see an unhandled rejection.
    done.catch(() => {});

    const onAbort = (): void => channel.close();
    const settle = (): void => {
      if (settled || !channelClosed || !stderrEnded) return;
      settled = true;
      options.signal?.removeEventListener("abort", onAbort);
      conn.channels--;
      releaseSlot(conn);
      if (exit !== null) resolveDone(exit);
      else if (conn.closed) {
        // The connection died with the channel open: the outcome is unknown.
        const mapped = toTargetError(conn.lastError ?? new Error("No response from server"), errorContext(target, "exec"));
        rejectDone(
          mapped.reason === "connection_lost"
            ? mapped
            : new TargetError("connection_lost", `connection to ${destination(target.host, target.port)} lost`, target.id, {
                cause: mapped,
              }),
        );
      } else resolveDone({ code: null, signal: null });
    };
    channel.once("close", () => {
      channelClosed = true;
      settle();
    });
    const onStderrEnd = (): void => {
      stderrEnded = true;
      settle();
    };
    channel.stderr.once("end", onStderrEnd);
    channel.stderr.once("close", onStderrEnd);

    if (options.signal) {
      if (options.signal.aborted) channel.close();
      else options.signal.addEventListener("abort", onAbort, { once: true });
    }
    if (options.stdin !== undefined) channel.end(options.stdin);
    else channel.end();

    return {
      stdout: channel,
      stderr: channel.stderr,
      done,
      close: () => {
        channel.close();
      },
    };
  };

  const lookupConnInfo = (target: MachineTarget): Conn | null => {
    const pool = pools.get(`${target.id}:${settingsHash(target)}`);
    if (!pool) return null;
    for (const c of pool.conns) if (!c.closed && !c.closing) return c;
    return null;
  };

  const exec = async (target: MachineTarget, commandLine: string, execOptions: ExecOptions = {}): Promise<RemoteProcess> => {
    const { conn, channel } = await openChannel(target, commandLine, execOptions.signal);
    return wrap(target, conn, channel, execOptions);
  };

  return {
    exec,

    async probe(target) {
      const started = performance.now();
      const proc = await exec(target, "true");
      proc.stdout.resume();
      proc.stderr.resume();
      await proc.done;
      const latencyMs = performance.now() - started;
      const conn = lookupConnInfo(target);
      const result: ProbeResult = {
        latencyMs,
        hostKeyFingerprint: conn?.hostKeyFingerprint ?? null,
        hostKeyAlgorithm: conn?.hostKeyType ?? null,
      };
      return result;
    },

    // Idle connections close now; busy ones when their last channel ends, so
    // processes running on them keep their connection. New work reconnects.
    forget(machineId) {
      learned.delete(machineId);
      for (const pool of [...pools.values()]) {
        if (pool.machineId === machineId) retire(pool);
      }
    },

    // A new start needs a handshake only when no open connection has room,
    // none being opened will take it, and the pool may open another one.
    // Starts admitted together on one machine share reservations: each
    // connection to be opened serves `maxChannels` of them.
    reserveStart(target): StartReservation | null {
      const none: StartReservation = { release() {} };
      if (closed) return none;
      const key = `${target.id}:${settingsHash(target)}`;
      const pool = pools.get(key);
      let open = 0;
      if (pool !== undefined && !pool.retired) {
        if (pool.waiters.length === 0 && bestConn(pool, Date.now()) !== null) return none;
        if (pool.waiters.length < pool.connecting * maxChannels) return none;
        open = pool.conns.size + pool.connecting;
      }
      const r = reservations.get(key) ?? { holds: 0, starts: 0 };
      let pacerRelease: (() => void) | null = null;
      // Covered by a handshake already reserved, or the pool can open no more
      // connections (the start waits for a channel, not a handshake).
      const rides = r.holds * maxChannels > r.starts || open + r.holds >= maxConns;
      if (!rides) {
        pacerRelease = pacer.reserve(destination(target.host, target.port));
        if (pacerRelease === null) return null;
        r.holds++;
      }
      r.starts++;
      reservations.set(key, r);
      let released = false;
      return {
        release() {
          if (released) return;
          released = true;
          r.starts--;
          if (pacerRelease !== null) {
            r.holds--;
            pacerRelease();
          }
          if (r.starts === 0 && reservations.get(key) === r) reservations.delete(key);
        },
      };
    },

    useHostKeyTrust(next) {
      trust = next;
    },

    handshakeStats(): HandshakeStats {
      return { active: pacer.active(), queued: pacer.waiting(), maxQueued: pacer.maxQueued };
    },

    stats(): TransportStats {
      let connections = 0;
      let channels = 0;
      for (const pool of pools.values()) {
        for (const c of pool.conns) {
          channels += c.channels;
          if (!c.closed && !c.closing) connections++;
        }
      }
      return { connections, channels };
    },

    async close() {
      closed = true;
      const all: Conn[] = [];
      for (const pool of [...pools.values()]) {
        for (const w of pool.waiters.splice(0)) {
          w.signal?.removeEventListener("abort", w.onAbort);
          w.reject(new TargetError("unreachable", "transport closed", pool.machineId));
        }
        pool.retired = true;
        if (pool.timer) clearTimeout(pool.timer);
        for (const c of pool.conns) all.push(c);
      }
      await Promise.all(
        all.map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.closed) return resolve();
              c.client.once("close", () => resolve());
              closeConn(c);
            }),
        ),
      );
      // Connections still being opened close themselves when they complete.
    },
  };
}
