/**
 * Bearer-token authentication and authorization for every RPC (and so for
 * REST, which calls the same services through the same interceptors), except
 * health checking and reflection. In order, before any handler runs:
 *
 * 1. the token is verified (unknown, revoked and expired tokens alike are
 *    UNAUTHENTICATED, with one message);
 * 2. the token's request rate is charged (RESOURCE_EXHAUSTED + retry-after);
 * 3. the method's action (method-actions.ts) must be in the token's scope
 *    (PERMISSION_DENIED);
 * 4. a server stream takes one of the token's stream places until it ends.
 *
 * Handlers then find the principal under `principalKey` and the domain
 * caller (name, scope, per-token command limit) under `callerKey`; machine
 * visibility and run-as are checked in the domain (src/exec/caller.ts).
 */
import { Code, ConnectError, createContextKey, type ContextValues, type Interceptor } from "@connectrpc/connect";
import type { Caller } from "../exec/caller.ts";
import { PermissionDeniedError, UnauthenticatedError } from "../exec/errors.ts";
import { allowsAction, describeAction } from "../exec/scope.ts";
import type { TokenLimiter } from "../exec/token-limits.ts";
import type { Principal, TokenRegistry } from "../exec/tokens.ts";
import { toConnectError } from "./errors.ts";
import { actionFor } from "./method-actions.ts";

export type { Principal } from "../exec/tokens.ts";

export const principalKey = createContextKey<Principal | null>(null, { description: "authenticated caller" });
export const callerKey = createContextKey<Caller | null>(null, { description: "the caller as the domain sees it" });

/** Services that need no token: health checking and reflection. */
export const OPEN_SERVICES: ReadonlySet<string> = new Set(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]);

export function bearerToken(header: string | null): string | null {
  if (!header) return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1]! : null;
}

export interface AuthDeps {
  tokens: TokenRegistry;
  limiter: TokenLimiter;
}

/** The domain's view of a principal: its name, scope and per-token command limit. */
export function callerFor(p: Principal, limiter: TokenLimiter): Caller {
  return { name: p.name, scope: p.scope, holdCommands: (n) => limiter.holdCommands(p, n) };
}

export function authInterceptor(deps: AuthDeps): Interceptor {
  return (next) => async (req) => {
    if (OPEN_SERVICES.has(req.service.typeName)) return next(req);
    let release: (() => void) | null = null;
    try {
      const token = bearerToken(req.header.get("authorization"));
      if (!token) throw new UnauthenticatedError("missing bearer token (Authorization: Bearer <token>)");
      const principal = await deps.tokens.verify(token);
      if (!principal) throw new UnauthenticatedError("invalid, revoked or expired token");
      deps.limiter.request(principal);
      const action = actionFor(req.service.typeName, req.method.name);
      if (!allowsAction(principal.scope, action)) {
        throw new PermissionDeniedError(`this token's scope does not allow ${describeAction(action)}, which ${req.method.name} needs`);
      }
      req.contextValues.set(principalKey, principal);
      req.contextValues.set(callerKey, callerFor(principal, deps.limiter));
      if (req.method.methodKind === "server_streaming") release = deps.limiter.holdStream(principal);
    } catch (err) {
      throw toConnectError(err);
    }
    if (release === null) return next(req);
    const done = release;
    // Given back when the stream ends however it ends (the signal also fires on a normal end).
    req.signal.addEventListener("abort", done, { once: true });
    let res;
    try {
      res = await next(req);
    } catch (err) {
      done();
      throw err;
    }
    if (!res.stream) return res;
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* messages;
        } finally {
          done();
        }
      })(),
    };
  };
}

/** The authenticated principal of a call (set by the interceptor). */
export function principalFrom(values: ContextValues): Principal {
  const p = values.get(principalKey);
  if (!p) throw new ConnectError("not authenticated", Code.Unauthenticated);
  return p;
}

/** The domain caller of a call (set by the interceptor). */
export function callerFrom(values: ContextValues): Caller {
  const c = values.get(callerKey);
  if (!c) throw new ConnectError("not authenticated", Code.Unauthenticated);
  return c;
}
