/**
 * The local transport: `/bin/sh -c` on the service's own host, started by a
 * spawner process so that the service itself never forks.
 */
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
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
  hostKeyPolicy: null,
  local: true,
};

async function readBuffers(proc: RemoteProcess): Promise<{ stdout: Buffer; stderr: Buffer }> {
  const collect = async (s: NodeJS.ReadableStream): Promise<Buffer> => {
    const parts: Buffer[] = [];
    for await (const chunk of s) parts.push(Buffer.from(chunk as Buffer));
    return Buffer.concat(parts);
  };
  const [stdout, stderr] = await Promise.all([collect(proc.stdout), collect(proc.stderr)]);
  return { stdout, stderr };
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

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

function statOf(pid: number): { state: string; ppid: number } | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { state: rest[0]!, ppid: Number(rest[1]) };
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  const s = statOf(pid);
  return s !== null && s.state !== "Z";
}

function cmdlineOf(pid: number): string {
  return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
}

async function run(transport: ReturnType<typeof createLocalTransport>, command: string, stdin?: string | Buffer) {
  const proc = await transport.exec(local, command, stdin === undefined ? {} : { stdin });
  const [out, exit] = await Promise.all([readAll(proc), proc.done]);
  return { ...out, exit };
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
  afterAll(() => transport.close());

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

  it("reports TERM: the spawner's own signal handling does not reach the process", async () => {
    const r = await run(transport, "kill -s TERM $$; sleep 5");
    expect(r.exit).toEqual({ code: null, signal: "TERM" });
  });

  it("the process's parent is the spawner, a child of this process, not this process", async () => {
    const r = await run(transport, "echo $PPID");
    const spawner = Number(r.stdout.trim());
    expect(spawner).not.toBe(process.pid);
    expect(statOf(spawner)?.ppid).toBe(process.pid);
    expect(cmdlineOf(spawner)).toContain("local-spawner-child.ts");
    // One spawner serves every exec.
    expect(Number((await run(transport, "echo $PPID")).stdout.trim())).toBe(spawner);
  });

  it("stdin, stdout and stderr carry several MB byte-exact, three processes at once", { timeout: 60_000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-local-"));
    try {
      const inputs = [0, 1, 2].map(() => crypto.randomBytes(3 * 1024 * 1024 + 17));
      const results = await Promise.all(
        inputs.map(async (input, i) => {
          const f = path.join(dir, `in-${i}`);
          const proc = await transport.exec(local, `cat > ${f}; cat ${f}; cat ${f} ${f} >&2; exit ${i + 3}`, { stdin: input });
          const [out, exit] = await Promise.all([readBuffers(proc), proc.done]);
          return { ...out, exit };
        }),
      );
      results.forEach((r, i) => {
        const input = inputs[i]!;
        expect(r.exit).toEqual({ code: i + 3, signal: null });
        expect(r.stdout.length).toBe(input.length);
        expect(r.stdout.equals(input)).toBe(true);
        expect(r.stderr.equals(Buffer.concat([input, input]))).toBe(true);
      });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  // Without stopping the spawner's read of the pipes before handing them
  // over, every one of 100 such processes lost output.
  it("output written the instant the process starts is not lost (20 processes at once)", { timeout: 120_000 }, async () => {
    const results = await Promise.all(Array.from({ length: 20 }, () => run(transport, "head -c 200000 /dev/zero; head -c 70000 /dev/zero >&2")));
    for (const r of results) {
      expect(r.stdout.length).toBe(200_000);
      expect(r.stderr.length).toBe(70_000);
      expect(r.exit).toEqual({ code: 0, signal: null });
    }
  });

  // Spawns are serial in the spawner: on a loaded 2-core box one takes up to ~0.4 s.
  it("200 concurrent execs all complete with their own output", { timeout: 300_000 }, async () => {
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => run(transport, `echo ${i}; echo e${i} >&2; exit ${i % 7}`)));
    results.forEach((r, i) => {
      expect(r).toEqual({ stdout: `${i}\n`, stderr: `e${i}\n`, exit: { code: i % 7, signal: null } });
    });
    expect(transport.stats()).toEqual({ connections: 0, channels: 0 });
  });

  it("close() of a process closes its pipes without killing it; done settles when it exits", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-local-"));
    try {
      const marker = path.join(dir, "still-ran");
      const proc = await transport.exec(local, `echo $$; sleep 0.4; touch ${marker}`);
      const pid = await new Promise<number>((resolve) => proc.stdout.once("data", (d: Buffer) => resolve(Number(d.toString().trim()))));
      proc.stderr.resume();
      proc.close();
      expect(alive(pid)).toBe(true);
      expect(await proc.done).toEqual({ code: 0, signal: null });
      expect(fs.existsSync(marker)).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("aborting while the process starts rejects exec with the reason; the process is not killed", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-local-"));
    try {
      const marker = path.join(dir, "still-ran");
      const ac = new AbortController();
      const pending = transport.exec(local, `sleep 0.2; touch ${marker}`, { signal: ac.signal });
      ac.abort(new Error("caller went away"));
      await expect(pending).rejects.toThrow("caller went away");
      await until(() => fs.existsSync(marker), "the process to finish its work");
      expect(transport.stats().channels).toBe(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the process gets the service's environment at exec time and no descriptor of the spawner", async () => {
    process.env.FLEETRUN_LOCAL_TEST_VAR = "it's $(here)";
    try {
      const r = await run(
        transport,
        `echo $PPID; printf '%s\\n' "$FLEETRUN_LOCAL_TEST_VAR"; env | grep -c '^NODE_CHANNEL' || true; for f in /proc/$$/fd/*; do readlink "$f"; done`,
      );
      const [ppid, value, channelVars, ...links] = r.stdout.trim().split("\n");
      expect(value).toBe("it's $(here)");
      expect(channelVars).toBe("0");
      const spawner = Number(ppid);
      // The spawner's IPC channel is its fd 3.
      const channel = fs.readlinkSync(`/proc/${spawner}/fd/3`);
      expect(channel).toMatch(/^socket:/);
      expect(links.slice(0, 3).every((l) => l.startsWith("socket:"))).toBe(true);
      expect(links).not.toContain(channel);
      // The spawner itself holds none of the service's environment.
      expect(fs.readFileSync(`/proc/${spawner}/environ`, "utf8")).not.toContain("FLEETRUN_LOCAL_TEST_VAR");
    } finally {
      delete process.env.FLEETRUN_LOCAL_TEST_VAR;
    }
  });
});

describe("the spawner's lifetime", () => {
  const started: number[] = [];
  afterAll(() => {
    // Processes the tests left running on purpose.
    for (const pid of started) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  });

  it("killed with SIGKILL mid-command: done rejects connection_lost, the pipes close, the command runs on, the next exec starts a new spawner", async () => {
    const t = createLocalTransport();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-local-"));
    try {
      const marker = path.join(dir, "still-ran");
      const proc = await t.exec(local, `echo $PPID $$; sleep 0.5; touch ${marker}`);
      const [spawner, pid] = await new Promise<number[]>((resolve) =>
        proc.stdout.once("data", (d: Buffer) => resolve(d.toString().trim().split(" ").map(Number))),
      );
      started.push(pid!);
      const streamsClosed = Promise.all([proc.stdout, proc.stderr].map((s) => new Promise((r) => s.once("close", r))));
      proc.stderr.resume();
      process.kill(spawner!, "SIGKILL");
      const err = await proc.done.then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TargetError);
      expect((err as TargetError).reason).toBe("connection_lost");
      await streamsClosed;
      expect(t.stats().channels).toBe(0);
      // Not killed: the command finishes its work (it writes nothing more).
      await until(() => fs.existsSync(marker), "the command to finish");

      const r = await run(t, "echo $PPID; exit 4");
      expect(r.exit).toEqual({ code: 4, signal: null });
      const next = Number(r.stdout.trim());
      expect(next).not.toBe(spawner);
      expect(statOf(next)?.ppid).toBe(process.pid);
    } finally {
      await t.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("close() stops the spawner; a process still running loses its pipes and done rejects, but is not killed", async () => {
    const t = createLocalTransport();
    const proc = await t.exec(local, "echo $PPID $$; exec sleep 30");
    const [spawner, pid] = await new Promise<number[]>((resolve) =>
      proc.stdout.once("data", (d: Buffer) => resolve(d.toString().trim().split(" ").map(Number))),
    );
    started.push(pid!);
    proc.stderr.resume();
    await t.close();
    expect(alive(spawner!)).toBe(false);
    await expect(proc.done).rejects.toMatchObject({ reason: "connection_lost" });
    expect(alive(pid!)).toBe(true);
  });

  const host = (mode: "exit" | "hold") =>
    spawn(path.join(ROOT, "node_modules/.bin/node"), [path.join(ROOT, "test/fixtures/local-transport-host.ts"), mode], {
      stdio: ["ignore", "pipe", "pipe"],
    });
  const firstLine = (child: ReturnType<typeof host>) =>
    new Promise<number[]>((resolve, reject) => {
      let out = "";
      child.stdout!.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("\n")) resolve(out.trim().split(" ").map(Number));
      });
      child.once("exit", () => reject(new Error(`host exited before printing: ${out}`)));
    });

  it("does not keep the service alive: a host that never calls close() exits when its work is done, and the spawner with it", { timeout: 60_000 }, async () => {
    const child = host("exit");
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    const [spawner] = await firstLine(child);
    expect(statOf(spawner!)?.ppid).toBe(child.pid);
    expect(await exited).toBe(0);
    expect(stderr).toContain('done {"code":0,"signal":null}');
    await until(() => !alive(spawner!), "the spawner to exit", 10_000);
  });

  it("exits when the service is killed with SIGKILL; the command it started is not killed", { timeout: 60_000 }, async () => {
    const child = host("hold");
    child.stderr!.resume();
    const [spawner, pid] = await firstLine(child);
    started.push(pid!);
    expect(cmdlineOf(spawner!)).toContain("local-spawner-child.ts");
    child.kill("SIGKILL");
    await until(() => !alive(spawner!), "the spawner to exit", 10_000);
    expect(alive(pid!)).toBe(true);
  });
});
