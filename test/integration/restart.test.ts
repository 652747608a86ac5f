/**
 * The service as a real process: kill -9 while 50 async commands run on SSH
 * machines, restart, re-attach; timeouts that hold while it is down; graceful
 * shutdown; memory bound with a huge output and a slow follower.
 */
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { TOKEN, eventually, freePort, processesWith, spawnService, type ServiceProcess } from "../fixtures/service.ts";

const fleet = inject("sshFleet");

function unique(): string {
  return `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
}

async function rest(url: string, method: string, p: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(url + p, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** The local transport's spawner processes whose parent is `pid`. */
function spawnersOf(pid: number): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, "utf8");
      const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (state === "Z" || Number(ppid) !== pid) continue;
      if (fs.readFileSync(`/proc/${p}/cmdline`, "utf8").includes("local-spawner-child")) out.push(Number(p));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : 0;
}

/** The command name of the leader of `pid`'s process group. */
function groupLeaderName(pid: number): string {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const pgid = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2];
  return fs.readFileSync(`/proc/${pgid}/comm`, "utf8").trim();
}

describe("the service process", () => {
  let dataDir: string;
  let port: number;
  let svc: ServiceProcess | null = null;
  const machines: string[] = [];

  const env = () => ({
    FLEETRUN_DATA_DIR: dataDir,
    FLEETRUN_KILL_GRACE_MS: "1000",
    FLEETRUN_SHUTDOWN_GRACE_MS: "3000",
    FLEETRUN_LOCAL_MACHINE: "1",
  });

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-restart-"));
    port = await freePort();
    svc = await spawnService(env(), port);
    const ed = fleet.hostKeys.find((k) => k.algorithm === "ssh-ed25519")!;
    for (let i = 0; i < 5; i++) {
      const r = await rest(svc.url, "POST", "/v1/machines", {
        name: `restart-${i}`,
        host: fleet.addresses[10 + i],
        port: fleet.port,
        username: i % 2 === 0 ? "root" : "frtest",
        private_key: fleet.clientKey.privateKey,
        host_key_fingerprint: ed.fingerprint,
      });
      expect(r.status).toBe(201);
      machines.push(r.body.data.id);
    }
  });

  afterAll(async () => {
    if (svc && svc.child.exitCode === null) {
      svc.child.kill("SIGKILL");
      await svc.exited;
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it("re-attaches after kill -9: 50 running commands end with their real exit codes and complete output", async () => {
    const ids: string[] = [];
    const expected = Array.from({ length: 8 }, (_, i) => `line ${i + 1}\n`).join("");
    for (let i = 0; i < 50; i++) {
      const r = await rest(svc!.url, "POST", "/v1/commands/async", {
        machine_id: machines[i % machines.length],
        command: `for i in 1 2 3 4 5 6 7 8; do echo "line $i"; echo "err $i" >&2; sleep 0.5; done; exit ${i % 7}`,
      });
      expect(r.status).toBe(202);
      ids.push(r.body.data.id);
    }
    // Some output of every command is stored, then the service dies hard.
    await eventually(async () => {
      for (const id of ids) if ((await rest(svc!.url, "GET", `/v1/commands/${id}`)).body.data.stdout_bytes === 0) return false;
      return true;
    }, 20_000, "first output of every command");
    const before = new Map<string, number>();
    for (const id of ids) before.set(id, (await rest(svc!.url, "GET", `/v1/commands/${id}`)).body.data.stdout_bytes);
    svc!.child.kill("SIGKILL");
    await svc!.exited;

    svc = await spawnService(env(), port);
    for (const [i, id] of ids.entries()) {
      const c = await eventually(async () => {
        const d = (await rest(svc!.url, "GET", `/v1/commands/${id}`)).body.data;
        return d.status !== "running" && d.status !== "queued" ? d : null;
      }, 30_000, `${id} to end`);
      expect(c.status, id).toBe("completed");
      expect(c.exit_code).toBe(i % 7);
      expect(c.stdout).toBe(expected);
      expect(c.stderr).toBe(expected.replaceAll("line", "err"));
      expect(c.stdout_bytes).toBeGreaterThanOrEqual(before.get(id)!);
    }
  }, 120_000);

  it("on mach_local: kill -9 takes the spawner down with the service, the detached command runs on and is re-attached", async () => {
    const mark = `6.${unique()}`;
    const r = await rest(svc!.url, "POST", "/v1/commands/async", { machine_id: "mach_local", command: `echo start; sleep ${mark}; echo end; exit 3` });
    expect(r.status).toBe(202);
    const id = r.body.data.id;
    await eventually(async () => (await rest(svc!.url, "GET", `/v1/commands/${id}`)).body.data.stdout_bytes > 0, 20_000, "first output");
    const [spawner] = spawnersOf(svc!.child.pid!);
    expect(spawner).toBeDefined();
    svc!.child.kill("SIGKILL");
    await svc!.exited;
    await eventually(() => !fs.existsSync(`/proc/${spawner}/cmdline`) || !fs.readFileSync(`/proc/${spawner}/cmdline`, "utf8").includes("local-spawner"), 10_000, "the spawner to exit");
    expect(processesWith(`sleep ${mark}`)).toHaveLength(1);

    svc = await spawnService(env(), port);
    const c = await eventually(async () => {
      const d = (await rest(svc!.url, "GET", `/v1/commands/${id}`)).body.data;
      return d.status !== "running" && d.status !== "queued" ? d : null;
    }, 40_000, "the command to end");
    expect(c.status).toBe("completed");
    expect(c.exit_code).toBe(3);
    expect(c.stdout).toBe("start\nend\n");
    // The new service process has its own spawner.
    expect(spawnersOf(svc!.child.pid!)).toHaveLength(1);
  }, 90_000);

  it("a follower that reconnects with its last offset after a crash sees no gap and no duplicate", async () => {
    const r = await rest(svc!.url, "POST", "/v1/commands/async", {
      machine_id: machines[0],
      command: "for i in $(seq 1 12); do echo tick$i; sleep 0.3; done",
    });
    const id = r.body.data.id;
    // Follow until a few lines arrived, remembering the resume offset.
    let seen = "";
    let offset = 0;
    await new Promise<void>((resolve, reject) => {
      const req = http.get(`${svc!.url}/v1/commands/${id}/stream`, { headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
        let buf = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => {
          buf += d;
          let nl: number;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const ev = JSON.parse(buf.slice(0, nl)).data;
            buf = buf.slice(nl + 1);
            if (ev.output) {
              seen += ev.output.data;
              offset = ev.output.offset + Buffer.byteLength(ev.output.data);
            }
            if (seen.split("\n").length > 4) {
              req.destroy();
              resolve();
              return;
            }
          }
        });
      });
      req.on("error", (e) => (seen.split("\n").length > 4 ? resolve() : reject(e)));
    });
    svc!.child.kill("SIGKILL");
    await svc!.exited;
    svc = await spawnService(env(), port);
    const rest2 = await new Promise<string>((resolve, reject) => {
      http
        .get(`${svc!.url}/v1/commands/${id}/stream?offset=${offset}`, { headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => (body += d));
          res.on("end", () => resolve(body));
        })
        .on("error", reject);
    });
    const events = rest2
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l).data);
    const more = events.filter((e) => e.output).map((e) => e.output.data).join("");
    const all = Array.from({ length: 12 }, (_, i) => `tick${i + 1}\n`).join("");
    expect(seen + more).toBe(all);
    expect(events.at(-1).end.status).toBe("completed");
  }, 60_000);

  it("a timeout holds while the service is down; the restart records timed_out", async () => {
    const mark = `501.${unique()}`;
    const r = await rest(svc!.url, "POST", "/v1/commands/async", { machine_id: machines[1], command: `sleep ${mark}`, timeout: 2000 });
    const id = r.body.data.id;
    await eventually(() => processesWith(mark).length > 0, 10_000, "the command to run");
    svc!.child.kill("SIGKILL");
    await svc!.exited;
    // Nobody is watching: the target enforces the timeout on its own.
    await eventually(() => processesWith(mark).length === 0, 15_000, "the target to kill it");
    svc = await spawnService(env(), port);
    const c = await eventually(async () => {
      const d = (await rest(svc!.url, "GET", `/v1/commands/${id}`)).body.data;
      return d.status === "timed_out" ? d : null;
    }, 20_000, "timed_out");
    expect(c.signal).toBe("SIGTERM");
    expect(c.exit_code).toBeNull();
  }, 60_000);

  it("kill -9 while a caller waits: nothing is left running and the command is recorded as lost", async () => {
    const mark = `503.${unique()}`;
    const call = rest(svc!.url, "POST", "/v1/commands", { machine_id: machines[1], command: `sleep ${mark}`, timeout: 6000 }).catch(() => null);
    await eventually(() => processesWith(mark).length > 0, 10_000, "the command to run");
    svc!.child.kill("SIGKILL");
    await svc!.exited;
    await call;
    svc = await spawnService(env(), port);
    // Killed by the restart (its process group is stored), or at the latest by its target-side watchdog.
    await eventually(() => processesWith(mark).length === 0, 15_000, "the orphan to be gone");
    const hist = await rest(svc.url, "GET", `/v1/machines/${machines[1]}/commands?limit=10`);
    const item = hist.body.data.find((c: any) => c.command === `sleep ${mark}`);
    expect(item.status).toBe("lost");
    expect(item.exit_code).toBeNull();
    const c = await rest(svc.url, "GET", `/v1/commands/${item.id}`);
    expect(c.body.data.error.code).toBe("service_restarted");
  }, 60_000);

  it("kill -9 for good while a caller waits: the target-side timeout alone ends the whole group", async () => {
    const mark = `507.${unique()}`;
    // Two processes in the group: the command's shell and a background sleep.
    const command = `sleep ${mark} & sleep ${mark}; wait`;
    const call = rest(svc!.url, "POST", "/v1/commands", { machine_id: machines[0], command, timeout: 1500 }).catch(() => null);
    await eventually(() => processesWith(mark).length >= 2, 10_000, "the command to run");
    const t0 = Date.now();
    svc!.child.kill("SIGKILL");
    await svc!.exited;
    await call;
    // No service at all now: only `timeout` on the target (timeout + grace + slack) can end them.
    const pids = processesWith(mark).map((l) => Number(l.split(" ")[0]));
    expect(pids.length).toBeGreaterThanOrEqual(2);
    // Each of them runs in the process group that coreutils `timeout` leads.
    const leaders = new Set(pids.map((pid) => groupLeaderName(pid)));
    expect([...leaders]).toEqual(["timeout"]);
    await eventually(() => processesWith(mark).length === 0, 15_000, "the target-side timeout to end the group");
    expect(Date.now() - t0).toBeGreaterThan(1000);
    svc = await spawnService(env(), port);
  }, 60_000);

  it("SIGTERM: waiting callers' commands are cancelled after the grace, detached ones keep running and are re-attached", async () => {
    const syncMark = `502.${unique()}`;
    const detached = await rest(svc!.url, "POST", "/v1/commands/async", { machine_id: machines[2], command: "sleep 4; echo done-after-restart" });
    const syncCall = rest(svc!.url, "POST", "/v1/commands", { machine_id: machines[0], command: `sleep ${syncMark}` }).catch(() => null);
    await eventually(() => processesWith(syncMark).length > 0, 10_000, "the sync command to run");
    svc!.child.kill("SIGTERM");
    expect(await svc!.exited).toBe(0);
    await syncCall;
    await eventually(() => processesWith(syncMark).length === 0, 10_000, "the sync command to be cancelled");
    svc = await spawnService(env(), port);
    const hist = await rest(svc.url, "GET", `/v1/machines/${machines[0]}/commands?limit=5`);
    const syncItem = hist.body.data.find((c: any) => c.command === `sleep ${syncMark}`);
    expect(syncItem.status).toBe("cancelled");
    const d = await eventually(async () => {
      const c = (await rest(svc!.url, "GET", `/v1/commands/${detached.body.data.id}`)).body.data;
      return c.status === "completed" ? c : null;
    }, 20_000, "the detached command to complete");
    expect(d.stdout).toBe("done-after-restart\n");
  }, 60_000);

  it("500 MB of output with a slow follower keeps the service's memory bounded", async () => {
    const r = await rest(svc!.url, "POST", "/v1/commands/async", { machine_id: machines[0], command: "head -c 500000000 /dev/zero | tr '\\0' a; echo; echo fin" });
    const id = r.body.data.id;
    // A follower that reads a little, then stops reading for a while.
    const req = http.get(`${svc!.url}/v1/commands/${id}/stream`, { headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
      res.once("data", () => res.pause());
    });
    req.on("error", () => {});
    let peak = 0;
    const pid = svc!.child.pid!;
    await eventually(async () => {
      peak = Math.max(peak, rssKiB(pid));
      const c = (await rest(svc!.url, "GET", `/v1/commands/${id}`)).body.data;
      return c.status === "completed" ? c : null;
    }, 120_000, "500 MB to pass");
    req.destroy();
    const c = (await rest(svc!.url, "GET", `/v1/commands/${id}`)).body.data;
    expect(c.stdout_bytes).toBe(500_000_005);
    expect(c.stdout_truncated).toBe(true);
    expect(c.stdout.endsWith("a\nfin\n")).toBe(true);
    expect(peak).toBeLessThan(400 * 1024);
    // Other commands kept working meanwhile.
    const quick = await rest(svc!.url, "POST", "/v1/commands", { machine_id: machines[1], command: "echo ok" });
    expect(quick.body.data.stdout).toBe("ok\n");
  }, 180_000);
});
