/**
 * The bare ssh2 baseline: connect (TCP_NODELAY, pinned ed25519 host key,
 * public key auth) and exec, with nothing else around it.
 */
import { createHash } from "node:crypto";
import net from "node:net";
import { Client } from "ssh2";

export interface Ssh2Target {
  host: string;
  port: number;
  username: string;
  privateKey: string;
  /** `SHA256:…` as `ssh-keygen -lf` prints it. */
  fingerprint: string;
}

function fingerprintOf(blob: Buffer): string {
  return "SHA256:" + createHash("sha256").update(blob).digest("base64").replace(/=+$/, "");
}

export function connect(t: Ssh2Target, timeoutMs = 20_000): Promise<Client> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: t.host, port: t.port });
    socket.setNoDelay(true);
    socket.on("error", () => {
      // reported through the client's 'error' event
    });
    const client = new Client();
    let settled = false;
    client.on("error", (err) => {
      if (settled) return;
      settled = true;
      socket.destroy();
      reject(err);
    });
    client.once("ready", () => {
      settled = true;
      resolve(client);
    });
    client.connect({
      sock: socket,
      username: t.username,
      privateKey: t.privateKey,
      readyTimeout: timeoutMs,
      algorithms: { serverHostKey: ["ssh-ed25519"] },
      hostVerifier: (blob: Buffer) => fingerprintOf(blob) === t.fingerprint,
    });
  });
}

export interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function exec(client: Client, command: string, stdin?: string): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    client.exec(command, (err, channel) => {
      if (err) {
        reject(err);
        return;
      }
      if (stdin !== undefined) channel.end(stdin);
      let stdout = "";
      let stderr = "";
      let code: number | null = null;
      channel.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
      channel.stderr.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
      channel.on("exit", (c: number | null) => (code = c));
      channel.on("error", reject);
      channel.on("close", () => resolve({ code, stdout, stderr }));
    });
  });
}

/** Connect, exec `command`, disconnect. */
export async function connectExec(t: Ssh2Target, command: string, timeoutMs?: number): Promise<ExecResult> {
  const client = await connect(t, timeoutMs);
  try {
    return await exec(client, command);
  } finally {
    client.end();
  }
}
