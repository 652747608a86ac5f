/**
 * No request string may hold a NUL character: a shell cannot carry one, a path or
 * a user name cannot hold one, PostgreSQL's text type refuses it, and a value cut
 * at the NUL by a C library would not be the value that was checked. One check at
 * the door for every RPC (and so for REST, which calls the same services), naming
 * the field, instead of a 500 from the first layer that trips over it.
 */
import type { Interceptor } from "@connectrpc/connect";
import { InvalidArgumentError } from "../exec/errors.ts";
import { toConnectError } from "./errors.ts";

const snake = (name: string): string => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** The JSON path of the first string holding a NUL in `value` (map keys included), or null. */
export function nulField(value: unknown, path = ""): string | null {
  if (typeof value === "string") return value.includes("\0") ? path || "request" : null;
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return null;
  if (Array.isArray(value)) {
    for (const item of value) {
      const hit = nulField(item, path);
      if (hit !== null) return hit;
    }
    return null;
  }
  const isMessage = "$typeName" in value;
  for (const [key, item] of Object.entries(value)) {
    if (key === "$typeName" || key === "$unknown") continue;
    // A oneof is `{ case, value }`: its value is named by its case.
    if (isMessage && item !== null && typeof item === "object" && "case" in item && "value" in item) {
      const oneof = item as { case: unknown; value: unknown };
      if (typeof oneof.case === "string") {
        const hit = nulField(oneof.value, join(path, snake(oneof.case)));
        if (hit !== null) return hit;
      }
      continue;
    }
    const name = isMessage ? snake(key) : key;
    if (!isMessage && key.includes("\0")) return path || "request";
    const hit = nulField(item, join(path, name));
    if (hit !== null) return hit;
  }
  return null;
}

function join(path: string, name: string): string {
  return path === "" ? name : `${path}.${name}`;
}

function check(message: unknown): void {
  const field = nulField(message);
  if (field !== null) throw toConnectError(new InvalidArgumentError(field, "must not contain NUL characters"));
}

export function nulGuardInterceptor(): Interceptor {
  return (next) => async (req) => {
    if (!req.stream) {
      check(req.message);
      return next(req);
    }
    const source = req.message;
    async function* guarded() {
      for await (const m of source) {
        check(m);
        yield m;
      }
    }
    return next({ ...req, message: guarded() });
  };
}
