/**
 * What the service leaves on disk and in its logs, against the real entry
 * (`node src/main.ts`) and the real logger: the data dir is 0700 and every file
 * in it 0600 (also the SQLite `-wal`/`-shm`, under a umask of 022, and after an
 * older version left them 0644); a token given as `access_token` in any URL
 * shape never reaches a log line; the first token goes to the terminal only.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, TOKEN, eventually, freePort, spawnService, startService, type TestService } from "../fixtures/service.ts";

const NODE24 = path.join(ROOT, "node_modules/.bin/node");
const MAIN = path.join(ROOT, "src/main.ts");
const SLOW = { timeout: 180_000 };

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-files-"));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function mode(file: string): string {
  return "0" + (fs.statSync(file).mode & 0o777).toString(8);
}

/** Every entry of the data dir with its mode. */
function modes(dir: string): Record<string, string> {
  const out: Record<string, string> = { ".": mode(dir) };
  for (const name of fs.readdirSync(dir).sort()) out[name] = mode(path.join(dir, name));
  return out;
}

async function stop(proc: { child: ChildProcess; exited: Promise<number | null> }): Promise<void> {
  proc.child.kill("SIGTERM");
  expect(await proc.exited).toBe(0);
}

describe("files", SLOW, () => {
  it("creates the data dir 0700 and every file in it 0600 under umask 022, also the files SQLite adds while it runs", async () => {
    const dir = path.join(tmp, "fresh", "data");
    const before = process.umask(0o022);
    let proc: Awaited<ReturnType<typeof spawnService>>;
    try {
      // No FLEETRUN_ADMIN_TOKEN: the token is generated into the data dir.
      proc = await spawnService({ FLEETRUN_DATA_DIR: dir, FLEETRUN_ADMIN_TOKEN: "", FLEETRUN_LOCAL_MACHINE: "1" }, await freePort());
    } finally {
      process.umask(before);
    }
    const token = fs.readFileSync(path.join(dir, "admin-token"), "utf8").trim();
    // Writes while running (a command and its output go to the WAL).
    const r = await fetch(`${proc.url}/v1/commands`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ machine_id: "mach_local", command: "echo stored" }),
    });
    expect(r.status).toBe(200);
    const running = modes(dir);
    expect(running).toEqual({
      ".": "0700",
      "admin-token": "0600",
      "fleetrun.db": "0600",
      "fleetrun.db-shm": "0600",
      "fleetrun.db-wal": "0600",
      "fleetrun.lock": "0600",
      "fleetrun.lock-journal": "0600",
      "secret-key": "0600",
    });
    // Nothing needed narrowing: created so.
    expect(proc.output()).not.toMatch(/narrowed/);
    await stop(proc);
  });

  it("narrows a data dir and files an older version left 0755/0644, and says so in the log", async () => {
    const dir = path.join(tmp, "loose");
    const first = await spawnService({ FLEETRUN_DATA_DIR: dir, FLEETRUN_ADMIN_TOKEN: "" }, await freePort());
    first.child.kill("SIGKILL"); // leaves -wal and -shm behind, as a crash does
    await first.exited;
    fs.chmodSync(dir, 0o755);
    for (const name of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, name), 0o644);
    expect(fs.existsSync(path.join(dir, "fleetrun.db-wal"))).toBe(true);

    const proc = await spawnService({ FLEETRUN_DATA_DIR: dir, FLEETRUN_ADMIN_TOKEN: "" }, await freePort());
    for (const [name, m] of Object.entries(modes(dir))) expect({ name, mode: m }).toEqual({ name, mode: name === "." ? "0700" : "0600" });
    const out = proc.output();
    expect(out).toContain(`${dir} was mode 0755: narrowed to 0700 (owner only)`);
    expect(out).toContain(`${path.join(dir, "admin-token")} was mode 0644: narrowed to 0600 (owner only)`);
    expect(out).toContain(`${path.join(dir, "fleetrun.db-wal")} was mode 0644: narrowed to 0600 (owner only)`);
    await stop(proc);
  });

  it("refuses a shared directory (sticky bit, like /tmp) as the data dir in one line, exit 2", async () => {
    const dir = path.join(tmp, "shared");
    fs.mkdirSync(dir);
    fs.chmodSync(dir, 0o1777);
    const child = spawn(NODE24, [MAIN], {
      env: { ...process.env, FLEETRUN_DATA_DIR: dir, PORT: String(await freePort()), HOST: "127.0.0.1", FLEETRUN_ADMIN_TOKEN: TOKEN },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (d) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    expect(code).toBe(2);
    expect(stderr).toMatch(/^fleetrun: the data dir .* is a shared directory \(sticky bit, like \/tmp\): set FLEETRUN_DATA_DIR to a directory of its own\n$/);
    // Left as it was.
    expect((fs.statSync(dir).mode & 0o7777).toString(8)).toBe("1777");
  });
});

