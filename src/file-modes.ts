/**
 * Owner-only files. The data dir holds the SQLite database (and its `-wal`
 * and `-shm`, which hold recent writes, stored credentials included), the
 * admin token and the lock: it is made 0700 and every file directly in it
 * 0600, at every start, whatever the umask or an older version left.
 *
 * SQLite creates `-wal`, `-shm` and `-journal` files with the mode of their
 * database file, so creating each database file 0600 before SQLite opens it
 * keeps the files it adds later 0600 too. The process umask is left alone:
 * commands on the built-in local machine inherit it.
 */
import fs from "node:fs";
import path from "node:path";

/** What {@link secureDataDir} changed or could not change, for the log. */
export interface DataDirReport {
  created: boolean;
  /** Entries whose mode was narrowed, e.g. `{ path: "/data", from: 0o755, to: 0o700 }`. */
  tightened: { path: string; from: number; to: number }[];
  /** Entries left as they are, with the reason. */
  problems: string[];
}

/** Thrown when the data dir is a shared directory (the sticky bit of `/tmp`): its files could be replaced by others. */
export class SharedDataDirError extends Error {
  constructor(dir: string) {
    super(`the data dir ${dir} is a shared directory (sticky bit, like /tmp): set FLEETRUN_DATA_DIR to a directory of its own`);
    this.name = "SharedDataDirError";
  }
}

export function octal(mode: number): string {
  return "0" + (mode & 0o7777).toString(8);
}

const ownUid = (): number | undefined => process.getuid?.();

function narrow(file: string, stat: fs.Stats, want: number, report: DataDirReport): void {
  const mode = stat.mode & 0o777;
  if ((mode & ~want & 0o777) === 0) return;
  const uid = ownUid();
  if (uid !== undefined && uid !== 0 && stat.uid !== uid) {
    report.problems.push(`${file} is mode ${octal(mode)} and owned by uid ${stat.uid}, not this user: left as it is`);
    return;
  }
  const to = mode & want;
  try {
    fs.chmodSync(file, to);
    report.tightened.push({ path: file, from: mode, to });
  } catch (err) {
    report.problems.push(`${file} is mode ${octal(mode)} and could not be changed (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
}

/**
 * Creates `dir` 0700 when missing; otherwise narrows it to 0700 and every
 * regular file directly in it to 0600 (symbolic links and subdirectories are
 * left alone). Throws what `mkdir`/`stat` throw, and {@link SharedDataDirError}.
 */
export function secureDataDir(dir: string): DataDirReport {
  const report: DataDirReport = { created: false, tightened: [], problems: [] };
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    report.created = true;
    stat = fs.statSync(dir);
  }
  if (!stat.isDirectory()) throw Object.assign(new Error(`${dir} is not a directory`), { code: "ENOTDIR" });
  if ((stat.mode & 0o1000) !== 0) throw new SharedDataDirError(dir);
  narrow(dir, stat, 0o700, report);
  securePrivateFiles(dir, report);
  return report;
}

/** Narrows every regular file directly in `dir` to 0600 (adds to `report`). */
export function securePrivateFiles(dir: string, report: DataDirReport = { created: false, tightened: [], problems: [] }): DataDirReport {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const file = path.join(dir, entry.name);
    try {
      narrow(file, fs.lstatSync(file), 0o600, report);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }
  return report;
}

/** Creates `file` empty with mode 0600 when it does not exist (before SQLite opens it). */
export function createPrivateFile(file: string): void {
  fs.closeSync(fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_APPEND, 0o600));
}
