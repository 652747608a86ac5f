/**
 * Bearer-token authentication for every RPC (and so for REST, which calls
 * the same services), except health checking and reflection.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";

export interface Principal {
  /** Recorded as `requested_by`. */
  name: string;
  admin: boolean;
}

export const principalKey = createContextKey<Principal | null>(null, { description: "authenticated caller" });

const OPEN_SERVICES = new Set(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]);

function digest(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}

/** Knows the valid tokens by their SHA-256 digests only. */
export class TokenVerifier {
  private readonly tokens: { hash: Buffer; principal: Principal }[] = [];

  addToken(token: string, principal: Principal): void {
    this.tokens.push({ hash: digest(token), principal });
  }

  verify(token: string): Principal | null {
    const h = digest(token);
    let found: Principal | null = null;
    // Compare against every token in constant time per comparison.
    for (const t of this.tokens) {
      if (timingSafeEqual(t.hash, h)) found = t.principal;
    }
    return found;
  }
}

export function bearerToken(header: string | null): string | null {
  if (!header) return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1]! : null;
}

export function authInterceptor(verifier: TokenVerifier): Interceptor {
  return (next) => async (req) => {
    if (OPEN_SERVICES.has(req.service.typeName)) return next(req);
    const token = bearerToken(req.header.get("authorization"));
    if (!token) throw new ConnectError("missing bearer token (Authorization: Bearer <token>)", Code.Unauthenticated);
    const principal = verifier.verify(token);
    if (!principal) throw new ConnectError("invalid token", Code.Unauthenticated);
    req.contextValues.set(principalKey, principal);
    return next(req);
  };
}
