/**
 * The real entry (`node src/main.ts`, `npm start`) as a new user meets it: a start-up
 * error is one line naming the setting and the fix with exit code 2, typos in
 * FLEETRUN_* variables are warned about, flags work, one data dir serves one process
 * (even after kill -9 of the holder), logs are pretty on a terminal and JSON
 * otherwise, and a Node older than 24 gets one line instead of a stack.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { lockDataDir } from "../../src/data-dir-lock.ts";
import { ROOT, eventually, freePort } from "../fixtures/service.ts";

const NODE24 = path.join(ROOT, "node_modules/.bin/node");
// Each case starts the whole service (Node 24 loading every module) once or more: on
// a loaded 2-core machine one start alone took 10-25 s.
const SLOW = { timeout: 300_000 };
const MAIN = path.join(ROOT, "src/main.ts");

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-startup-"));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The environment of a new user: no FLEETRUN_ or DATABASE_URL from the test runner. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("FLEETRUN_") && k !== "DATABASE_URL" && k !== "PORT" && k !== "HOST") env[k] = v;
  }
  return { ...env, HOST: "127.0.0.1", ...extra };
}

let dirs = 0;
const dataDir = () => path.join(tmp, `data-${++dirs}`);

interface Running {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

const running: ChildProcess[] = [];
afterEach(() => {
  for (const c of running.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});

function start(args: string[], env: Record<string, string>, command = NODE24, commandArgs = [MAIN]): Running {
  const child = spawn(command, [...commandArgs, ...args], { cwd: ROOT, env: cleanEnv(env), stdio: ["ignore", "pipe", "pipe"] });
  running.push(child);
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, output: () => out, exited };
}

/** Runs the entry to its end; a start-up error must end it well within the deadline. */
async function runToEnd(args: string[], env: Record<string, string>): Promise<{ code: number | null; stderr: string; stdout: string }> {
  const child = spawn(NODE24, [MAIN, ...args], { cwd: ROOT, env: cleanEnv(env), stdio: ["ignore", "pipe", "pipe"] });
  running.push(child);
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => (stdout += d));
  child.stderr!.on("data", (d) => (stderr += d));
  const code = await new Promise<number | null>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`still running after 120 s: ${stdout}${stderr}`)), 120_000);
    child.on("exit", (c) => {
      clearTimeout(t);
      resolve(c);
    });
  });
  return { code, stderr, stdout };
}

async function listening(port: number, r: Running): Promise<void> {
  await eventually(
    async () => {
      if (r.child.exitCode !== null) throw new Error(`exited: ${r.output()}`);
      return (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => null))?.ok;
    },
    120_000,
    "the service to listen",
  );
}

/** One line on stderr, naming `setting`, nothing on stdout, exit code 2. */
function expectOneLineError(r: { code: number | null; stderr: string; stdout: string }, pattern: RegExp): void {
  expect(r.stdout).toBe("");
  expect(r.stderr.endsWith("\n")).toBe(true);
  expect(r.stderr.trimEnd().split("\n")).toHaveLength(1);
  expect(r.stderr).toMatch(/^fleetrun: /);
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\bat .*\.ts:\d+/);
  expect(r.code).toBe(2);
}

describe("start-up errors: one line naming the setting, exit code 2", SLOW, () => {
  it("port in use", async () => {
    const holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen(0, "127.0.0.1", resolve));
    const port = (holder.address() as net.AddressInfo).port;
    try {
      const r = await runToEnd([], { PORT: String(port), FLEETRUN_DATA_DIR: dataDir(), FLEETRUN_ADMIN_TOKEN: "a".repeat(20) });
      expectOneLineError(r, new RegExp(`port ${port} is in use .*: set PORT`));
    } finally {
      holder.close();
    }
  });

  it.each([
    [{ FLEETRUN_ADMIN_TOKEN: "short" }, [], /FLEETRUN_ADMIN_TOKEN: must be at least 16 characters/],
    [{ DATABASE_URL: "mysql://u@db/x" }, [], /DATABASE_URL: must be a postgres:\/\//],
    [{ PORT: "80a" }, [], /PORT: must be an integer/],
    [{}, ["--prot", "9000"], /--prot: unknown option .*--help/],
    [{}, ["--port=abc"], /--port: must be an integer/],
  ])("bad setting %j %j", async (env, args, pattern) => {
    expectOneLineError(await runToEnd(args, { FLEETRUN_DATA_DIR: dataDir(), ...env }), pattern);
  });

  it("a DATABASE_URL that cannot be reached names DATABASE_URL and never prints the password", async () => {
    const port = await freePort();
    const r = await runToEnd([], { DATABASE_URL: `postgres://fr:s3cret-pw@127.0.0.1:${port}/none`, FLEETRUN_DATA_DIR: dataDir() });
    expectOneLineError(r, /cannot open the PostgreSQL database \(.*\): check DATABASE_URL/);
    expect(r.stderr).not.toContain("s3cret-pw");
  });

  it("a data dir that cannot be created names FLEETRUN_DATA_DIR", async () => {
    const file = path.join(tmp, "a-file");
    fs.writeFileSync(file, "");
    const r = await runToEnd([], { FLEETRUN_DATA_DIR: path.join(file, "data") });
    expectOneLineError(r, /cannot use the data dir .*: set FLEETRUN_DATA_DIR/);
  });
});

