/**
 * The `fleetrun` CLI end to end: the package's bin (node_modules/.bin/fleetrun)
 * as a child process against the real service and sshd fleet. Exit codes
 * passed through, stdout and stderr split byte for byte, Ctrl-C cancelling
 * the remote process group (checked on the target) and a second Ctrl-C
 * detaching, batch progress on a pseudo-terminal and JSON output, follow from
 * an offset and after a dropped connection, profiles, machines, history,
 * completion, and one-line errors for a bad token or URL.
 */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ROOT, eventually, freePort, processesWith, registerMachine, startService, type TestService } from "../fixtures/service.ts";
import { startCutProxy } from "../fixtures/cut-proxy.ts";

const fleet = inject("sshFleet");
const BIN = path.join(ROOT, "node_modules/.bin/fleetrun");

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: Buffer;
  out: string;
  err: string;
}

interface Running {
  child: ReturnType<typeof spawn>;
  stdout: () => string;
  stderr: () => string;
  done: Promise<Result>;
}

/** Starts the CLI; `env` is added to a clean environment (no config of the host's user). */
function start(args: string[], env: Record<string, string | undefined>, input?: string): Running {
  const child = spawn(BIN, args, { env: { PATH: process.env.PATH, HOME: process.env.HOME, NO_COLOR: "1", ...env } as NodeJS.ProcessEnv, stdio: ["pipe", "pipe", "pipe"] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on("data", (d: Buffer) => out.push(d));
  child.stderr!.on("data", (d: Buffer) => err.push(d));
  child.stdin!.end(input ?? "");
  const done = new Promise<Result>((resolve) =>
    child.on("close", (code, signal) => {
      const stdout = Buffer.concat(out);
      const stderr = Buffer.concat(err);
      resolve({ code, signal, stdout, stderr, out: stdout.toString(), err: stderr.toString() });
    }),
  );
  return { child, stdout: () => Buffer.concat(out).toString(), stderr: () => Buffer.concat(err).toString(), done };
}

function unique(): number {
  return 7_000_000 + Math.floor(Math.random() * 2_000_000);
}

/**
 * `sleep N` written so that N appears only on the target: the CLI's own
 * command line (where the tests look for processes too) carries `$((N - 1 + 1))`.
 */
function sleepFor(n: number): string {
  return `sleep $((${n - 1} + 1))`;
}

describe("fleetrun CLI", { timeout: 180_000 }, () => {
  let svc: TestService;
  let configDir: string;
  let env: Record<string, string>;
  let root: string;
  let rootName: string;
  let login: string;
  const cli = (args: string[], extra: Record<string, string | undefined> = {}, input?: string): Promise<Result> => start(args, { ...env, ...extra }, input).done;

  beforeAll(async () => {
    svc = await startService({ db: "sqlite" });
    configDir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-cli-"));
    env = { FLEETRUN_URL: svc.url, FLEETRUN_TOKEN: svc.token, FLEETRUN_CONFIG: path.join(configDir, "config") };
    rootName = `cli-root-${process.pid}`;
    root = await registerMachine(svc, fleet, { index: 10, user: "root", name: rootName });
    login = await registerMachine(svc, fleet, { index: 11, user: "frtest" });
  });
  afterAll(async () => {
    await svc?.close();
    if (configDir) fs.rmSync(configDir, { recursive: true, force: true });
  });

  it("is the package's bin after npm ci, and npx finds it", () => {
    expect(fs.existsSync(BIN)).toBe(true);
    const npx = spawnSync("npx", ["--no-install", "fleetrun", "--version"], { cwd: ROOT, encoding: "utf8", env: { ...process.env, PATH: `${path.join(ROOT, "node_modules/.bin")}:${process.env.PATH}` } });
    expect(npx.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
    expect(npx.status).toBe(0);
  });

  it("passes the remote exit code through (a name works as well as an id)", async () => {
    expect((await cli(["run", rootName, "--", "exit 42"])).code).toBe(42);
    expect((await cli(["run", root, "--", "true"])).code).toBe(0);
    // The same from the sources instead of the bundle made at install.
    expect((await cli(["run", root, "--", "exit 42"], { FLEETRUN_CLI_FROM_SOURCE: "1" })).code).toBe(42);
    expect((await cli(["exec", login, "--", "exit", "3"])).code).toBe(3);
    // A signal fleetrun did not send: 128 + n, as sh reports it.
    expect((await cli(["run", root, "--", "kill -TERM $$"])).code).toBe(143);
  });

  it("exits 124 on timeout, and 255 with one line on stderr when the command never started", async () => {
    const t = await cli(["run", root, "--timeout", "1s", "--", "sleep 30"]);
    expect(t.code).toBe(124);
    expect(t.err).toMatch(/^fleetrun: cmd_\w+ timed_out after 1\.0s \(SIG(TERM|KILL)\)\n$/);
    const refused = await registerMachine(svc, fleet, { host: fleet.refusedAddress, name: `cli-refused-${process.pid}` });
    const f = await cli(["run", refused, "--", "true"]);
    expect(f.code).toBe(255);
    expect(f.err).toMatch(/^fleetrun: cmd_\w+ failed: unreachable: .+\n$/);
  });

  it("streams stdout to stdout and stderr to stderr, byte for byte", async () => {
    // Binary bytes, no trailing newline, large output, both streams interleaved.
    const command = "printf '\\000\\001\\377bin'; printf 'E\\200\\n' >&2; seq 1 30000; printf 'tail-no-newline'; seq 5 >&2";
    const r = await cli(["run", root, "--env", "X=1", "--", command]);
    expect(r.code).toBe(0);
    const seq = Array.from({ length: 30000 }, (_, i) => `${i + 1}\n`).join("");
    expect(r.stdout.equals(Buffer.concat([Buffer.from([0, 1, 0xff]), Buffer.from(`bin${seq}tail-no-newline`)]))).toBe(true);
    expect(r.stderr.equals(Buffer.concat([Buffer.from("E"), Buffer.from([0x80]), Buffer.from("\n1\n2\n3\n4\n5\n")]))).toBe(true);
  });

  it("passes --cwd, --env and --user as given (no shell interprets them)", async () => {
    const r = await cli(["run", root, "--cwd", "/tmp", "-e", "GREETING=it's $(not) `run`", "-e", "EMPTY=", "--user", "frrunas", "--", 'pwd; printf "%s|%s|" "$GREETING" "$EMPTY"; id -un']);
    expect(r.err).toBe("");
    expect(r.out).toBe("/tmp\nit's $(not) `run`||frrunas\n");
  });

  it("Ctrl-C cancels the remote process group: gone on the target, exit 130", async () => {
    const n = unique();
    const run = start(["run", root, "--", `(${sleepFor(n)}) & ${sleepFor(n + 1)}; wait`], env);
    await eventually(() => processesWith(`sleep ${n}`).length > 0 && processesWith(`sleep ${n + 1}`).length > 0, 20_000, "the command's processes on the target");
    run.child.kill("SIGINT");
    const r = await run.done;
    expect({ code: r.code, signal: r.signal, err: r.err }).toMatchObject({ code: 130 });
    expect(r.err).toMatch(/fleetrun: cancelling cmd_\w+ \(Ctrl-C again to stop waiting\)/);
    expect(r.err).toMatch(/fleetrun: cmd_\w+ cancelled \(SIG(TERM|KILL)\)/);
    // The background child of the group too (checked on the target: it runs on this host).
    expect(processesWith(`sleep ${n}`)).toEqual([]);
    expect(processesWith(`sleep ${n + 1}`)).toEqual([]);
    const id = /cmd_\w+/.exec(r.err)![0];
    const got = await cli(["get", id, "-o", "json"]);
    expect(JSON.parse(got.out).status).toBe("cancelled");
  });

  describe("a second Ctrl-C", () => {
    let slow: TestService;
    beforeAll(async () => {
      // SIGKILL only a minute after SIGTERM: a command that ignores SIGTERM outlives the CLI.
      slow = await startService({ db: "sqlite", env: { FLEETRUN_KILL_GRACE_MS: "60000" } });
    });
    afterAll(async () => {
      await slow?.close();
    });

    it("stops waiting for the cancel, says how to follow, and the command keeps running", async () => {
      const machine = await registerMachine(slow, fleet, { index: 17, user: "root" });
      const slowEnv = { ...env, FLEETRUN_URL: slow.url };
      const n = unique();
      const run = start(["run", machine, "--", `trap '' TERM; echo ready; ${sleepFor(n)}`], slowEnv);
      await eventually(() => run.stdout() === "ready\n" && processesWith(`sleep ${n}`).length > 0, 20_000, "the command running");
      run.child.kill("SIGINT");
      await eventually(() => run.stderr().includes("Ctrl-C again to stop waiting"), 10_000, "the first Ctrl-C noted");
      run.child.kill("SIGINT");
      const r = await run.done;
      expect(r.code).toBe(130);
      const id = /cmd_\w+/.exec(r.err)![0];
      expect(r.err).toContain(`fleetrun: stopped waiting; ${id} is being cancelled and may still run. Follow it: fleetrun follow ${id} --from 6\n`);
      const pids = processesWith(`sleep ${n}`);
      expect(pids.length).toBeGreaterThan(0);
      expect(JSON.parse((await cli(["get", id, "-o", "json"], slowEnv)).out).status).toBe("running");
      // Following it again ends when it does.
      const follow = start(["follow", id, "--from", "6"], slowEnv);
      for (const p of pids) process.kill(Number(p.split(" ")[0]), "SIGKILL");
      const f = await follow.done;
      expect(f.out).toBe("");
      expect([130, 137]).toContain(f.code);
    });
  });

  it("Ctrl-C while following only stops following; the command runs on", async () => {
    const n = unique();
    const started = await cli(["run", root, "--detach", "--", `echo started; ${sleepFor(n)}`]);
    const id = started.out.trim();
    expect(id).toMatch(/^cmd_\w+$/);
    const follow = start(["follow", id], env);
    await eventually(() => follow.stdout().includes("started\n"), 20_000, "output");
    follow.child.kill("SIGINT");
    const r = await follow.done;
    expect(r.code).toBe(130);
    expect(r.err).toContain(`fleetrun: stopped waiting; ${id} keeps running. Follow it: fleetrun follow ${id} --from 8`);
    expect(processesWith(`sleep ${n}`).length).toBeGreaterThan(0);
    expect((await cli(["cancel", id])).code).toBe(0);
    await eventually(() => processesWith(`sleep ${n}`).length === 0, 20_000, "the cancelled command gone");
  });

  it("follows from a byte offset: exactly the bytes from there, and the command's exit code", async () => {
    const id = (await cli(["run", root, "--detach", "--", "printf 'hello-world-'; sleep 1; printf 0123456789; exit 5"])).out.trim();
    const r = await cli(["follow", id, "--from", "6"]);
    expect(r.out).toBe("world-0123456789");
    expect(r.code).toBe(5);
    const all = await cli(["logs", "-f", id]);
    expect(all.out).toBe("hello-world-0123456789");
    const stored = await cli(["logs", id]);
    expect(stored.out).toBe("hello-world-0123456789");
    const past = await cli(["follow", id, "--from", "22"]);
    expect(past.out).toBe("");
    expect(past.code).toBe(5);
  });

  it("resumes a follow after the connection drops: no gap, no duplicate", async () => {
    const proxy = await startCutProxy(svc.port);
    try {
      const id = (await cli(["run", root, "--detach", "--", "for i in $(seq 1 40); do echo line-$i; sleep 0.05; done; exit 7"])).out.trim();
      const follow = start(["follow", id], { ...env, FLEETRUN_URL: proxy.url });
      await eventually(() => follow.stdout().includes("line-3\n"), 20_000, "the first lines");
      proxy.cutAll();
      const r = await follow.done;
      expect(r.out).toBe(Array.from({ length: 40 }, (_, i) => `line-${i + 1}\n`).join(""));
      expect(r.code).toBe(7);
      expect(proxy.accepted()).toBeGreaterThan(1);
    } finally {
      await proxy.close();
    }
  });

  it("--detach prints the id; get and cancel act on it", async () => {
    const n = unique();
    const d = await cli(["run", root, "--detach", "-o", "json", "--", sleepFor(n)]);
    const { id, status } = JSON.parse(d.out) as { id: string; status: string };
    expect(["queued", "running"]).toContain(status);
    const c = await cli(["cancel", id]);
    expect(c.code).toBe(0);
    expect(c.out).toContain(`cancelling ${id}`);
    await eventually(async () => JSON.parse((await cli(["get", id, "-o", "json"])).out).status === "cancelled", 20_000, "cancelled");
    const again = await cli(["get", id]);
    expect(again.out).toMatch(/^id: +cmd_\w+\n/m);
    expect(again.out).toMatch(/^status: +cancelled$/m);
    const ended = await cli(["run", root, "--", "true"]);
    expect(ended.code).toBe(0);
    const late = await cli(["cancel", id.replace(/.$/, "0")]);
    expect(late.code).toBe(65);
    expect(late.err).toMatch(/^fleetrun: not_found: .+\n$/);
  });

  describe("batch", () => {
    let label: string;
    const names: string[] = [];
    beforeAll(async () => {
      label = `b${process.pid}`;
      for (const index of [12, 13, 14]) {
        const name = `cli-batch-${index}-${process.pid}`;
        names.push(name);
        await registerMachine(svc, fleet, { index, user: "root", name, labels: { clibatch: label } });
      }
      names.push(`cli-batch-down-${process.pid}`);
      await registerMachine(svc, fleet, { host: fleet.refusedAddress, name: names[3], labels: { clibatch: label } });
    });

    it("shows a live progress line on a terminal, then a table per machine; exits 1 when one failed", async () => {
      const cmd = [BIN, "batch", "--selector", `clibatch=${label}`, "--max-concurrency", "50%", "--", "'sleep 1; echo done-$((6*7))'"].join(" ");
      // script(1) gives the CLI a pseudo-terminal (stdout and stderr both go to it). Not
      // spawnSync: the service under test runs in this process and must keep answering.
      const child = spawn("script", ["-qfec", cmd, "/dev/null"], { env: { ...process.env, ...env, NO_COLOR: "", TERM: "xterm", COLUMNS: "200" }, stdio: ["pipe", "pipe", "inherit"] });
      child.stdin.end();
      let text = "";
      child.stdout.on("data", (d: Buffer) => (text += d.toString()));
      const status = await new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
      expect(status, text).toBe(1);
      expect(text).toMatch(/0\/4 done \| 2 running \| .*0 failed.* \| \S+ elapsed \| ETA /);
      expect(text).toMatch(/4\/4 done \| 0 running \| .*1 failed/);
      const plain = text.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[78]/g, "");
      expect(plain).toMatch(/MACHINE +STATUS +EXIT +DURATION +COMMAND ID +OUTPUT/);
      for (const name of names.slice(0, 3)) expect(plain).toMatch(new RegExp(`${name} +completed +0 +\\S+ +cmd_\\w+ +done-42`));
      expect(plain).toMatch(new RegExp(`${names[3]} +failed +- +- +cmd_\\w+ +unreachable: `));
      expect(plain).toMatch(/4 machines: 3 succeeded, 1 failed in \S+ \(batch batch_\w+\)/);
      // Colours on a terminal without NO_COLOR.
      expect(text).toContain("\x1b[32mcompleted\x1b[39m");
    });

    it("uses no colours with NO_COLOR, even on a terminal, nor off a terminal", async () => {
      const inPty = (extra: Record<string, string>): Promise<string> =>
        new Promise((resolve) => {
          const child = spawn("script", ["-qfec", `${BIN} batch -m ${names[0]} --no-progress -- true`, "/dev/null"], { env: { ...process.env, ...env, TERM: "xterm", ...extra }, stdio: ["pipe", "pipe", "inherit"] });
          child.stdin.end();
          let text = "";
          child.stdout.on("data", (d: Buffer) => (text += d.toString()));
          child.on("close", () => resolve(text));
        });
      const coloured = await inPty({ NO_COLOR: "" });
      expect(coloured).toContain("\x1b[32mcompleted\x1b[39m");
      const plain = await inPty({ NO_COLOR: "1" });
      expect(plain).toMatch(new RegExp(`${names[0]} +completed +0 `));
      expect(plain).not.toContain("\x1b[");
      const piped = await cli(["batch", "-m", names[0]!, "--", "true"], { NO_COLOR: undefined });
      expect(piped.out).toMatch(/^MACHINE +STATUS/);
      expect(piped.out + piped.err).not.toContain("\x1b[");
    });

    it("prints JSON for scripts: every machine's result, no progress and no colours off a terminal", async () => {
      const r = await cli(["batch", "-m", `${names[0]},${names[1]}`, "-m", names[3]!, "-o", "json", "--", "echo out-$((2+3))"], { NO_COLOR: undefined });
      expect(r.code).toBe(1);
      expect(r.err).toBe("");
      const doc = JSON.parse(r.out) as { batch_id: string; meta: Record<string, number>; results: { machine_name: string; status: string; exit_code: number | null; stdout: string; error: { code: string } | null }[] };
      expect(doc.batch_id).toMatch(/^batch_/);
      expect(doc.meta).toMatchObject({ succeeded: 2, failed: 1, errors: 1, total: 3 });
      expect(doc.results).toHaveLength(3);
      const byName = new Map(doc.results.map((x) => [x.machine_name, x]));
      expect(byName.get(names[0]!)).toMatchObject({ status: "completed", exit_code: 0, stdout: "out-5\n" });
      expect(byName.get(names[1]!)).toMatchObject({ status: "completed", exit_code: 0 });
      expect(byName.get(names[3]!)).toMatchObject({ status: "failed", exit_code: null, error: { code: "unreachable" } });
      const ok = await cli(["batch", "-m", names[0]!, "-o", "ndjson", "--", "true"]);
      expect(ok.code).toBe(0);
      const lines = ok.out.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatchObject({ machine_name: names[0], status: "completed" });
      expect(lines[1]).toMatchObject({ summary: { succeeded: 1, total: 1 } });
    });

    it("refuses a batch without machines, or with both --machines and --selector", async () => {
      expect((await cli(["batch", "--", "true"])).code).toBe(64);
      expect((await cli(["batch", "-m", "x", "-l", "a=b", "--", "true"])).code).toBe(64);
      const none = await cli(["batch", "-l", "nothing=here", "--", "true"]);
      expect(none.code).toBe(65);
      expect(none.err).toMatch(/^fleetrun: not_found: no machine carries the labels nothing=here/);
    });
  });

  it("lists a machine's history as a table, filtered, or as JSON", async () => {
    const marker = `hist-${process.pid}`;
    await cli(["run", login, "--", `echo ${marker}; exit 9`]);
    const table = await cli(["history", login, "--since", "1h", "--limit", "5"]);
    expect(table.code).toBe(0);
    expect(table.out).toMatch(/^ID +STATUS +EXIT +DURATION +EXECUTED +USER +BY +COMMAND$/m);
    expect(table.out).toMatch(new RegExp(`cmd_\\w+ +completed +9 +\\S+ +\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d +- +admin +echo ${marker}; exit 9`));
    const json = JSON.parse((await cli(["history", login, "--status", "completed", "-o", "json"])).out) as { data: { command: string; status: string }[] };
    expect(json.data.length).toBeGreaterThan(0);
    expect(json.data.every((h) => h.status === "completed")).toBe(true);
    const none = await cli(["history", login, "--status", "lost"]);
    expect(none.code).toBe(0);
    expect(none.out).toBe("");
    expect((await cli(["history", login, "--since", "soon"])).code).toBe(64);
  });

  it("adds, lists, labels, tests and removes machines, with the key read from a file", async () => {
    const keyFile = path.join(configDir, "id_ed25519");
    fs.writeFileSync(keyFile, fleet.clientKey.privateKey, { mode: 0o600 });
    const fp = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519")!.fingerprint;
    const name = `cli-added-${process.pid}`;
    const common = ["--host", fleet.addresses[16]!, "--port", String(fleet.port), "--user", "root", "--key", keyFile];
    const missing = await cli(["machines", "add", name, ...common]);
    expect(missing.code).toBe(64);
    expect(missing.err).toMatch(/--fingerprint .*, or choose --tofu/);
    const add = await cli(["machines", "add", name, ...common, "--fingerprint", fp, "--label", "env=clitest", "--label", "role=web", "-o", "json"]);
    expect(add.code, add.err).toBe(0);
    const m = JSON.parse(add.out) as { id: string; host_key_fingerprint: string; has_private_key: boolean; labels: Record<string, string> };
    expect(m).toMatchObject({ host_key_fingerprint: fp, has_private_key: true, labels: { env: "clitest", role: "web" } });
    expect(add.out).not.toContain("PRIVATE KEY");

    const list = await cli(["machines", "list", "--selector", "env=clitest"]);
    expect(list.out).toMatch(new RegExp(`^${m.id} +${name} +root@${fleet.addresses[16]!.replace(/\./g, "\\.")}:${fleet.port} +env=clitest,role=web +SHA256:`, "m"));
    const label = await cli(["machines", "label", name, "env=staging", "role-"]);
    expect(label.out).toBe(`${name}: env=staging\n`);
    const test = await cli(["machines", "test", name]);
    expect(test.code, test.err).toBe(0);
    expect(test.out).toMatch(new RegExp(`^ok: ${name} \\(${m.id}\\) answered in \\S+, host key ${fp.replace(/[+/]/g, "\\$&")} \\(ssh-ed25519\\)\n$`));
    expect((await cli(["run", name, "--", "echo via-cli-machine"])).out).toBe("via-cli-machine\n");

    // Trust on first use: no key until the first connection, which pins the one it saw.
    const tofu = await cli(["machines", "add", `${name}-tofu`, ...common, "--tofu", "-o", "json"]);
    expect(tofu.code, tofu.err).toBe(0);
    expect(JSON.parse(tofu.out)).toMatchObject({ host_key_fingerprint: null, host_key_policy: "tofu" });
    expect(tofu.err).toContain("pins the host key its first connection sees");
    expect((await cli(["machines", "list"])).out).toMatch(new RegExp(`${name}-tofu .* tofu \\(none yet\\)`));
    const first = await cli(["machines", "test", `${name}-tofu`]);
    expect(first.code, first.err).toBe(0);
    expect(first.out).toContain(`host key ${fp} (ssh-ed25519, pinned now)`);
    expect(JSON.parse((await cli(["machines", "get", `${name}-tofu`, "-o", "json"])).out)).toMatchObject({ host_key_fingerprint: fp, host_key_policy: "pinned" });
    const wrong = await cli(["machines", "add", `${name}-bad`, ...common, "--fingerprint", "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
    expect(wrong.code).toBe(0);
    const mismatch = await cli(["machines", "test", `${name}-bad`]);
    expect(mismatch.code).toBe(1);
    expect(mismatch.err).toMatch(/host_key_mismatch/);

    for (const n of [name, `${name}-tofu`, `${name}-bad`]) {
      const rm = await cli(["machines", "rm", n]);
      expect(rm.out).toMatch(new RegExp(`^deleted ${n} \\(mach_\\w+\\)\n$`));
    }
    const gone = await cli(["machines", "get", name]);
    expect(gone.code).toBe(65);
    expect(gone.err).toMatch(/^fleetrun: not_found: /);
  });

  describe("errors and configuration", () => {
    it("a bad token is one line with the API's code and exit 77", async () => {
      const r = await cli(["run", root, "--", "true"], { FLEETRUN_TOKEN: "wrong-token-0123456789" });
      expect(r.code).toBe(77);
      expect(r.err).toMatch(/^fleetrun: unauthenticated: [^\n]+\n$/);
      expect(r.out).toBe("");
      const none = await cli(["machines", "list"], { FLEETRUN_TOKEN: undefined });
      expect(none.code).toBe(77);
      expect(none.err).toMatch(/^fleetrun: unauthenticated: no token for .*FLEETRUN_TOKEN.*\n$/);
    });

    it("nothing listening at the URL is one line, exit 69, no stack trace", async () => {
      const port = await freePort();
      const r = await cli(["get", "cmd_x"], { FLEETRUN_URL: `http://127.0.0.1:${port}` });
      expect(r.code).toBe(69);
      expect(r.err).toBe(`fleetrun: unavailable: cannot reach the service at http://127.0.0.1:${port} (connect ECONNREFUSED 127.0.0.1:${port})\n`);
      const bad = await cli(["get", "cmd_x"], { FLEETRUN_URL: "localhost:8080" });
      expect(bad.code).toBe(78);
      expect(bad.err.split("\n")).toHaveLength(2);
    });

    it("usage errors exit 64 with one line", async () => {
      const r = await cli(["run", root, "ls", "-la"]);
      expect(r.code).toBe(64);
      expect(r.err).toContain("fleetrun: unknown option '-la'");
      expect(r.err).toContain("put -- before a command");
      expect((await cli(["run", root, "--timeout", "soon", "--", "true"])).code).toBe(64);
      expect((await cli(["nope"])).code).toBe(64);
    });

    it("login writes a 0600 profile that later commands use; a readable profile is refused", async () => {
      const file = path.join(configDir, "profiles", "config");
      const base = { FLEETRUN_CONFIG: file, FLEETRUN_URL: undefined, FLEETRUN_TOKEN: undefined };
      const bad = await cli(["login", "--url", svc.url, "--with-token"], base, "wrong-token-0123456789\n");
      expect(bad.code).toBe(77);
      expect(fs.existsSync(file)).toBe(false);
      const ok = await cli(["login", "--profile", "test", "--url", svc.url, "--with-token"], base, `${svc.token}\n`);
      expect(ok.code, ok.err).toBe(0);
      expect(fs.statSync(file).mode & 0o777).toBe(0o600);
      expect(fs.readFileSync(file, "utf8")).toBe(`[test]\nurl = ${svc.url}\ntoken = ${svc.token}\n`);
      // The profile alone is enough; the environment wins over it.
      expect((await cli(["--profile", "test", "run", root, "--", "echo from-profile"], base)).out).toBe("from-profile\n");
      expect((await cli(["run", root, "--", "echo env-profile"], { ...base, FLEETRUN_PROFILE: "test" })).out).toBe("env-profile\n");
      const envWins = await cli(["--profile", "test", "get", "cmd_x"], { ...base, FLEETRUN_TOKEN: "wrong-token-0123456789" });
      expect(envWins.code).toBe(77);
      const list = await cli(["config", "list"], base);
      expect(list.out).toContain(`test     ${svc.url}  test…`);
      expect(list.out).not.toContain(svc.token);
      expect((await cli(["--profile", "other", "get", "cmd_x"], base)).code).toBe(78);
      fs.chmodSync(file, 0o644);
      const open = await cli(["--profile", "test", "get", "cmd_x"], base);
      expect(open.code).toBe(78);
      expect(open.err).toBe(`fleetrun: permissions 0644 for ${file} are too open: it holds tokens, so only you may read it (chmod 600 ${file})\n`);
    });
  });

  it("prints bash and zsh completion that the shells load", async () => {
    const bash = await spawnAsync("bash", ["-c", `source <(${BIN} completion bash) && complete -p fleetrun && COMP_WORDS=(fleetrun mach); COMP_CWORD=1; _fleetrun; echo "\${COMPREPLY[*]}"; COMP_WORDS=(fleetrun machines a); COMP_CWORD=2; _fleetrun; echo "\${COMPREPLY[*]}"; COMP_WORDS=(fleetrun run --); COMP_CWORD=2; _fleetrun; echo "\${COMPREPLY[*]}"; COMP_WORDS=(fleetrun -o j); COMP_CWORD=2; _fleetrun; echo "\${COMPREPLY[*]}"; COMP_WORDS=(fleetrun run cli-roo); COMP_CWORD=2; _fleetrun; echo "\${COMPREPLY[*]}"`], { env: { ...process.env, ...env, PATH: `${path.dirname(BIN)}:${process.env.PATH}` } });
    expect(bash.stderr).toBe("");
    const lines = bash.stdout.trim().split("\n");
    expect(lines[0]).toBe("complete -o default -F _fleetrun fleetrun");
    expect(lines[1]!.split(" ").sort()).toEqual(["machine", "machines"]);
    expect(lines[2]).toBe("add");
    expect(lines[3]!.split(" ")).toEqual(expect.arrayContaining(["--cwd", "--env", "--detach", "--timeout", "--user"]));
    expect(lines[4]).toBe("json");
    // Machine names come from the service.
    expect(lines[5]).toBe(rootName);
    const hasZsh = spawnSync("zsh", ["--version"]).status === 0;
    if (hasZsh) {
      const zsh = spawnSync("zsh", ["-c", `source <(${BIN} completion zsh) && echo \${_comps[fleetrun]}`], { encoding: "utf8", env: { ...process.env, ...env, HOME: configDir } });
      expect(zsh.stdout.trim()).toBe("_bash_complete -o default -F _fleetrun");
    }
  });
});

/** spawnSync's result without blocking this process (the service under test runs in it). */
function spawnAsync(cmd: string, args: string[], opts: { env: NodeJS.ProcessEnv }): Promise<{ stdout: string; stderr: string; status: number | null }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: opts.env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (status) => resolve({ stdout, stderr, status }));
  });
}

