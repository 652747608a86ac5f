/**
 * Where the secret key ring comes from, in this order:
 *
 * 1. `FLEETRUN_SECRET_KEY`: keys separated by commas (or white space), newest
 *    first, each 32 random bytes in base64 (`openssl rand -base64 32`);
 * 2. `FLEETRUN_SECRET_KEY_FILE`: a file holding keys in the same format;
 * 3. otherwise `<data dir>/secret-key`, generated at first start (mode 0600,
 *    created exclusively so two starts never write two keys).
 *
 * The first key seals new values; every key opens values sealed under it, so
 * a new key goes first and the old one stays until `npm run rotate-secrets`
 * has re-sealed every row. A malformed key is a `SecretKeyError` naming the
 * setting and the key's position, never its text.
 */
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { KEY_BYTES, SecretBox, SecretKeyError } from "./secret-box.ts";

export interface KeyRingSettings {
  /** FLEETRUN_SECRET_KEY */
  secretKey: string | null;
  /** FLEETRUN_SECRET_KEY_FILE */
  secretKeyFile: string | null;
  dataDir: string;
}

export interface LoadedKeyRing {
  box: SecretBox;
  /** True only at the start that generated `<data dir>/secret-key`. */
  generated: boolean;
  /** Things worth a warning at start (a key file others may read). */
  warnings: string[];
}

const HOW = `32 random bytes in base64, newest first, separated by commas (make one with: openssl rand -base64 32)`;

/** Parses a key list; `setting` names where it came from in errors. */
export function parseKeys(text: string, setting: string): Buffer[] {
  const parts = text.split(/[\s,]+/).filter((p) => p !== "");
  if (parts.length === 0) throw new SecretKeyError(`${setting}: no key; expected ${HOW}`);
  const keys: Buffer[] = [];
  parts.forEach((part, i) => {
    const which = parts.length === 1 ? "the key" : `key ${i + 1} of ${parts.length}`;
    if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(part)) throw new SecretKeyError(`${setting}: ${which} is not base64; expected ${HOW}`);
    const key = Buffer.from(part.replaceAll("-", "+").replaceAll("_", "/"), "base64");
    if (key.length !== KEY_BYTES) {
      throw new SecretKeyError(`${setting}: ${which} is ${key.length} bytes, not ${KEY_BYTES}; expected ${HOW}`);
    }
    if (keys.some((k) => k.equals(key))) throw new SecretKeyError(`${setting}: ${which} is listed twice`);
    keys.push(key);
  });
  return keys;
}

function readKeyFile(file: string, setting: string, warnings: string[]): Buffer[] {
  let text: string;
  let mode: number;
  try {
    text = fs.readFileSync(file, "utf8");
    mode = fs.statSync(file).mode;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "unreadable";
    throw new SecretKeyError(`${setting}: cannot read ${file} (${code}): point it at a readable file of keys, ${HOW}`);
  }
  if ((mode & 0o077) !== 0) warnings.push(`${file} (the secret key) may be read by other users: chmod 600 ${file}`);
  return parseKeys(text, `${setting} (${file})`);
}

export function loadKeyRing(settings: KeyRingSettings): LoadedKeyRing {
  const warnings: string[] = [];
  if (settings.secretKey !== null && settings.secretKeyFile !== null) {
    throw new SecretKeyError("FLEETRUN_SECRET_KEY: set FLEETRUN_SECRET_KEY or FLEETRUN_SECRET_KEY_FILE, not both");
  }
  if (settings.secretKey !== null) {
    return { box: new SecretBox(parseKeys(settings.secretKey, "FLEETRUN_SECRET_KEY"), "FLEETRUN_SECRET_KEY"), generated: false, warnings };
  }
  if (settings.secretKeyFile !== null) {
    const file = path.resolve(settings.secretKeyFile);
    const source = `FLEETRUN_SECRET_KEY_FILE (${file})`;
    return { box: new SecretBox(readKeyFile(file, "FLEETRUN_SECRET_KEY_FILE", warnings), source), generated: false, warnings };
  }
  const file = path.join(settings.dataDir, "secret-key");
  const source = `the generated key file ${file} (no FLEETRUN_SECRET_KEY or FLEETRUN_SECRET_KEY_FILE set)`;
  fs.mkdirSync(settings.dataDir, { recursive: true, mode: 0o700 });
  let generated = false;
  try {
    // O_EXCL: two services starting on one data dir never write two keys.
    const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    try {
      fs.writeSync(fd, randomBytes(KEY_BYTES).toString("base64") + "\n");
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    generated = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") {
      const code = (err as NodeJS.ErrnoException).code ?? "error";
      throw new SecretKeyError(`FLEETRUN_SECRET_KEY_FILE: cannot create ${file} (${code}): make the data dir writable or set FLEETRUN_SECRET_KEY_FILE`);
    }
  }
  return { box: new SecretBox(readKeyFile(file, "FLEETRUN_SECRET_KEY_FILE", warnings), source), generated, warnings };
}
