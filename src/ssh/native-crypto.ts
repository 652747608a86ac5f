/**
 * Whether ssh2's optional native crypto binding loads in this Node. Without it ssh2
 * silently falls back to a JS path (a Node decipher per packet): ~12 s of main-thread
 * CPU per 100 s under load. `npm ci` builds it for Node 24 (scripts/native-addons.js).
 */
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export const SSH_CRYPTO_BINDING = "ssh2/lib/protocol/crypto/build/Release/sshcrypto.node";

export function sshNativeCrypto(): { loaded: true } | { loaded: false; reason: string } {
  try {
    require(SSH_CRYPTO_BINDING);
    return { loaded: true };
  } catch (err) {
    const message = err instanceof Error ? err.message.split("\n")[0]! : String(err);
    return { loaded: false, reason: message };
  }
}