describe("a running service", SLOW, () => {
  it("takes flags, warns about unknown FLEETRUN_ variables, and says where the admin token is", async () => {
    const port = await freePort();
    const dir = dataDir();
    const r = start(["--port", String(port), `--data-dir=${dir}`], { FLEETRUN_LOCAL_MACHINES: "1", PORT: "1" });
    await listening(port, r);
    const out = r.output();
    expect(out).toMatch(/FLEETRUN_LOCAL_MACHINES is not a fleetrun setting and is ignored \(did you mean FLEETRUN_LOCAL_MACHINE\?\)/);
    // Not a terminal: JSON lines, and the generated token's place but never the token.
    const token = fs.readFileSync(path.join(dir, "admin-token"), "utf8").trim();
    expect(out).not.toContain(token);
    const lines = out.trim().split("\n").map((l) => JSON.parse(l) as { msg: string; admin_token?: string });
    const banner = lines.find((l) => l.msg.startsWith("fleetrun listening"));
    expect(banner?.admin_token).toBe(path.join(dir, "admin-token"));
    r.child.kill("SIGTERM");
    expect(await r.exited).toBe(0);
  });

  it("warns at start when ssh2's native crypto binding does not load", async () => {
    // A preload makes loading the binding fail as a build for another Node does.
    const port = await freePort();
    const preload = path.join(ROOT, "test/fixtures/no-ssh-binding.cjs");
    const env = { PORT: String(port), FLEETRUN_DATA_DIR: dataDir(), FLEETRUN_ADMIN_TOKEN: "b".repeat(20) };
    const r = start([], env, NODE24, ["--require", preload, MAIN]);
    await listening(port, r);
    expect(r.output()).toMatch(/ssh2's native crypto binding does not load/);
    r.child.kill("SIGTERM");
    expect(await r.exited).toBe(0);
  });

  it("refuses a second process on the same SQLite data dir; kill -9 of the holder frees it; a clean exit releases it", async () => {
    const dir = dataDir();
    const env = { FLEETRUN_DATA_DIR: dir, FLEETRUN_ADMIN_TOKEN: "c".repeat(20) };
    const p1 = await freePort();
    const first = start([], { ...env, PORT: String(p1) });
    await listening(p1, first);

    const second = await runToEnd([], { ...env, PORT: String(await freePort()) });
    expectOneLineError(second, /another fleetrun is running on the data dir .*: stop it first, or set FLEETRUN_DATA_DIR/);

    // PostgreSQL mode takes no lock: the error it reaches is the database's, not the lock's.
    const pg = await runToEnd([], { ...env, PORT: String(await freePort()), DATABASE_URL: `postgres://u@127.0.0.1:${await freePort()}/x` });
    expectOneLineError(pg, /check DATABASE_URL/);

    first.child.kill("SIGKILL");
    await first.exited;
    const p3 = await freePort();
    const third = start([], { ...env, PORT: String(p3) });
    await listening(p3, third);
    third.child.kill("SIGTERM");
    expect(await third.exited).toBe(0);
    // Released on exit: this process can take it at once.
    lockDataDir(dir).release();
  });

  it("prints pretty logs and the first token on a terminal", async () => {
    const port = await freePort();
    const dir = dataDir();
    // `script` gives the service a pseudo-terminal as stdout and stderr.
    const cmd = `exec ${NODE24} ${MAIN}`;
    const r = start([], { PORT: String(port), FLEETRUN_DATA_DIR: dir }, "script", ["-qfec", cmd, "/dev/null"]);
    await listening(port, r);
    const token = await eventually(() => fs.readFileSync(path.join(dir, "admin-token"), "utf8").trim(), 5_000, "the token file");
    await eventually(() => r.output().includes(token), 10_000, "the token on the terminal");
    await eventually(() => r.output().includes("fleetrun listening"), 10_000, "the banner");
    expect(r.output()).toContain(`admin token in ${path.join(dir, "admin-token")}`);
    expect(r.output()).not.toContain('{"level"');
    r.child.kill("SIGTERM");
    await r.exited;
  });
});

describe("npm start", SLOW, () => {
  it("on a Node older than 24 says what to do in one line", () => {
    const old = "/usr/bin/node";
    const version = spawnSync(old, ["-p", "process.versions.node"], { encoding: "utf8" });
    if (version.status !== 0 || Number(version.stdout.split(".")[0]) >= 24) {
      throw new Error(`this test needs a system Node older than 24 at ${old}`);
    }
    const r = spawnSync(old, [path.join(ROOT, "src/start.js")], { cwd: ROOT, env: cleanEnv({}), encoding: "utf8" });
    expect(r.stdout).toBe("");
    expect(r.stderr).toMatch(/^fleetrun needs Node 24 \(this is Node 20\.[\d.]+\): run bash scripts\/start\.sh or npm ci\n$/);
    expect(r.status).toBe(2);
  });

  it("--help lists every setting of the README's settings table, with the same defaults", () => {
    const r = spawnSync("npm", ["start", "--silent", "--", "--help"], { cwd: ROOT, env: cleanEnv({}), encoding: "utf8" });
    expect(r.status).toBe(0);
    const help = new Map<string, string>();
    for (const line of r.stdout.split("\n")) {
      // Secrets have no flag (—).
      const m = /^([A-Z][A-Z0-9_]+)\s+(--[a-z0-9-]+|—)\s+(\S+)\s/.exec(line);
      if (m) help.set(m[1]!, m[3]!);
    }
    const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
    const section = readme.slice(readme.indexOf("### Settings"));
    const table = new Map<string, string>();
    for (const line of section.split("\n")) {
      const m = /^\| (`[A-Z][^|]*`) \| ([^|]+) \|/.exec(line);
      if (!m) continue;
      for (const name of m[1]!.matchAll(/`([A-Z][A-Z0-9_]+)`/g)) table.set(name[1]!, m[2]!.trim().split(" ")[0]!);
    }
    expect(help.size).toBeGreaterThan(20);
    expect([...table.keys()].sort()).toEqual([...help.keys()].sort());
    for (const [env, value] of help) expect({ env, default: table.get(env) }).toEqual({ env, default: value });
  });
});
