/**
 * Opens one authenticated ssh2 connection to a target: our own TCP socket
 * with TCP_NODELAY, keepalive, a handshake timeout, handshake pacing, and
 * host key verification BEFORE authentication.
 *
 * The machine's host key policy decides, inside key exchange (ssh2's
 * `hostVerifier`), before any credential is sent:
 * - `pinned`: the key must have the fingerprint. A pinned fingerprint belongs
 *   to one host key type. When the type is known the server is restricted to
 *   it; when it is not and the key presented does not match, the connection is
 *   retried restricted to each other type the server offers before deciding it
 *   is a mismatch (each refused attempt ends before authentication).
 * - `tofu` without a fingerprint yet: the presented key is recorded through
 *   `HostKeyTrust.pinFirstKey` (compare-and-set in the store) and the
 *   connection goes on only when the key recorded now is the presented one.
 * - `insecure_accept_any`: any key, reported at every connection.
 *
 * Authentication then offers the private key (if any) and the password (if
 * any) once: as `password` when the server lists it, otherwise as the answer
 * to one keyboard-interactive prompt, never both.
 */
import net from "node:net";
import ssh2 from "ssh2";
import type { Client as Ssh2Client, ConnectConfig, ParsedKey } from "ssh2";
import { TargetError } from "../exec/errors.ts";
import type { HostKeyTrust, MachineTarget } from "../exec/ports.ts";
import { authHandler } from "./auth-handler.ts";
import type { HandshakePacer } from "./handshake-pacer.ts";
import {
  HOST_KEY_TYPES,
  fingerprintOf,
  fingerprintsEqual,
  keyTypeOf,
  normalizeKeyType,
  serverHostKeyAlgorithmsFor,
} from "./host-key.ts";
import { destination, toTargetError } from "./ssh-error.ts";
import type { SshErrorContext } from "./ssh-error.ts";

const { Client, utils } = ssh2;

export interface ConnectSettings {
  /** TCP connect until the server's SSH version line (OpenSSH's `ConnectTimeout`). */
  connectTimeoutMs: number;
  /** From the server's version line until authenticated: a host that answered but is busy gets this long. */
  handshakeTimeoutMs: number;
  keepaliveIntervalMs: number;
  keepaliveCountMax: number;
  pacer: HandshakePacer;
  /** The key type learned earlier for this target's pinned fingerprint, if any. */
  learnedKeyType: string | null;
  /** Records first keys (tofu) and hears of mismatches and insecure accepts. */
  trust: HostKeyTrust;
  signal?: AbortSignal;
}

export interface EstablishedConnection {
  client: Ssh2Client;
  socket: net.Socket;
  hostKeyFingerprint: string;
  hostKeyType: string;
  /** Set when the key type was found by trying types (the service may persist it). */
  learnedKeyType: string | null;
}

export function errorContext(
  target: MachineTarget,
  phase: "connect" | "exec",
  timeouts?: { connectTimeoutMs: number; handshakeTimeoutMs: number },
): SshErrorContext {
  const ctx: SshErrorContext = {
    machineId: target.id,
    host: target.host,
    port: target.port,
    username: target.username,
    phase,
    secrets: [target.password, target.passphrase, target.privateKey],
  };
  if (timeouts !== undefined) {
    ctx.connectTimeoutMs = timeouts.connectTimeoutMs;
    ctx.handshakeTimeoutMs = timeouts.handshakeTimeoutMs;
  }
  return ctx;
}

/**
 * Parses the target's private key once (bcrypt rounds of encrypted keys are
 * slow). Returns null when the target has no key; throws `auth_failed` when
 * the key or its passphrase is unusable, without echoing either.
 */
export function parsePrivateKey(target: MachineTarget): ParsedKey | null {
  if (!target.privateKey) return null;
  let parsed: ParsedKey | Error;
  try {
    const result: ParsedKey | ParsedKey[] | Error = utils.parseKey(target.privateKey, target.passphrase ?? undefined);
    parsed = Array.isArray(result) ? (result[0] ?? new Error("empty")) : result;
  } catch {
    parsed = new Error("unparsable");
  }
  if (parsed instanceof Error) {
    const hint = target.passphrase ? "wrong passphrase or unsupported format" : "encrypted without a passphrase, or unsupported format";
    throw new TargetError(
      "auth_failed",
      `private key for ${JSON.stringify(target.username)} at ${destination(target.host, target.port)} cannot be used (${hint})`,
      target.id,
    );
  }
  return parsed;
}

