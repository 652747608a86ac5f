/** Handler wrappers that route every failure through `toConnectError`. */
import type { HandlerContext } from "@connectrpc/connect";
import { toConnectError } from "./errors.ts";

export function unary<I, O>(fn: (req: I, ctx: HandlerContext) => Promise<O>, onInternal: (e: unknown) => void) {
  return async (req: I, ctx: HandlerContext): Promise<O> => {
    try {
      return await fn(req, ctx);
    } catch (e) {
      throw toConnectError(e, onInternal);
    }
  };
}

export function serverStream<I, O>(fn: (req: I, ctx: HandlerContext) => AsyncIterable<O>, onInternal: (e: unknown) => void) {
  return async function* (req: I, ctx: HandlerContext): AsyncGenerator<O> {
    try {
      yield* fn(req, ctx);
    } catch (e) {
      throw toConnectError(e, onInternal);
    }
  };
}
