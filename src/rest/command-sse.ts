/**
 * Server-Sent Events naming for `CommandEvent` streams (`WatchCommand`).
 *
 * Event names are the set member of the event oneof: `started`, `output`,
 * `skipped`, `end`. The event id is the byte offset in the combined output log
 * to resume from: after an `output` chunk, its offset plus its length; after
 * `end`, the total output size (so a reconnect after the end gets only `end`).
 * `Last-Event-ID` sets the request's `offset`.
 */
import { isMessage } from "@bufbuild/protobuf";
import type { Message } from "@bufbuild/protobuf";
import { CommandEventSchema, CommandService, WatchCommandRequestSchema } from "../gen/fleetrun/v1/command_pb.js";
import { RestInputError } from "./json-codec.ts";
import type { SseAdapter } from "./stream-response.ts";

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
        return String(e.value.stdoutBytes + e.value.stderrBytes);
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
};

/** Stream adapters keyed by `<service type name>/<method name>`; the default of `RestOptions.streamEvents`. */
export const defaultStreamEvents: Readonly<Record<string, SseAdapter>> = {
  [`${CommandService.typeName}/${CommandService.method.watchCommand.name}`]: commandEventSseAdapter,
};