describe("access_token in any URL shape never reaches a log line", () => {
  let svc: TestService;
  const lines: string[] = [];
  let commandId: string;

  beforeAll(async () => {
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(...chunk.toString("utf8").split("\n").filter((l) => l !== ""));
        done();
      },
    });
    svc = await startService({ logStream: sink });
    const r = await svc.rest("POST", "/v1/commands", { machine_id: "mach_local", command: "echo hi" });
    expect(r.status).toBe(200);
    commandId = r.body.data.id as string;
  });
  afterAll(async () => {
    await svc?.close();
  });

  /** GET `target` verbatim (a `#` included) over HTTP/1.1 without an Authorization header. */
  function getRaw(target: string): Promise<number> {
    return new Promise((resolve, reject) => {
      http
        .get({ host: "127.0.0.1", port: svc.port, path: target, agent: false }, (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        })
        .on("error", reject);
    });
  }

  it("redacts every shape over HTTP/1.1 and h2, including the ones the stream accepts", async () => {
    const stream = `/v1/commands/${commandId}/stream`;
    const T = encodeURIComponent(TOKEN);
    const shapes = [
      `${stream}?access_token=${T}`,
      `${stream}??access_token=${T}`,
      `${stream}?#&access_token=${T}`,
      `${stream}#?access_token=${T}`,
      `${stream}?offset=0&access_token=${T}`,
      `${stream}?access%5Ftoken=${T}`,
      `${stream}?ACCESS_TOKEN=${T}`,
      `${stream}?access_token=${T}&access_token=${T}`,
      `${stream}?offset=?access_token=${T}`,
      `${stream}?access_token%3D${T}`,
      `${stream}#access_token=${T}`,
      `/v1/commands/${commandId};access_token=${T}/stream`,
      `/nope?access_token=${T}`,
      `/healthz?a=1&access_token=${T}`,
    ];
    const statuses: Record<string, number> = {};
    for (const shape of shapes) statuses[shape] = await getRaw(shape);
    // The stream authenticates with these, the shapes the redaction must cover above all.
    expect(statuses[`${stream}?access_token=${T}`]).toBe(200);
    expect(statuses[`${stream}??access_token=${T}`]).toBe(200);
    expect(statuses[`${stream}?access%5Ftoken=${T}`]).toBe(200);
    expect(statuses[`${stream}?offset=0&access_token=${T}`]).toBe(200);

    const session = http2.connect(svc.url);
    session.on("error", () => {});
    for (const shape of shapes.slice(0, 4)) {
      await new Promise<void>((resolve, reject) => {
        const st = session.request({ ":path": shape });
        st.on("end", () => resolve());
        st.on("error", reject);
        st.resume();
      });
    }
    session.close();

    await eventually(() => lines.filter((l) => l.includes("incoming request")).length >= shapes.length + 4, 5_000, "the request log lines");
    const all = lines.join("\n");
    expect(all).not.toContain(TOKEN);
    expect(all).not.toContain(T);
    expect(all).toContain(`${stream}??access_token=[REDACTED]`);
    expect(all).toContain(`${stream}?access%5Ftoken=[REDACTED]`);
    expect(all).toContain(`${stream}?[REDACTED]`);
  });
});

describe("the first admin token", SLOW, () => {
  it("goes to the terminal only: stderr on a terminal shows it, the log file written meanwhile never has it", async () => {
    const dir = path.join(tmp, "banner");
    const logFile = path.join(tmp, "banner.log");
    const port = await freePort();
    // `script` gives the service a terminal; its stdout (the log) goes to a file.
    const child = spawn("script", ["-qfec", `exec ${NODE24} ${MAIN} > ${logFile}`, "/dev/null"], {
      env: { ...process.env, FLEETRUN_DATA_DIR: dir, PORT: String(port), HOST: "127.0.0.1", FLEETRUN_ADMIN_TOKEN: "", FLEETRUN_LOG_LEVEL: "info" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let terminal = "";
    child.stdout!.on("data", (d) => (terminal += d));
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    try {
      const token = await eventually(() => fs.readFileSync(path.join(dir, "admin-token"), "utf8").trim(), 60_000, "the token file");
      await eventually(() => terminal.includes(token), 30_000, "the token on the terminal");
      await eventually(() => fs.readFileSync(logFile, "utf8").includes("fleetrun listening"), 30_000, "the log line");
      const log = fs.readFileSync(logFile, "utf8");
      expect(log).not.toContain(token);
      expect(log).toContain(`admin token in ${path.join(dir, "admin-token")}`);
    } finally {
      child.kill("SIGTERM");
      await exited;
    }
  });

  it("without a terminal, the log says where the token is, never the token", async () => {
    const dir = path.join(tmp, "banner-notty");
    const proc = await spawnService({ FLEETRUN_DATA_DIR: dir, FLEETRUN_ADMIN_TOKEN: "", FLEETRUN_LOG_LEVEL: "info" }, await freePort());
    const token = fs.readFileSync(path.join(dir, "admin-token"), "utf8").trim();
    await eventually(() => proc.output().includes("admin token generated into"), 10_000, "the log line");
    expect(proc.output()).not.toContain(token);
    expect(proc.output()).toContain(`admin token generated into ${path.join(dir, "admin-token")} (mode 0600): read it there`);
    await stop(proc);
  });
});
