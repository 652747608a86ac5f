/**
 * The local transport: `/bin/sh -c` on the service's own host.
 */
import { describe, expect, it } from "vitest";
import { TargetError } from "../../src/exec/errors.ts";
import type { MachineTarget, RemoteProcess } from "../../src/exec/ports.ts";
import { createLocalTransport } from "../../src/ssh/local-transport.ts";

const local: MachineTarget = {
  id: "mach_local",
  host: "localhost",
  port: 0,
  username: "",
  privateKey: null,
  passphrase: null,
  password: null,
  hostKeyFingerprint: null,
  hostKeyAlgorithm: null,
  local: true,
};

async function readAll(proc: RemoteProcess): Promise<{ stdout: string; stderr: string }> {
  const collect = async (s: NodeJS.ReadableStream): Promise<string> => {
    const parts: Buffer[] = [];
    for await (const chunk of s) parts.push(Buffer.from(chunk as Buffer));
    return Buffer.concat(parts).toString("utf8");
  };
  const [stdout, stderr] = await Promise.all([collect(proc.stdout), collect(proc.stderr)]);
  return { stdout, stderr };
}

async function until(cond: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("local transport", () => {
  const transport = createLocalTransport();

  it("runs through /bin/sh -c: stdout, stderr and the exit code", async () => {
    const proc = await transport.exec(local, "echo out; echo err >&2; exit 7");
    expect(await readAll(proc)).toEqual({ stdout: "out\n", stderr: "err\n" });
    expect(await proc.done).toEqual({ code: 7, signal: null });
  });

  it("writes stdin and then closes it", async () => {
    const proc = await transport.exec(local, "cat; echo end", { stdin: "from stdin\n" });
    expect((await readAll(proc)).stdout).toBe("from stdin\nend\n");
    expect(await proc.done).toEqual({ code: 0, signal: null });
  });

  it("without stdin the process reads end-of-file at once", async () => {
    const proc = await transport.exec(local, "wc -c");
    expect((await readAll(proc)).stdout.trim()).toBe("0");
  });

  it("reports a signal death by name without SIG", async () => {
    const proc = await transport.exec(local, "kill -s KILL $$");
    await readAll(proc);
    expect(await proc.done).toEqual({ code: null, signal: "KILL" });
  });

  it("counts live processes in stats() and back to 0", async () => {
    const proc = await transport.exec(local, "read line; echo got $line", { stdin: "x\n" });
    expect(transport.stats().channels).toBe(1);
    await readAll(proc);
    await proc.done;
    expect(transport.stats()).toEqual({ connections: 0, channels: 0 });
  });

  it("aborting closes the pipes; the process still ends and done settles", async () => {
    const ac = new AbortController();
    const proc = await transport.exec(local, "sleep 0.3; echo late", { signal: ac.signal });
    let stdout = "";
    proc.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    ac.abort();
    // Not killed: the shell runs on and dies writing to the closed pipe.
    expect(await proc.done).toEqual({ code: null, signal: "PIPE" });
    expect(stdout).toBe("");
    await until(() => transport.stats().channels === 0, "process gone");
  });

  it("probe runs true and measures latency", async () => {
    const probe = await transport.probe(local);
    expect(probe.latencyMs).toBeGreaterThan(0);
    expect(probe).toMatchObject({ hostKeyFingerprint: null, hostKeyAlgorithm: null });
  });

  it("after close() exec is refused", async () => {
    const t = createLocalTransport();
    await t.close();
    await expect(t.exec(local, "true")).rejects.toBeInstanceOf(TargetError);
  });
});
