export { createSshTransport } from "./ssh-transport.ts";
export type { SshTransportOptions } from "./ssh-transport.ts";
export { createLocalTransport } from "./local-transport.ts";
export { fingerprintOf, keyTypeOf, normalizeKeyType } from "./host-key.ts";
