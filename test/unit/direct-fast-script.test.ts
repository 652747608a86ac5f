/**
 * The light path's command line and script on an SSH target without a
 * run-as user, run here as sshd would run them: `sh -c <command line>` as
 * the leader of a session of its own (setsid), the script on stdin.
 */
import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";
import { directFastCommandLine, directFastScript, newNonce } from "../../src/exec/remote-script.ts";

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

function runAsSshd(commandLine: string, script: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    // detached: a new session, as sshd gives an exec request without a pty.
    const child = spawn("/bin/sh", ["-c", commandLine], { detached: true, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    let err = "";
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out), stderr: err }));
    child.stdin.end(script);
  });
}

describe("the light path's fast command line", () => {
  it("carries only the two durations: never the command, cwd or env values", () => {
    const line = directFastCommandLine({ graceMs: 5_000, watchdogMs: 67_500 });
    expect(line).toBe("exec timeout -s TERM -k 5.000 67.500 /bin/sh -s");
  });

  it("runs the command in a group led by timeout, announces it, and keeps output and exit code byte for byte", async () => {
    const nonce = newNonce();
    const script = directFastScript({
      nonce,
      command: `printf 'a\\377b\\n'; printf 'err\\n' >&2; ps -o pgid= -p $$ | tr -d ' '; cat /proc/$(ps -o pgid= -p $$ | tr -d ' ')/comm; printf %s "$V"; exit 7`,
      cwd: "/tmp",
      env: { V: "x'y $(z)" },
      timeoutMs: 60_000,
      graceMs: 1_000,
    });
    const r = await runAsSshd(directFastCommandLine({ graceMs: 1_000, watchdogMs: 63_000 }), script);
    expect(r.code).toBe(7);
    const text = r.stdout.toString("latin1");
    const [header, ...rest] = text.split("\n");
    const m = new RegExp(`^${nonce} started (\\d+) (\\d+)$`).exec(header ?? "");
    expect(m).not.toBeNull();
    // The output after the header: the raw bytes, the group (= the one announced), its leader, the env value.
    expect(rest.join("\n")).toBe(`a\xffb\n${m![1]}\ntimeout\nx'y $(z)`);
    expect(r.stderr).toBe(`${nonce}\nerr\n`);
  });

  it("reports a cwd it cannot enter as an error header, running nothing", async () => {
    const nonce = newNonce();
    const script = directFastScript({ nonce, command: "echo should-not-run", cwd: "/no/such/dir", env: {}, timeoutMs: 60_000, graceMs: 1_000 });
    const r = await runAsSshd(directFastCommandLine({ graceMs: 1_000, watchdogMs: 63_000 }), script);
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe(`${nonce} error cwd_not_found\n`);
    expect(r.stderr).toMatch(/^cwd \/no\/such\/dir: no such directory, or \S+ may not enter it/);
  });

  it("the target-side timeout ends the command's whole group by itself", async () => {
    const nonce = newNonce();
    const script = directFastScript({ nonce, command: "sleep 30 & sleep 30; wait", cwd: null, env: {}, timeoutMs: 500, graceMs: 300 });
    const t0 = Date.now();
    const r = await runAsSshd(directFastCommandLine({ graceMs: 300, watchdogMs: 500 }), script);
    // The background sleep holds stdout open: the pipes close this soon only once it is gone too.
    expect(Date.now() - t0).toBeLessThan(10_000);
    // coreutils timeout: 124 once it sent SIGTERM and the command died of it.
    expect(r.code).toBe(124);
  });
});