interface AttemptOptions {
  /** Restrict the server to this key type; null: offer every type. */
  keyType: string | null;
  /** Fingerprint the presented key must have; null: accept any key. */
  expected: string | null;
  /** Record the server's list of host key formats (only when learning). */
  captureRemoteTypes: boolean;
  /** With `expected` null: decides on the presented key (tofu); absent: any key is accepted. */
  decide?: (fingerprint: string, keyType: string) => Promise<boolean>;
}

class HostKeyRejected extends Error {
  readonly fingerprint: string;
  readonly keyType: string;
  /** The server's host key formats, when they were captured. */
  readonly remoteKeyTypes: string[] | null;
  constructor(fingerprint: string, keyType: string, remoteKeyTypes: string[] | null) {
    super("host key rejected");
    this.fingerprint = fingerprint;
    this.keyType = keyType;
    this.remoteKeyTypes = remoteKeyTypes;
  }
}

/** The first key of a `tofu` machine could not be recorded (the store failed): nothing was sent. */
class HostKeyUndecided extends Error {
  readonly inner: unknown;
  constructor(inner: unknown) {
    super("host key could not be recorded");
    this.inner = inner;
  }
}

class AttemptFailed extends Error {
  readonly remoteKeyTypes: string[] | null;
  readonly inner: unknown;
  constructor(inner: unknown, remoteKeyTypes: string[] | null) {
    super("attempt failed");
    this.inner = inner;
    this.remoteKeyTypes = remoteKeyTypes;
  }
}

function attempt(
  target: MachineTarget,
  key: ParsedKey | null,
  settings: ConnectSettings,
  opts: AttemptOptions,
): Promise<EstablishedConnection> {
  const dest = destination(target.host, target.port);
  return settings.pacer.acquire(dest, settings.signal).then(
    (release) =>
      new Promise<EstablishedConnection>((resolve, reject) => {
        let settled = false;
        let presented: { fingerprint: string; keyType: string } | null = null;
        let rejectedKey = false;
        let remoteKeyTypes: string[] | null = null;

        const socket = net.connect({ host: target.host, port: target.port });
        // ssh2 leaves Nagle on: each exec would wait for a delayed ACK (~40 ms).
        socket.setNoDelay(true);
        socket.on("error", () => {
          // ssh2 reports socket errors through the client's 'error' event.
        });
        const client = new Client();

        // Two deadlines, as OpenSSH's ConnectTimeout: the server must answer
        // (its version line) within connectTimeoutMs; a server that answered
        // is alive, only busy (a fleet-wide fan-out keeps every sshd busy),
        // and gets handshakeTimeoutMs more to finish key exchange and auth.
        let phaseTimer: NodeJS.Timeout | null = setTimeout(
          () => fail(phaseTimeout("answer", settings.connectTimeoutMs)),
          settings.connectTimeoutMs,
        );
        socket.once("data", () => {
          if (settled || phaseTimer === null) return;
          clearTimeout(phaseTimer);
          phaseTimer = setTimeout(() => fail(phaseTimeout("handshake", settings.handshakeTimeoutMs)), settings.handshakeTimeoutMs);
        });

        const fail = (err: unknown): void => {
          if (settled) return;
          settled = true;
          release();
          cleanup();
          socket.destroy();
          client.end();
          if (rejectedKey && presented) {
            reject(new HostKeyRejected(presented.fingerprint, presented.keyType, remoteKeyTypes));
          } else {
            reject(new AttemptFailed(err, remoteKeyTypes));
          }
        };
        const onError = (err: Error): void => fail(err);
        const onClose = (): void => fail(new Error("No response from server"));
        const onAbort = (): void => fail(settings.signal?.reason ?? new Error("aborted"));
        const onReady = (): void => {
          if (settled) return;
          settled = true;
          release();
          cleanup();
          if (!presented) {
            client.end();
            reject(new AttemptFailed(new Error("no host key seen"), remoteKeyTypes));
            return;
          }
          resolve({
            client,
            socket,
            hostKeyFingerprint: presented.fingerprint,
            hostKeyType: presented.keyType,
            learnedKeyType: null,
          });
        };
        const cleanup = (): void => {
          if (phaseTimer !== null) clearTimeout(phaseTimer);
          phaseTimer = null;
          client.removeListener("ready", onReady);
          client.removeListener("close", onClose);
          settings.signal?.removeEventListener("abort", onAbort);
        };

        // A permanent listener: an unhandled 'error' would crash the process.
        client.on("error", onError);
        client.once("ready", onReady);
        client.once("close", onClose);
        settings.signal?.addEventListener("abort", onAbort, { once: true });

        const config: ConnectConfig = {
          sock: socket,
          username: target.username,
          // Our own phase timers decide; ssh2's is only a backstop.
          readyTimeout: settings.connectTimeoutMs + settings.handshakeTimeoutMs + 1_000,
          keepaliveInterval: settings.keepaliveIntervalMs,
          keepaliveCountMax: settings.keepaliveCountMax,
          // The (pre-parsed) key, then the password once (see authHandler).
          authHandler: authHandler(target, key),
          // Runs during key exchange, before any authentication request:
          // ssh2 sends nothing of the credentials until `verify(true)`.
          hostVerifier: (blob: Buffer, verify: (valid: boolean) => void): void => {
            const fingerprint = fingerprintOf(blob);
            const keyType = keyTypeOf(blob) ?? "unknown";
            presented = { fingerprint, keyType };
            if (opts.expected !== null) {
              const ok = fingerprintsEqual(fingerprint, opts.expected);
              if (!ok) rejectedKey = true;
              verify(ok);
              return;
            }
            if (opts.decide === undefined) {
              verify(true);
              return;
            }
            opts.decide(fingerprint, keyType).then(
              (ok) => {
                if (settled) return;
                if (!ok) rejectedKey = true;
                verify(ok);
              },
              (err: unknown) => fail(new HostKeyUndecided(err)),
            );
          },
        };
        if (opts.keyType) config.algorithms = { serverHostKey: serverHostKeyAlgorithmsFor(opts.keyType) as never };
        if (opts.captureRemoteTypes) {
          const prefix = "Handshake: (remote) Host key format: ";
          config.debug = (msg: string): void => {
            if (remoteKeyTypes === null && msg.startsWith(prefix)) {
              remoteKeyTypes = msg.slice(prefix.length).split(",").filter(Boolean);
            }
          };
        }
        try {
          client.connect(config);
        } catch (err) {
          fail(err);
        }
      }),
  );
}

