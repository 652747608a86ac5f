export { SecretBox, SecretKeyError, SecretOpenError, isSealed, keyIdOf, sealedKeyId, KEY_BYTES } from "./secret-box.ts";
export { loadKeyRing, parseKeys, type KeyRingSettings, type LoadedKeyRing } from "./key-ring.ts";
