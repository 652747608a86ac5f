/**
 * The bootstrap admin token: FLEETRUN_ADMIN_TOKEN when set; otherwise
 * generated at first start into `<data dir>/admin-token` (mode 0600) and
 * shown once, then read back from that file at every later start.
 */
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";

export interface AdminToken {
  token: string;
  /** True only at the start that created the file. */
  generated: boolean;
  file: string | null;
}

export function ensureAdminToken(dataDir: string, fromEnv: string | null): AdminToken {
  if (fromEnv) {
    if (fromEnv.length < 16) throw new Error("FLEETRUN_ADMIN_TOKEN: must be at least 16 characters");
    return { token: fromEnv, generated: false, file: null };
  }
  const file = path.join(dataDir, "admin-token");
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  try {
    const token = fs.readFileSync(file, "utf8").trim();
    if (token.length >= 16) return { token, generated: false, file };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  const token = "frt_" + randomBytes(24).toString("base64url");
  // O_EXCL: two services starting on one data dir never both write it.
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  try {
    fs.writeSync(fd, token + "\n");
  } finally {
    fs.closeSync(fd);
  }
  return { token, generated: true, file };
}
