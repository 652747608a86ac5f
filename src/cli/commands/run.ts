/**
 * `fleetrun run` (alias `exec`), `follow` and `logs`: a command's output
 * streamed byte for byte to stdout and stderr, and its outcome as the exit
 * code. Ctrl-C during `run` cancels the remote command; a second Ctrl-C stops
 * waiting and says how to follow it. `follow` and `logs -f` only stop
 * following on Ctrl-C.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { CommandStream } from "../../client/index.ts";
import { CommandEventSchema, CommandStatus, OutputStream } from "../../gen/fleetrun/v1/command_pb.js";
import type { Command, CommandEvent, ExecuteRequestSchema } from "../../gen/fleetrun/v1/command_pb.js";
import { encodeMessage } from "../../rest/json-codec.ts";
import { UsageError } from "../errors.ts";
import { EXIT, exitCodeOf } from "../exit-codes.ts";
import { printJson } from "../output.ts";
import { joinCommand, parseDuration, parseEnvPairs } from "../parse.ts";
import { machineIdOf, openSession } from "../session.ts";
import type { GlobalOptions, Session } from "../session.ts";
import { commandJson, endReason, statusName } from "../views.ts";

interface RunOptions {
  cwd?: string;
  env: string[];
  user?: string;
  timeout?: string;
  detach?: boolean;
}

export async function runAction(args: string[], raw: Record<string, unknown>, globals: GlobalOptions): Promise<number> {
  const opts = raw as unknown as RunOptions;
  const [machineRef, ...words] = args;
  const request: MessageInitShape<typeof ExecuteRequestSchema> = {
    command: joinCommand(words),
    env: parseEnvPairs(opts.env),
    ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    ...(opts.user !== undefined ? { user: opts.user } : {}),
    ...(opts.timeout !== undefined ? { timeout: BigInt(parseDuration(opts.timeout, "--timeout")) } : {}),
  };
  const s = openSession(globals);
  try {
    request.machineId = await machineIdOf(s.fleet, machineRef!);
    if (opts.detach === true) {
      const started = await s.fleet.commands.startCommand(request);
      if (s.out.mode === "table") s.out.write(`${started.id}\n`);
      else printJson(s.out, { id: started.id, status: statusName(started.status) });
      return EXIT.ok;
    }
    const controller = new AbortController();
    const stream = s.fleet.executeAsync(request, { signal: controller.signal });
    return await pump(s, stream, controller, { cancelOnInterrupt: true });
  } finally {
    s.fleet.close();
  }
}

export async function followAction(args: string[], raw: Record<string, unknown>, globals: GlobalOptions): Promise<number> {
  const from = parseOffset(String(raw.from ?? "0"));
  const s = openSession(globals);
  try {
    const controller = new AbortController();
    const stream = s.fleet.watch(args[0]!, { offset: from, signal: controller.signal });
    return await pump(s, stream, controller, { cancelOnInterrupt: false });
  } finally {
    s.fleet.close();
  }
}

export async function logsAction(args: string[], raw: Record<string, unknown>, globals: GlobalOptions): Promise<number> {
  if (raw.follow === true) return followAction(args, raw, globals);
  const s = openSession(globals);
  try {
    const cmd = await s.fleet.commands.getCommand({ id: args[0]! });
    if (s.out.mode !== "table") {
      printJson(s.out, commandJson(cmd));
      return EXIT.ok;
    }
    await write(process.stdout, cmd.stdout);
    await write(process.stderr, cmd.stderr);
    return EXIT.ok;
  } finally {
    s.fleet.close();
  }
}

function parseOffset(text: string): bigint {
  if (!/^\d+$/.test(text)) throw new UsageError(`--from: expected a byte offset (0 or more), got ${JSON.stringify(text)}`);
  return BigInt(text);
}

/** Writes raw bytes, waiting for the stream to drain when its buffer is full. */
function write(stream: NodeJS.WriteStream, data: Uint8Array): Promise<void> {
  if (data.length === 0) return Promise.resolve();
  return new Promise((resolve) => {
    if (stream.write(data)) resolve();
    else stream.once("drain", resolve);
  });
}

/**
 * Copies a command stream's output to stdout/stderr (or, with `-o ndjson`,
 * each event as a line) until `end`, and returns the exit code.
 */
async function pump(s: Session, stream: CommandStream, controller: AbortController, o: { cancelOnInterrupt: boolean }): Promise<number> {
  let interrupts = 0;
  let cancelRequested = false;
  let end: Command | undefined;
  const cancel = (id: string): void => {
    if (cancelRequested) return;
    cancelRequested = true;
    s.out.note(`fleetrun: cancelling ${id} (Ctrl-C again to stop waiting)`);
    s.fleet.commands.cancelCommand({ id }).catch((e: unknown) => {
      // Ended meanwhile: the end event tells how.
      if (ConnectError.from(e).code !== Code.FailedPrecondition) s.out.note(`fleetrun: cancel ${id}: ${ConnectError.from(e).rawMessage}`);
    });
  };
  const onInterrupt = (): void => {
    interrupts++;
    const id = stream.commandId;
    if (o.cancelOnInterrupt && interrupts === 1) {
      if (id !== undefined) cancel(id);
      else s.out.note("fleetrun: cancelling (Ctrl-C again to stop waiting)");
      return;
    }
    controller.abort();
  };
  process.on("SIGINT", onInterrupt);
  try {
    for await (const event of stream) {
      if (o.cancelOnInterrupt && interrupts > 0 && event.event.case === "started") cancel(event.event.value.id);
      if (s.out.mode === "ndjson") s.out.write(`${JSON.stringify(eventJson(event))}\n`);
      const e = event.event;
      if (e.case === "output" && s.out.mode === "table") {
        await write(e.value.stream === OutputStream.STDERR ? process.stderr : process.stdout, e.value.data);
      } else if (e.case === "skipped" && s.out.mode === "table") {
        s.out.note(`fleetrun: … [${e.value.toLocaleString("en-US")} bytes omitted: the service keeps the head and the tail of large output] …`);
      } else if (e.case === "end") {
        end = e.value;
      }
    }
  } catch (err) {
    if (!controller.signal.aborted) throw err;
  } finally {
    process.off("SIGINT", onInterrupt);
  }
  if (end === undefined) {
    const id = stream.commandId;
    if (id === undefined) {
      s.out.note("fleetrun: stopped before the service said whether the command started; fleetrun history MACHINE shows it if it did");
      return EXIT.cancelled;
    }
    const state = cancelRequested ? "is being cancelled and may still run" : "keeps running";
    s.out.note(`fleetrun: stopped waiting; ${id} ${state}. Follow it: fleetrun follow ${id} --from ${stream.offset}`);
    return EXIT.cancelled;
  }
  if (s.out.mode === "json") printJson(s.out, commandJson(end));
  const code = exitCodeOf(end);
  if (end.status !== CommandStatus.COMPLETED) s.out.note(`fleetrun: ${end.id} ${endReason(end)}`);
  return code;
}

/** An event as the REST stream spells it (`{"output":{"stream":"stdout","offset":0,"data":"…"}}`). */
function eventJson(event: CommandEvent): unknown {
  return encodeMessage(CommandEventSchema, event);
}
