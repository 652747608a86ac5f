/** The quoting every request value goes through before it reaches a shell. */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { envNameProblem, shellQuote, userNameProblem } from "../../src/exec/shell-quote.ts";

const tricky = [
  "",
  "plain",
  "it's",
  "''",
  "'\\''",
  '"double" $HOME `id` $(id) ${x}',
  "new\nline\r\n",
  "tab\tand\\backslash\\n",
  "ünïcødé ✓ 日本語 🚀",
  "; rm -rf / #",
  "$((1+1)) !! * ? [a] ~",
  "-n",
  "--",
];

function shellEcho(quoted: string): Buffer {
  return execFileSync("/bin/sh", ["-c", `printf %s ${quoted}`]);
}

describe("shellQuote", () => {
  it("round-trips tricky strings byte for byte through /bin/sh", () => {
    for (const s of tricky) expect(shellEcho(shellQuote(s)).toString("utf8"), JSON.stringify(s)).toBe(s);
  });

  it("round-trips random byte strings (valid UTF-8) through /bin/sh", () => {
    for (let i = 0; i < 200; i++) {
      const s = Buffer.from(randomBytes(40)).toString("latin1").replace(/\0/g, "");
      expect(shellEcho(shellQuote(s)).toString("latin1")).toBe(Buffer.from(s, "utf8").toString("latin1"));
    }
  });

  it("refuses NUL, which no shell word can carry", () => {
    expect(() => shellQuote("a\0b")).toThrow(/NUL/);
  });
});

describe("env names", () => {
  it("accepts portable names", () => {
    for (const n of ["A", "_x", "PATH", "MY_VAR_2", "lower"]) expect(envNameProblem(n)).toBeNull();
  });
  it("refuses names that are not identifiers", () => {
    for (const n of ["A=B", " BASH_ENV", "1A", "A-B", "", "A B", "$(id)", "ä"]) expect(envNameProblem(n), n).toMatch(/must match/);
  });
  it("refuses variables that change the shell or the dynamic linker", () => {
    for (const n of ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_ANYTHING", "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "BASH_FUNC_x%%"]) {
      expect(envNameProblem(n), n).not.toBeNull();
    }
  });
});

describe("user names", () => {
  it("accepts user names and refuses anything a shell could interpret", () => {
    for (const n of ["root", "frrunas", "www-data", "a.b", "_svc", "machine$"]) expect(userNameProblem(n), n).toBeNull();
    for (const n of ["root; id", "$(id)", "-u", "a b", "", "x".repeat(40), "a\nb", "`id`"]) expect(userNameProblem(n), n).not.toBeNull();
  });
});
