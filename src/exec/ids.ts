/**
 * Resource ids: a type prefix and a ULID-like body (48-bit millisecond time,
 * 80 random bits, Crockford base32, lowercase), so ids sort by creation time.
 * Within one millisecond the random part is incremented, keeping order.
 */
import { randomBytes } from "node:crypto";

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";

let lastTime = -1;
let lastRandom: bigint = 0n;

function encode(value: bigint, length: number): string {
  let out = "";
  for (let i = 0; i < length; i++) {
    out = ALPHABET[Number(value & 31n)] + out;
    value >>= 5n;
  }
  return out;
}

export function ulid(now: number = Date.now()): string {
  let random: bigint;
  if (now <= lastTime) {
    now = lastTime;
    random = (lastRandom + 1n) & ((1n << 80n) - 1n);
  } else {
    random = BigInt("0x" + randomBytes(10).toString("hex"));
  }
  lastTime = now;
  lastRandom = random;
  return encode(BigInt(now), 10) + encode(random, 16);
}

export type IdKind = "cmd" | "mach" | "batch" | "tok";

export function newId(kind: IdKind): string {
  return `${kind}_${ulid()}`;
}

/** Whether `id` looks like an id of that kind (shape only). */
export function isId(kind: IdKind, id: string): boolean {
  return id.startsWith(kind + "_") && /^[a-z]+_[0-9a-z]{1,64}$/.test(id);
}
