/** Checks a private key before it is stored, without ever echoing it. */
import ssh2 from "ssh2";

/** Why `key` cannot be used, or null when it parses (with `passphrase` if encrypted). */
export function privateKeyProblem(key: string, passphrase: string | null): string | null {
  let parsed: unknown;
  try {
    parsed = ssh2.utils.parseKey(key, passphrase ?? undefined);
  } catch {
    return "is not a private key ssh2 can read";
  }
  if (parsed instanceof Error) {
    if (/passphrase|decrypt|encrypted/i.test(parsed.message)) return "is encrypted: a correct passphrase is required";
    return "is not a PEM or OpenSSH private key";
  }
  const first = Array.isArray(parsed) ? parsed[0] : parsed;
  if (!first || typeof (first as { isPrivateKey?: () => boolean }).isPrivateKey !== "function") return "is not a private key";
  if (!(first as { isPrivateKey(): boolean }).isPrivateKey()) return "is a public key; the private key is required";
  return null;
}
