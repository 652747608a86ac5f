/**
 * A command so quick that its exit status and close arrive in the same read
 * as the exec's confirmation still reports its exit code (OpenSSH does this
 * for `true` under load).
 */
import net from "node:net";
import ssh2 from "ssh2";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createSshTransport } from "../../src/ssh/ssh-transport.ts";
import { newHostKey } from "../fixtures/fake-sshd.ts";

const { Server } = ssh2;
const hostKey = newHostKey();
const fingerprint = hostKey.fingerprint;

let server: InstanceType<typeof Server>;
let port = 0;

beforeAll(async () => {
  server = new Server({ hostKeys: [hostKey.pem] }, (client) => {
    client.on("error", () => {});
    client.on("authentication", (ctx) => (ctx.method === "password" ? ctx.accept() : ctx.reject(["password"])));
    client.on("session", (accept) => {
      const session = accept();
      session.on("exec", (acceptExec) => {
        // Everything in one write: success, exit-status, EOF and close.
        const sock = (client as unknown as { _sock: net.Socket })._sock;
        sock.cork();
        const stream = acceptExec();
        stream.exit(7);
        stream.end();
        process.nextTick(() => sock.uncork());
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  port = (server.address() as net.AddressInfo).port;
});
afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

it("keeps the exit status that arrived together with the exec confirmation", async () => {
  const t = createSshTransport({});
  try {
    const target = { id: "m", host: "127.0.0.1", port, username: "u", privateKey: null, passphrase: null, password: "pw", hostKeyFingerprint: fingerprint, hostKeyAlgorithm: null, hostKeyPolicy: "pinned" as const };
    for (let i = 0; i < 20; i++) {
      const p = await t.exec(target, "true");
      p.stdout.resume();
      p.stderr.resume();
      expect(await p.done).toEqual({ code: 7, signal: null });
    }
  } finally {
    await t.close();
  }
});
