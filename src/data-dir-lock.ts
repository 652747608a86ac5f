/**
 * One fleetrun per SQLite data dir: two would both re-attach (and settle) the same
 * detached commands. The lock is an OS-level lock (SQLite's own fcntl lock, held by an
 * exclusive transaction on `<data dir>/fleetrun.lock` for the life of the process),
 * so the kernel drops it when the process ends in any way, `kill -9` included: no
 * pid file to go stale, no guess about whether a pid still belongs to fleetrun.
 */
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { createPrivateFile } from "./file-modes.ts";

export interface DataDirLock {
  readonly file: string;
  release(): void;
}

/** Thrown when another process holds the data dir. */
export class DataDirLockedError extends Error {
  readonly dataDir: string;
  constructor(dataDir: string) {
    super(`another fleetrun is running on the data dir ${dataDir}: stop it first, or set FLEETRUN_DATA_DIR to another directory`);
    this.name = "DataDirLockedError";
    this.dataDir = dataDir;
  }
}

export function lockDataDir(dataDir: string): DataDirLock {
  const file = path.join(dataDir, "fleetrun.lock");
  // Owner only, as everything in the data dir; SQLite gives its journal the same mode.
  createPrivateFile(file);
  const db = new DatabaseSync(file, { timeout: 0 });
  try {
    db.exec("PRAGMA locking_mode = EXCLUSIVE");
    // The write takes SQLite's exclusive lock; locking_mode keeps it after COMMIT
    // until the connection closes.
    db.exec(`BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS holder (pid INTEGER); DELETE FROM holder; INSERT INTO holder VALUES (${process.pid}); COMMIT;`);
  } catch (err) {
    db.close();
    if ((err as { errcode?: number }).errcode === 5 /* SQLITE_BUSY */) throw new DataDirLockedError(dataDir);
    throw err;
  }
  let held = true;
  return {
    file,
    release() {
      if (!held) return;
      held = false;
      db.close();
    },
  };
}
