/**
 * Server-Sent Events naming for `CommandEvent` streams (`WatchCommand`).
 *
 * Event names are the set member of the event oneof: `started`, `output`,
 * `skipped`, `end`. The event id is the byte offset in the combined output log
 * to resume from: after an `output` chunk, its offset plus its length; after
 * `end`, the total output size. `Last-Event-ID` sets the request's `offset`.
 *
 * Ending:
 * - `end` carries `retry: 60000`: a page that keeps its EventSource open
 *   after the end reconnects once, a minute later, with `Last-Event-ID` at
 *   the end offset; such a reconnect (SSE, `Last-Event-ID` given, command
 *   ended, ID >= its total output size) is answered 204 No Content, which
 *   makes EventSource stop for good (WHATWG HTML, server-sent events).
 * - When the service stops, the stream ends with `event: stopping`, `id:`
 *   the offset received up to and `retry: 2000`: EventSource reconnects
 *   with that `Last-Event-ID` and, once the service is back, resumes with no
 *   gap and no duplicate.
 */
import { isMessage } from "@bufbuild/protobuf";
import type { Message } from "@bufbuild/protobuf";
import { CommandEventSchema, CommandService, WatchCommandRequestSchema } from "../gen/fleetrun/v1/command_pb.js";
import { RestInputError } from "./json-codec.ts";
import type { SseAdapter } from "./stream-response.ts";

/** Reconnection advice sent with `end`: the reconnect of a page that did not close is answered 204 (ms). */
export const END_RETRY_MS = 60_000;

/** Reconnection advice sent with `stopping`: soon, to resume once the service is back (ms). */
export const STOPPING_RETRY_MS = 2_000;

function endOffset(message: Message): bigint | undefined {
  if (!isMessage(message, CommandEventSchema) || message.event.case !== "end") return undefined;
  return message.event.value.stdoutBytes + message.event.value.stderrBytes;
}

export const commandEventSseAdapter: SseAdapter = {
  eventName(message: Message): string {
    return isMessage(message, CommandEventSchema) ? (message.event.case ?? "message") : "message";
  },
  eventId(message: Message): string | undefined {
    if (!isMessage(message, CommandEventSchema)) return undefined;
    const e = message.event;
    switch (e.case) {
      case "output":
        return String(e.value.offset + BigInt(e.value.data.length));
      case "end":
        return String(endOffset(message));
      default:
        return undefined;
    }
  },
  resume(request: Message, lastEventId: string): void {
    if (!/^\d{1,15}$/.test(lastEventId.trim())) {
      throw new RestInputError("Last-Event-ID", "expected a byte offset (a non-negative decimal integer)");
    }
    if (isMessage(request, WatchCommandRequestSchema)) request.offset = BigInt(lastEventId.trim());
  },
  retryMs(message: Message): number | undefined {
    return endOffset(message) === undefined ? undefined : END_RETRY_MS;
  },
  errorEvent(error) {
    const offset = error.body.error.resume_offset;
    if (offset === undefined) return undefined;
    return { name: "stopping", id: String(offset), retryMs: STOPPING_RETRY_MS };
  },
  endedBefore(first: Message, lastEventId: string): boolean {
    const end = endOffset(first);
    // `resume` already checked the ID's shape.
    return end !== undefined && /^\d{1,15}$/.test(lastEventId.trim()) && BigInt(lastEventId.trim()) >= end;
  },
};

/** Stream adapters keyed by `<service type name>/<method name>`; the default of `RestOptions.streamEvents`. */
export const defaultStreamEvents: Readonly<Record<string, SseAdapter>> = {
  [`${CommandService.typeName}/${CommandService.method.watchCommand.name}`]: commandEventSseAdapter,
};
