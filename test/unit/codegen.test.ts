/** The generated protobuf code in src/gen matches proto/ (regenerated offline with buf). */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { expect, it } from "vitest";
import { ROOT } from "../fixtures/service.ts";

function listFiles(dir: string, base = dir): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? listFiles(p, base) : [path.relative(base, p)];
  });
}

it("src/gen is what `npm run generate` produces from proto/", () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "fleetrun-gen-"));
  try {
    execFileSync(path.join(ROOT, "node_modules/.bin/buf"), ["generate", "--output", out], {
      cwd: ROOT,
      env: { ...process.env, PATH: `${path.join(ROOT, "node_modules/.bin")}:${process.env.PATH}` },
      stdio: "pipe",
    });
    const fresh = path.join(out, "src/gen");
    const committed = path.join(ROOT, "src/gen");
    const files = listFiles(fresh).sort();
    expect(listFiles(committed).sort()).toEqual(files);
    for (const f of files) {
      expect(fs.readFileSync(path.join(committed, f), "utf8"), `${f} is stale: run npm run generate`).toBe(fs.readFileSync(path.join(fresh, f), "utf8"));
    }
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