/** A connect deadline that passed: `client-timeout`, as ssh2's own, with the phase for the message. */
function phaseTimeout(phase: "answer" | "handshake", ms: number): Error {
  const err = new Error(phase === "answer" ? "Timed out waiting for the server to answer" : "Timed out while waiting for handshake");
  Object.assign(err, { level: "client-timeout", phase });
  return err;
}


/**
 * sshd drops connections beyond `MaxStartups` before the SSH handshake, at
 * random: nothing ran yet, so such a drop is retried (a refused port is not).
 */
function droppedBeforeHandshake(err: unknown): boolean {
  return err instanceof TargetError && err.reason === "unreachable" && /ECONNRESET|before handshake/i.test(err.message);
}

/** Connects, authenticates and verifies the host key; rejects with a `TargetError`. */
export async function connectSsh(
  target: MachineTarget,
  key: ParsedKey | null,
  settings: ConnectSettings,
): Promise<EstablishedConnection> {
  for (let attemptNo = 0; ; attemptNo++) {
    try {
      return await connectOnce(target, key, settings);
    } catch (err) {
      if (attemptNo >= 3 || settings.signal?.aborted || !droppedBeforeHandshake(err)) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100 * 2 ** attemptNo + Math.random() * 100));
    }
  }
}

async function connectOnce(
  target: MachineTarget,
  key: ParsedKey | null,
  settings: ConnectSettings,
): Promise<EstablishedConnection> {
  const ctx = errorContext(target, "connect", settings);
  const dest = destination(target.host, target.port);
  const pinned = target.hostKeyFingerprint?.trim() || null;
  const mapFailure = (err: unknown): TargetError =>
    toTargetError(err instanceof AttemptFailed ? err.inner : err, ctx);
  const mismatch = (seen: { fingerprint: string; keyType: string }, detail: string): TargetError => {
    const presentedHostKey = { fingerprint: seen.fingerprint, keyType: seen.keyType };
    settings.trust.mismatch(target.id, pinned!, presentedHostKey);
    return new TargetError(
      "host_key_mismatch",
      `host key of ${dest} does not match the pinned fingerprint ${pinned}: ` +
        `the server presented ${seen.keyType} ${seen.fingerprint}${detail}`,
      target.id,
      { presentedHostKey },
    );
  };

  const policy = target.hostKeyPolicy;
  const declared = target.hostKeyAlgorithm ? normalizeKeyType(target.hostKeyAlgorithm) : null;

  // Any key, at the operator's explicit request: every such connection is reported.
  if (policy === "insecure_accept_any") {
    let conn: EstablishedConnection;
    try {
      conn = await attempt(target, key, settings, { keyType: declared, expected: null, captureRemoteTypes: false });
    } catch (err) {
      throw mapFailure(err);
    }
    settings.trust.acceptedInsecure(target.id, { fingerprint: conn.hostKeyFingerprint, keyType: conn.hostKeyType });
    return conn;
  }

  // Trust on first use: the presented key is recorded (compare-and-set)
  // before authentication; a key other than the one recorded is refused.
  if (pinned === null) {
    if (policy !== "tofu") {
      throw new TargetError("host_key_mismatch", `no host key is pinned for ${dest} and its host key policy is not tofu: nothing was sent`, target.id);
    }
    let recorded: string | null = null;
    const decide = async (fingerprint: string, keyType: string): Promise<boolean> => {
      recorded = await settings.trust.pinFirstKey(target.id, fingerprint, keyType);
      return recorded !== null && fingerprintsEqual(recorded, fingerprint);
    };
    try {
      return await attempt(target, key, settings, { keyType: declared, expected: null, captureRemoteTypes: false, decide });
    } catch (err) {
      if (err instanceof HostKeyRejected) {
        const seen = { fingerprint: err.fingerprint, keyType: err.keyType };
        if (recorded === null) {
          throw new TargetError("host_key_mismatch", `host key of ${dest} was not recorded (the machine is no longer tofu, or there is no store to record it in): nothing was sent`, target.id, { presentedHostKey: seen });
        }
        settings.trust.mismatch(target.id, recorded, seen);
        throw new TargetError(
          "host_key_mismatch",
          `host key of ${dest} does not match the fingerprint pinned on first use ${recorded}: the server presented ${seen.keyType} ${seen.fingerprint}`,
          target.id,
          { presentedHostKey: seen },
        );
      }
      if (err instanceof AttemptFailed && err.inner instanceof HostKeyUndecided) {
        const why = err.inner.inner instanceof Error ? err.inner.inner.message : String(err.inner.inner);
        throw new TargetError("unreachable", `the host key of ${dest} could not be recorded (${why.split("\n")[0]}): nothing was sent`, target.id);
      }
      throw mapFailure(err);
    }
  }

  // Pin with a known key type: restrict the server to it, one attempt.
  const declaredType = declared;
  const knownType = declaredType ?? settings.learnedKeyType;
  if (knownType !== null) {
    try {
      return await attempt(target, key, settings, { keyType: knownType, expected: pinned, captureRemoteTypes: false });
    } catch (err) {
      if (err instanceof HostKeyRejected) {
        if (declaredType !== null) throw mismatch(err, ` (pinned type ${declaredType})`);
        // A remembered type that no longer matches: learn again below.
      } else if (declaredType !== null || !(err instanceof AttemptFailed) || !isHandshakeFailure(err.inner)) {
        throw mapFailure(err);
      }
    }
  }

  // Pin without a type: take the server's preferred key first, then each
  // other type it offers, before calling it a mismatch.
  let first: HostKeyRejected;
  try {
    const conn = await attempt(target, key, settings, { keyType: null, expected: pinned, captureRemoteTypes: true });
    conn.learnedKeyType = conn.hostKeyType;
    return conn;
  } catch (err) {
    if (!(err instanceof HostKeyRejected)) throw mapFailure(err);
    first = err;
  }
  // ssh2 logs the server's host key formats before the verifier runs.
  const remoteTypes = first.remoteKeyTypes;
  const offered = remoteTypes
    ? unique(remoteTypes.map((t) => normalizeKeyType(t)).filter((t): t is string => t !== null))
    : [...HOST_KEY_TYPES];
  const candidates = offered.filter((t) => t !== first.keyType && HOST_KEY_TYPES.includes(t));
  const tried = [first.keyType];
  for (const keyType of candidates) {
    try {
      const conn = await attempt(target, key, settings, { keyType, expected: pinned, captureRemoteTypes: false });
      conn.learnedKeyType = conn.hostKeyType;
      return conn;
    } catch (err) {
      if (err instanceof HostKeyRejected) {
        tried.push(err.keyType);
        continue;
      }
      // The server has no key of this type: the key exchange finds no match.
      if (err instanceof AttemptFailed && isHandshakeFailure(err.inner)) continue;
      throw mapFailure(err);
    }
  }
  throw mismatch(first, tried.length > 1 ? ` (also tried ${tried.slice(1).join(", ")})` : "");
}

function isHandshakeFailure(err: unknown): boolean {
  return err instanceof Error && (err as { level?: string }).level === "handshake";
}

function unique<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}
