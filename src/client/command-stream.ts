/**
 * A command's events as an async iterable that survives dropped connections:
 * it remembers the byte offset after the last output it yielded and, when the
 * call fails with a transient error (or ends before the command's `end`),
 * follows the same command again with `WatchCommand` from that offset. The
 * caller sees every byte once, in order, then `end`.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import type { CommandEvent, CommandService, ExecuteRequestSchema } from "../gen/fleetrun/v1/command_pb.js";

/** Reconnect policy of a {@link CommandStream}. */
export interface ResumeOptions {
  /**
   * Reconnect attempts in a row without receiving an event before giving up
   * (the last error is thrown). 0 disables resuming.
   * @default 8
   */
  maxAttempts?: number;
  /** First backoff delay, doubled per failed attempt. @default 200 */
  initialDelayMs?: number;
  /** Largest backoff delay. @default 5000 */
  maxDelayMs?: number;
}

/** Per-stream options of `executeAsync()` and `watch()`. */
export interface FollowOptions {
  /** Aborting it stops the stream (the command itself keeps running; cancel it with `commands.cancelCommand`). */
  signal?: AbortSignal;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** Reconnect policy; defaults come from the client. */
  resume?: ResumeOptions;
  /** Called before each reconnect, with the error that ended the previous attempt. */
  onReconnect?: (info: { attempt: number; commandId: string; offset: bigint; error: unknown }) => void;
}

/** Codes worth a reconnect: the connection or the server went away, not the request. */
const TRANSIENT = new Set<Code>([Code.Unavailable, Code.Unknown, Code.Internal, Code.Aborted, Code.Canceled, Code.ResourceExhausted]);

type Commands = Client<typeof CommandService>;

export type CommandStreamStart =
  | { kind: "execute"; request: MessageInitShape<typeof ExecuteRequestSchema> }
  | { kind: "watch"; commandId: string; offset: bigint };

/**
 * The events of one command (`started` first for `executeAsync`, output
 * chunks, `skipped` gaps of a truncated log, `end` last). Iterate it once.
 */
export class CommandStream implements AsyncIterable<CommandEvent> {
  private id: string | undefined;
  private position: bigint;
  private reconnectCount = 0;
  private used = false;
  private readonly commands: Commands;
  private readonly start: CommandStreamStart;
  private readonly opts: FollowOptions;
  private readonly resume: Required<ResumeOptions>;

  constructor(commands: Commands, start: CommandStreamStart, opts: FollowOptions, defaults: Required<ResumeOptions>) {
    this.commands = commands;
    this.start = start;
    this.opts = opts;
    this.resume = { ...defaults, ...definedOnly(opts.resume ?? {}) };
    this.id = start.kind === "watch" ? start.commandId : undefined;
    this.position = start.kind === "watch" ? start.offset : 0n;
  }

  /** The command's id: known from the start for `watch`, after `started` for `executeAsync`. */
  get commandId(): string | undefined {
    return this.id;
  }

  /** Byte offset in the combined output log after the last event yielded: where a resume starts. */
  get offset(): bigint {
    return this.position;
  }

  /** How many times the stream was re-established after a failure. */
  get reconnects(): number {
    return this.reconnectCount;
  }

  [Symbol.asyncIterator](): AsyncIterator<CommandEvent> {
    if (this.used) throw new Error("a CommandStream can be iterated only once");
    this.used = true;
    return this.run();
  }

  private call(): AsyncIterable<CommandEvent> {
    // Streams run as long as the command: no default deadline.
    const callOptions = { timeoutMs: 0, ...(this.opts.signal ? { signal: this.opts.signal } : {}), ...(this.opts.headers ? { headers: this.opts.headers } : {}) };
    if (this.id === undefined && this.start.kind === "execute") return this.commands.executeAsync(this.start.request, callOptions);
    return this.commands.watchCommand({ id: this.id ?? "", offset: this.position }, callOptions);
  }

  private async *run(): AsyncGenerator<CommandEvent> {
    let attempt = 0;
    for (;;) {
      let failure: unknown;
      try {
        for await (const event of this.call()) {
          attempt = 0;
          const e = event.event;
          switch (e.case) {
            case "started":
              this.id = e.value.id;
              break;
            case "output": {
              const end = e.value.offset + BigInt(e.value.data.length);
              if (end <= this.position) continue; // already yielded
              if (e.value.offset < this.position) {
                // Overlaps what was yielded: keep only the new bytes.
                e.value.data = e.value.data.subarray(Number(this.position - e.value.offset));
                e.value.offset = this.position;
              }
              this.position = end;
              break;
            }
            case "skipped":
              this.position += e.value;
              break;
            case "end":
              yield event;
              return;
          }
          yield event;
        }
        failure = new ConnectError("the stream ended before the command's end event", Code.Unavailable);
      } catch (err) {
        if (this.opts.signal?.aborted === true) throw err;
        const code = ConnectError.from(err).code;
        if (!TRANSIENT.has(code)) throw err;
        failure = err;
      }
      // Before `started` nothing says whether the command was created: never start it twice.
      if (this.id === undefined) throw failure;
      attempt++;
      if (attempt > this.resume.maxAttempts) throw failure;
      const delay = Math.min(this.resume.maxDelayMs, this.resume.initialDelayMs * 2 ** (attempt - 1));
      await sleep(delay, this.opts.signal);
      this.reconnectCount++;
      this.opts.onReconnect?.({ attempt, commandId: this.id, offset: this.position, error: failure });
    }
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(ConnectError.from(signal.reason ?? new Error("aborted"), Code.Canceled));
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(ConnectError.from(signal?.reason ?? new Error("aborted"), Code.Canceled));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
