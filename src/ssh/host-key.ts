/**
 * Host key helpers: fingerprints as `ssh-keygen -lf` prints them, the key type
 * inside a key blob, and the `serverHostKey` algorithm lists that make a
 * server present one particular key type.
 */
import { createHash } from "node:crypto";

/** Key types a server may hold, in the order they are tried when learning. */
export const HOST_KEY_TYPES: readonly string[] = [
  "ssh-ed25519",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "ssh-rsa",
];

/** `SHA256:` + unpadded base64 of the SHA-256 of the key blob. */
export function fingerprintOf(keyBlob: Buffer): string {
  const digest = createHash("sha256").update(keyBlob).digest("base64");
  return "SHA256:" + digest.replace(/=+$/, "");
}

/** The key type named at the start of an SSH public key blob (`ssh-ed25519`, …), or null. */
export function keyTypeOf(keyBlob: Buffer): string | null {
  if (keyBlob.length < 4) return null;
  const len = keyBlob.readUInt32BE(0);
  if (len === 0 || len > 64 || keyBlob.length < 4 + len) return null;
  return keyBlob.toString("latin1", 4, 4 + len);
}

/**
 * Normalises a host key algorithm or key type name to the key type:
 * `ed25519` → `ssh-ed25519`, `rsa-sha2-512`/`rsa` → `ssh-rsa`,
 * `ecdsa` → `ecdsa-sha2-nistp256`. Returns null for an unknown name.
 */
export function normalizeKeyType(name: string): string | null {
  const n = name.trim().toLowerCase();
  switch (n) {
    case "ed25519":
    case "ssh-ed25519":
      return "ssh-ed25519";
    case "rsa":
    case "ssh-rsa":
    case "rsa-sha2-256":
    case "rsa-sha2-512":
      return "ssh-rsa";
    case "ecdsa":
    case "ecdsa-sha2-nistp256":
      return "ecdsa-sha2-nistp256";
    case "ecdsa-sha2-nistp384":
      return "ecdsa-sha2-nistp384";
    case "ecdsa-sha2-nistp521":
      return "ecdsa-sha2-nistp521";
    default:
      return null;
  }
}

/** The `algorithms.serverHostKey` list that makes a server present a key of `keyType`. */
export function serverHostKeyAlgorithmsFor(keyType: string): string[] {
  if (keyType === "ssh-rsa") return ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"];
  return [keyType];
}

/** Compares two fingerprints, tolerating `=` padding and a missing `SHA256:` prefix. */
export function fingerprintsEqual(a: string, b: string): boolean {
  const norm = (s: string): string => {
    const t = s.trim().replace(/=+$/, "");
    return t.startsWith("SHA256:") ? t.slice(7) : t;
  };
  return norm(a) === norm(b);
}
