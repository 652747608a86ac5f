/**
 * The SSH transport against an in-process ssh2 Server on loopback, which lets
 * the tests inject faults OpenSSH will not produce on demand: refused
 * channels, a connection dropped mid-exec, a peer that stops answering.
 */
import net from "node:net";
import type { AddressInfo } from "node:net";
import ssh2 from "ssh2";
import type { Connection, ServerChannel } from "ssh2";
import { afterEach, describe, expect, it } from "vitest";
import { TargetError } from "../../src/exec/errors.ts";
import type { MachineTarget, RemoteProcess, Transport } from "../../src/exec/ports.ts";
import { createSshTransport } from "../../src/ssh/ssh-transport.ts";
import type { SshTransportOptions } from "../../src/ssh/ssh-transport.ts";
import { newHostKey } from "../fixtures/fake-sshd.ts";

const { Server } = ssh2;

const USER = "tester";
const PASSWORD = "correct horse battery";

const ED25519 = newHostKey("ed25519");
const ECDSA = newHostKey("ecdsa");

interface FakeServerOptions {
  hostKeys?: string[];
  /** Refuse this many session channel opens before accepting. */
  refuseSessions?: number;
  /** Delay before accepting a correct password (keeps handshakes "unauthenticated" longer). */
  authDelayMs?: number;
}

/** An ssh2 Server that records what reached it. */
class FakeServer {
  readonly server: InstanceType<typeof Server>;
  port = 0;
  authAttempts = 0;
  sessionOpens = 0;
  handshakes = 0;
  maxHandshakes = 0;
  maxSessionsPerConnection = 0;
  connections = 0;
  refuseSessions: number;
  readonly clients = new Set<Connection>();

  constructor(opts: FakeServerOptions = {}) {
    this.refuseSessions = opts.refuseSessions ?? 0;
    const authDelayMs = opts.authDelayMs ?? 0;
    this.server = new Server({ hostKeys: opts.hostKeys ?? [ED25519.pem] }, (client) => {
      this.connections++;
      this.clients.add(client);
      let authenticated = false;
      let sessions = 0;
      this.handshakes++;
      this.maxHandshakes = Math.max(this.maxHandshakes, this.handshakes);
      const handshakeOver = (): void => {
        if (authenticated) return;
        authenticated = true;
        this.handshakes--;
      };
      client.on("error", () => {});
      client.on("close", () => {
        handshakeOver();
        this.clients.delete(client);
      });
      client.on("authentication", (ctx) => {
        this.authAttempts++;
        if (ctx.method === "password" && ctx.username === USER && ctx.password === PASSWORD) {
          setTimeout(() => ctx.accept(), authDelayMs);
        } else {
          ctx.reject(["password"]);
        }
      });
      client.on("ready", () => {
        handshakeOver();
        client.on("session", (accept, reject) => {
          this.sessionOpens++;
          if (this.refuseSessions > 0) {
            this.refuseSessions--;
            reject();
            return;
          }
          const session = accept();
          sessions++;
          this.maxSessionsPerConnection = Math.max(this.maxSessionsPerConnection, sessions);
          session.once("close", () => sessions--);
          session.once("exec", (acceptExec, _rejectExec, info) => {
            const channel = acceptExec();
            this.run(client, channel, info.command);
          });
        });
      });
    });
  }

