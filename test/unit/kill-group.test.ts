/** A delayed kill never reaches a process group that merely reuses the id. */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import { afterEach, expect, it } from "vitest";
import { killGroupScript, newNonce } from "../../src/exec/remote-script.ts";
import { eventually } from "../fixtures/service.ts";

const children: number[] = [];
afterEach(() => {
  for (const pid of children.splice(0)) {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // gone
    }
  }
});

function leaderStart(pid: number): string {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]!;
}

function runScript(script: string): string {
  return spawnSync("/bin/sh", ["-s"], { input: script, encoding: "utf8" }).stdout;
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

function group(): number {
  const child = spawn("sleep", ["300"], { detached: true, stdio: "ignore" });
  children.push(child.pid!);
  return child.pid!;
}

it("kills the group whose leader still is the process that was recorded", async () => {
  const pid = group();
  const nonce = newNonce();
  expect(runScript(killGroupScript(nonce, pid, leaderStart(pid), null, 200))).toContain(`${nonce} sent`);
  await eventually(() => !alive(pid), 5000, "the group to die");
});

it("leaves alone a group whose leader started at another time (a reused id)", () => {
  const pid = group();
  const nonce = newNonce();
  const wrong = String(Number(leaderStart(pid)) - 1);
  expect(runScript(killGroupScript(nonce, pid, wrong, null, 200))).toContain(`${nonce} gone`);
  expect(alive(pid)).toBe(true);
});
