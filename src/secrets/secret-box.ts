/**
 * Credentials at rest: AES-256-GCM under a key ring (newest key first).
 *
 * A sealed value is one ASCII string, `v1:<key id>:<nonce>:<ciphertext+tag>`
 * (nonce and ciphertext in unpadded base64url): the version says how to read
 * it, the key id which key of the ring opens it. The additional authenticated
 * data is the value's context (the table, row id and column), so a ciphertext
 * copied to another row or column does not open. A random 96-bit nonce per
 * value; a key seals far fewer values than the 2^32 that would make a nonce
 * collision a concern.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";

export const KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const ENVELOPE = /^v1:([0-9a-f]{12}):([A-Za-z0-9_-]{16}):([A-Za-z0-9_-]{22,})$/;

/** A secret-key problem found at start-up: one line naming the setting, never a key. */
export class SecretKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SecretKeyError";
  }
}

/** A sealed value that does not open: altered, moved, or sealed under another key. */
export class SecretOpenError extends Error {
  readonly keyId: string | null;
  constructor(message: string, keyId: string | null) {
    super(message);
    this.name = "SecretOpenError";
    this.keyId = keyId;
  }
}

/**
 * The id of a key: the first 12 hex digits of a SHA-256 over a fixed label
 * and the key. It names the key in sealed values and messages without
 * revealing it.
 */
export function keyIdOf(key: Buffer): string {
  return createHash("sha256").update("fleetrun secret key id\0").update(key).digest("hex").slice(0, 12);
}

/** Whether `value` has the shape of a sealed value (otherwise it is clear text from before encryption). */
export function isSealed(value: string): boolean {
  return ENVELOPE.test(value);
}

/** The key id of a sealed value, or null for clear text. */
export function sealedKeyId(value: string): string | null {
  return ENVELOPE.exec(value)?.[1] ?? null;
}

export class SecretBox {
  readonly #keys: Map<string, Buffer>;
  readonly #current: string;
  /** Where the keys came from, for messages (a setting or a file path, never a key). */
  readonly source: string;

  /** `keys`: newest first; the first seals, all of them open. */
  constructor(keys: readonly Buffer[], source: string) {
    if (keys.length === 0) throw new SecretKeyError(`${source}: no key`);
    this.#keys = new Map();
    for (const key of keys) {
      if (key.length !== KEY_BYTES) throw new SecretKeyError(`${source}: a key must be ${KEY_BYTES} bytes`);
      this.#keys.set(keyIdOf(key), Buffer.from(key));
    }
    this.#current = keyIdOf(keys[0]!);
    this.source = source;
  }

  /** The id of the key that seals new values. */
  get currentKeyId(): string {
    return this.#current;
  }

  /** Ids of every key of the ring, newest first. */
  get keyIds(): string[] {
    return [...this.#keys.keys()];
  }

  hasKey(id: string): boolean {
    return this.#keys.has(id);
  }

  seal(plaintext: string, context: string): string {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv("aes-256-gcm", this.#keys.get(this.#current)!, nonce, { authTagLength: TAG_BYTES });
    cipher.setAAD(Buffer.from(context, "utf8"));
    const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final(), cipher.getAuthTag()]);
    return `v1:${this.#current}:${nonce.toString("base64url")}:${body.toString("base64url")}`;
  }

  /** Opens a sealed value; throws `SecretOpenError` (never garbage) when it does not open under `context`. */
  open(sealed: string, context: string): string {
    const m = ENVELOPE.exec(sealed);
    if (m === null) throw new SecretOpenError("not a sealed value", null);
    const [, id, nonceText, bodyText] = m as unknown as [string, string, string, string];
    const key = this.#keys.get(id);
    if (key === undefined) throw new SecretOpenError(`sealed under key ${id}, which is not configured`, id);
    const nonce = Buffer.from(nonceText, "base64url");
    const body = Buffer.from(bodyText, "base64url");
    if (nonce.length !== NONCE_BYTES || body.length < TAG_BYTES) throw new SecretOpenError("malformed sealed value", id);
    try {
      const decipher = createDecipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_BYTES });
      decipher.setAAD(Buffer.from(context, "utf8"));
      decipher.setAuthTag(body.subarray(body.length - TAG_BYTES));
      return Buffer.concat([decipher.update(body.subarray(0, body.length - TAG_BYTES)), decipher.final()]).toString("utf8");
    } catch {
      throw new SecretOpenError(`does not open under key ${id}: altered, or moved from another row or field`, id);
    }
  }
}