  /** A tiny command language for fault injection. */
  private run(client: Connection, channel: ServerChannel, command: string): void {
    const [verb, arg = ""] = command.split(":", 2);
    channel.on("error", () => {});
    switch (verb) {
      case "echo":
        channel.write(arg);
        channel.stderr.write("to-stderr");
        channel.exit(0);
        channel.end();
        return;
      case "exit":
        channel.exit(Number(arg));
        channel.end();
        return;
      case "signal":
        channel.exit("TERM", false, "");
        channel.end();
        return;
      case "cat": {
        const parts: Buffer[] = [];
        channel.on("data", (d: Buffer) => parts.push(d));
        channel.on("end", () => {
          channel.write(Buffer.concat(parts));
          channel.exit(0);
          channel.end();
        });
        return;
      }
      case "hold": {
        const timer = setTimeout(() => {
          if (!channel.destroyed) {
            channel.exit(0);
            channel.end();
          }
        }, Number(arg));
        channel.once("close", () => clearTimeout(timer));
        return;
      }
      case "drop":
        // Some output, then the whole connection goes away without an exit status.
        channel.write("partial", () => setTimeout(() => client.end(), 20));
        return;
      default:
        channel.exit(127);
        channel.end();
    }
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.end();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * A TCP relay that can be frozen: it then drops everything, like a dead host.
 * `toClient`, when given, decides how the server's bytes are passed on.
 */
class FreezableRelay {
  readonly server: net.Server;
  port = 0;
  frozen = false;
  private readonly sockets = new Set<net.Socket>();

  constructor(upstreamPort: number, toClient?: (data: Buffer, write: (d: Buffer) => void) => void) {
    this.server = net.createServer((down) => {
      const up = net.connect(upstreamPort, "127.0.0.1");
      this.sockets.add(down).add(up);
      const write = (d: Buffer): void => {
        if (down.writable) down.write(d);
      };
      down.on("data", (d) => {
        if (!this.frozen) up.write(d);
      });
      up.on("data", (d: Buffer) => {
        if (this.frozen) return;
        if (toClient) toClient(d, write);
        else down.write(d);
      });
      const closeBoth = (): void => {
        down.destroy();
        up.destroy();
      };
      down.on("error", closeBoth).on("close", closeBoth);
      up.on("error", closeBoth).on("close", closeBoth);
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** A plain TCP server on 127.0.0.1, closed after the test; resolves with its port. */
async function rawServer(onSocket: (s: net.Socket) => void): Promise<number> {
  const server = net.createServer(onSocket);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  return (server.address() as AddressInfo).port;
}

function target(port: number, over: Partial<MachineTarget> = {}): MachineTarget {
  return {
    id: "mach_test",
    host: "127.0.0.1",
    port,
    username: USER,
    privateKey: null,
    passphrase: null,
    password: PASSWORD,
    hostKeyFingerprint: null,
    hostKeyAlgorithm: null,
    hostKeyPolicy: over.hostKeyFingerprint ? "pinned" : "insecure_accept_any",
    ...over,
  };
}

async function readAll(proc: RemoteProcess): Promise<{ stdout: string; stderr: string }> {
  const collect = async (s: NodeJS.ReadableStream): Promise<string> => {
    const parts: Buffer[] = [];
    for await (const chunk of s) parts.push(Buffer.from(chunk as Buffer));
    return Buffer.concat(parts).toString("utf8");
  };
  const [stdout, stderr] = await Promise.all([collect(proc.stdout), collect(proc.stderr)]);
  return { stdout, stderr };
}

async function rejection(p: Promise<unknown>): Promise<TargetError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof TargetError) return err;
    throw err;
  }
  throw new Error("expected a rejection");
}

async function until(cond: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function setup(
  serverOpts: FakeServerOptions = {},
  transportOpts: SshTransportOptions = {},
): Promise<{ server: FakeServer; transport: Transport }> {
  const server = new FakeServer(serverOpts);
  await server.listen();
  const transport = createSshTransport(transportOpts);
  cleanups.push(() => server.close());
  cleanups.push(() => transport.close());
  return { server, transport };
}

describe("ssh transport against an in-process server", () => {
  it("runs a command: stdout, stderr, exit code; stdin is delivered; a signal is reported without SIG", async () => {
    const { server, transport } = await setup();
    const t = target(server.port);

    const echo = await transport.exec(t, "echo:hello");
    expect(await readAll(echo)).toEqual({ stdout: "hello", stderr: "to-stderr" });
    expect(await echo.done).toEqual({ code: 0, signal: null });

    const cat = await transport.exec(t, "cat", { stdin: "via stdin" });
    expect((await readAll(cat)).stdout).toBe("via stdin");
    expect(await cat.done).toEqual({ code: 0, signal: null });

    const failing = await transport.exec(t, "exit:3");
    await readAll(failing);
    expect(await failing.done).toEqual({ code: 3, signal: null });

    const killed = await transport.exec(t, "signal");
    await readAll(killed);
    expect(await killed.done).toEqual({ code: null, signal: "TERM" });

    // All of it went over one pooled connection.
    expect(server.connections).toBe(1);
    expect(transport.stats()).toEqual({ connections: 1, channels: 0 });
  });

  it("host key mismatch ends the attempt before any authentication", async () => {
    const { server, transport } = await setup();
    const err = await rejection(
      transport.exec(target(server.port, { hostKeyFingerprint: ECDSA.fingerprint }), "echo:x"),
    );
    expect(err.reason).toBe("host_key_mismatch");
    expect(err.message).toContain(`127.0.0.1:${server.port}`);
    expect(err.message).toContain(ED25519.fingerprint);
    // The transport also retried restricted to other key types: still no auth.
    expect(server.connections).toBeGreaterThanOrEqual(1);
    expect(server.authAttempts).toBe(0);
    expect(transport.stats().connections).toBe(0);
  });

  it("with a declared algorithm, a mismatch is decided in one connection", async () => {
    const { server, transport } = await setup();
    const err = await rejection(
      transport.exec(
        target(server.port, { hostKeyFingerprint: ECDSA.fingerprint, hostKeyAlgorithm: "ssh-ed25519" }),
        "echo:x",
      ),
    );
    expect(err.reason).toBe("host_key_mismatch");
    expect(server.connections).toBe(1);
    expect(server.authAttempts).toBe(0);
  });

  it("learns which host key type a pinned fingerprint belongs to", async () => {
    const learned: [string, string][] = [];
    const { server, transport } = await setup(
      { hostKeys: [ED25519.pem, ECDSA.pem] },
      { onHostKeyLearned: (id, alg) => learned.push([id, alg]) },
    );
    const t = target(server.port, { hostKeyFingerprint: ECDSA.fingerprint });
    const probe = await transport.probe(t);
    expect(probe.hostKeyFingerprint).toBe(ECDSA.fingerprint);
    expect(probe.hostKeyAlgorithm).toBe("ecdsa-sha2-nistp256");
    expect(learned).toEqual([["mach_test", "ecdsa-sha2-nistp256"]]);
    // The rejected ed25519 attempt never authenticated; the ecdsa one did.
    expect(server.authAttempts).toBeGreaterThanOrEqual(1);

    // Remembered: a new connection (after forget keeps nothing) goes straight to ecdsa.
    transport.forget("mach_test");
    await until(() => transport.stats().connections === 0, "connections closed after forget");
    const before = server.connections;
    const again = await transport.probe(t);
    expect(again.hostKeyAlgorithm).toBe("ecdsa-sha2-nistp256");
    // forget() also drops the learned type, so it is learned again (2 connections).
    expect(server.connections - before).toBe(2);
  });

  it("a matching pin on the default key type connects once and reports it", async () => {
    const learned: string[] = [];
    const { server, transport } = await setup({}, { onHostKeyLearned: (_id, alg) => learned.push(alg) });
    const probe = await transport.probe(target(server.port, { hostKeyFingerprint: ED25519.fingerprint }));
    expect(probe).toMatchObject({ hostKeyFingerprint: ED25519.fingerprint, hostKeyAlgorithm: "ssh-ed25519" });
    expect(probe.latencyMs).toBeGreaterThan(0);
    expect(server.connections).toBe(1);
    expect(learned).toEqual(["ssh-ed25519"]);
  });

  it("unpinned: accepts the key and reports its fingerprint", async () => {
    const { server, transport } = await setup();
    const probe = await transport.probe(target(server.port));
    expect(probe).toMatchObject({ hostKeyFingerprint: ED25519.fingerprint, hostKeyAlgorithm: "ssh-ed25519" });
  });

  it("wrong password: auth_failed, and the message carries no secret", async () => {
    const { server, transport } = await setup();
    const secret = "wrong-password-do-not-print";
    const err = await rejection(transport.exec(target(server.port, { password: secret }), "echo:x"));
    expect(err.reason).toBe("auth_failed");
    expect(err.message).toContain(USER);
    expect(err.message).toContain(`127.0.0.1:${server.port}`);
    expect(err.message).not.toContain(secret);
    expect(err.machineId).toBe("mach_test");
  });

  it("an unusable private key is auth_failed without echoing key or passphrase", async () => {
    const { server, transport } = await setup();
    const garbage = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-key-at-all\n-----END OPENSSH PRIVATE KEY-----";
    const err = await rejection(
      transport.exec(target(server.port, { privateKey: garbage, passphrase: "pass-phrase-secret" }), "echo:x"),
    );
    expect(err.reason).toBe("auth_failed");
    expect(err.message).not.toContain("not-a-key-at-all");
    expect(err.message).not.toContain("pass-phrase-secret");
    expect(server.connections).toBe(0);
  });

  it("a refused port is unreachable, naming host:port and the errno", async () => {
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const transport = createSshTransport();
    cleanups.push(() => transport.close());
    const err = await rejection(transport.exec(target(port), "echo:x"));
    expect(err.reason).toBe("unreachable");
    expect(err.message).toBe(`cannot connect to 127.0.0.1:${port}: ECONNREFUSED`);
  });

  it("a peer that accepts TCP but never speaks SSH is unreachable after the connect timeout", async () => {
    let peerClosed = false;
    // Reads (and ignores) what the client sends, so it sees the client's close.
    const port = await rawServer((s) => s.resume().on("close", () => (peerClosed = true)));
    const transport = createSshTransport({ connectTimeoutMs: 300, handshakeTimeoutMs: 60_000 });
    cleanups.push(() => transport.close());
    const started = Date.now();
    const err = await rejection(transport.exec(target(port), "echo:x"));
    expect(err.reason).toBe("unreachable");
    expect(err.message).toBe(`timed out connecting to 127.0.0.1:${port}: no SSH answer within 300 ms`);
    // The connect timeout decided, not the (much longer) handshake timeout.
    expect(Date.now() - started).toBeLessThan(30_000);
    // The abandoned socket is closed, not leaked.
    await until(() => peerClosed, "socket closed");
  });

  it("a peer that answers but never finishes the handshake gets the handshake timeout", async () => {
    let peerClosed = false;
    const port = await rawServer((s) => {
      s.write("SSH-2.0-stalling\r\n");
      s.resume().on("close", () => (peerClosed = true));
    });
    const transport = createSshTransport({ connectTimeoutMs: 200, handshakeTimeoutMs: 1_000 });
    cleanups.push(() => transport.close());
    const started = Date.now();
    const err = await rejection(transport.exec(target(port), "echo:x"));
    expect(err.reason).toBe("unreachable");
    expect(err.message).toBe(
      `timed out connecting to 127.0.0.1:${port}: the SSH handshake did not finish within 1000 ms of the server's answer`,
    );
    // It was not cut off at the connect timeout: the answer moved the deadline.
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_000);
    await until(() => peerClosed, "socket closed");
  });

  it("a server that answers in time but is slow to finish the handshake is waited for", async () => {
    const server = new FakeServer();
    await server.listen();
    // Passes the server's version line at once, then holds everything else
    // back for longer than the connect timeout.
    const slow = new FreezableRelay(server.port, (d, write) => {
      if (d.subarray(0, 4).toString("latin1") === "SSH-") write(d);
      else setTimeout(() => write(d), 700);
    });
    await slow.listen();
    const transport = createSshTransport({ connectTimeoutMs: 300, handshakeTimeoutMs: 20_000 });
    cleanups.push(() => server.close(), () => slow.close(), () => transport.close());
    const proc = await transport.exec(target(slow.port), "echo:slow-but-alive");
    expect((await readAll(proc)).stdout).toBe("slow-but-alive");
    expect(await proc.done).toEqual({ code: 0, signal: null });
  });

  it("retries a refused channel (injected twice) and then succeeds", async () => {
    const { server, transport } = await setup({ refuseSessions: 2 }, { maxConnectionsPerMachine: 1 });
    const proc = await transport.exec(target(server.port), "echo:after-retry");
    expect((await readAll(proc)).stdout).toBe("after-retry");
    expect(await proc.done).toEqual({ code: 0, signal: null });
    expect(server.sessionOpens).toBe(3);
    expect(server.connections).toBe(1);
  });

  it("gives up with spawn_failed when channels keep being refused", async () => {
    const { server, transport } = await setup(
      { refuseSessions: 1_000 },
      { maxConnectionsPerMachine: 1, channelOpenRetries: 3, channelOpenBackoffMs: 5 },
    );
    const err = await rejection(transport.exec(target(server.port), "echo:x"));
    expect(err.reason).toBe("spawn_failed");
    expect(err.message).toContain("Channel open failure");
    expect(server.sessionOpens).toBe(4);
    expect(transport.stats().channels).toBe(0);
  });

  it("connection dropped mid-exec: done rejects with connection_lost", async () => {
    const { server, transport } = await setup();
    const proc = await transport.exec(target(server.port), "drop");
    const out = readAll(proc);
    const err = await rejection(proc.done);
    expect(err.reason).toBe("connection_lost");
    expect(err.message).toContain(`127.0.0.1:${server.port}`);
    expect((await out).stdout).toBe("partial");
    await until(() => transport.stats().connections === 0, "dead connection removed");
    expect(transport.stats().channels).toBe(0);
    // The pool recovers: the next exec opens a new connection.
    const next = await transport.exec(target(server.port), "echo:again");
    expect((await readAll(next)).stdout).toBe("again");
    expect(server.connections).toBe(2);
  });

  it("a peer that stops answering is detected by keepalive", async () => {
    const server = new FakeServer();
    await server.listen();
    const relay = new FreezableRelay(server.port);
    await relay.listen();
    const transport = createSshTransport({ keepaliveIntervalMs: 200, keepaliveCountMax: 2 });
    cleanups.push(() => server.close(), () => relay.close(), () => transport.close());

    const proc = await transport.exec(target(relay.port), "hold:60000");
    proc.stdout.resume();
    proc.stderr.resume();
    relay.frozen = true;
    const started = Date.now();
    const err = await rejection(proc.done);
    expect(err.reason).toBe("connection_lost");
    expect(err.message).toContain("keepalive");
    // 200 ms x 2 unanswered keepalives, plus scheduling slack.
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it("aborting the signal closes the channel: done resolves with an unknown outcome", async () => {
    const { server, transport } = await setup();
    const ac = new AbortController();
    const proc = await transport.exec(target(server.port), "hold:60000", { signal: ac.signal });
    proc.stdout.resume();
    proc.stderr.resume();
    await until(() => transport.stats().channels === 1, "channel open");
    ac.abort();
    expect(await proc.done).toEqual({ code: null, signal: null });
    expect(transport.stats().channels).toBe(0);
  });

  it("paces handshakes: never more than N unauthenticated at once to one address", async () => {
    const { server, transport } = await setup({ authDelayMs: 60 }, { handshakesPerDestination: 3 });
    // 12 machines on one address: 12 pools, 12 connections, one handshake window.
    const runs = Array.from({ length: 12 }, async (_, i) => {
      const proc = await transport.exec(target(server.port, { id: `mach_${i}` }), `echo:${i}`);
      const { stdout } = await readAll(proc);
      await proc.done;
      return stdout;
    });
    const outputs = await Promise.all(runs);
    expect(outputs).toEqual(Array.from({ length: 12 }, (_, i) => String(i)));
    expect(server.connections).toBe(12);
    expect(server.maxHandshakes).toBeLessThanOrEqual(3);
    // The pacing is a window, not a serialisation.
    expect(server.maxHandshakes).toBeGreaterThanOrEqual(2);
  });

  it("never opens more than 8 channels on one connection nor more than 4 connections", async () => {
    const { server, transport } = await setup();
    const t = target(server.port);
    let maxChannels = 0;
    let maxConnections = 0;
    const runs = Array.from({ length: 40 }, async (_, i) => {
      const proc = await transport.exec(t, "hold:150");
      const s = transport.stats();
      maxChannels = Math.max(maxChannels, s.channels);
      maxConnections = Math.max(maxConnections, s.connections);
      await readAll(proc);
      return (await proc.done).code ?? -i;
    });
    expect(await Promise.all(runs)).toEqual(Array(40).fill(0));
    expect(server.maxSessionsPerConnection).toBeLessThanOrEqual(8);
    expect(server.maxSessionsPerConnection).toBe(8);
    expect(server.connections).toBe(4);
    expect(maxConnections).toBe(4);
    expect(maxChannels).toBeLessThanOrEqual(32);
    expect(transport.stats()).toEqual({ connections: 4, channels: 0 });
  });

  it("closes idle connections after idleTimeoutMs and reuses a busy pool", async () => {
    const { server, transport } = await setup({}, { idleTimeoutMs: 200 });
    const t = target(server.port);
    for (let i = 0; i < 3; i++) {
      const p = await transport.exec(t, "echo:x");
      await readAll(p);
      await p.done;
    }
    expect(server.connections).toBe(1);
    await until(() => transport.stats().connections === 0, "idle connection closed");
    await until(() => server.clients.size === 0, "server saw the close");
  });

  it("new credentials never reuse an old connection", async () => {
    const { server, transport } = await setup();
    const t = target(server.port);
    const a = await transport.exec(t, "echo:a");
    await readAll(a);
    await a.done;
    // Same machine, another password: must authenticate again (and fail).
    const err = await rejection(transport.exec({ ...t, password: "changed" }, "echo:b"));
    expect(err.reason).toBe("auth_failed");
    expect(server.connections).toBe(2);
    // The old pool was retired: its idle connection is closed.
    await until(() => transport.stats().connections === 0, "old connection closed");
  });

  it("close() ends all connections", async () => {
    const { server, transport } = await setup();
    const p = await transport.exec(target(server.port), "echo:x");
    await readAll(p);
    await p.done;
    expect(transport.stats().connections).toBe(1);
    await transport.close();
    expect(transport.stats().connections).toBe(0);
    await until(() => server.clients.size === 0, "server saw the close");
    const err = await rejection(transport.exec(target(server.port), "echo:x"));
    expect(err.reason).toBe("unreachable");
  });
});
