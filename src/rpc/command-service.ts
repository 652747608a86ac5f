/**
 * fleetrun.v1.CommandService: protobuf <-> domain mapping only; the work is
 * done by the CommandEngine.
 */
import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  CancelCommandResponseSchema,
  CommandEventSchema,
  CommandService,
  ListMachineCommandsResponseSchema,
  OutputChunkSchema,
  OutputStream,
  PageMetaSchema,
  StartCommandResponseSchema,
  CommandStartedSchema,
  type CommandEvent,
  type ExecuteRequest,
} from "../gen/fleetrun/v1/command_pb.js";
import type { CommandEngine, WatchEvent } from "../exec/command-engine.ts";
import { InvalidArgumentError, NotFoundError } from "../exec/errors.ts";
import type { CommandStore } from "../exec/ports.ts";
import { parseIsoInstant } from "../exec/iso-time.ts";
import type { ExecuteInput } from "../exec/validate.ts";
import { commandVisible, type Caller } from "../exec/caller.ts";
import { allMachines, machineInScope } from "../exec/scope.ts";
import { callerFrom, principalFrom, type Principal } from "./auth.ts";
import { serverStream as stream, unary } from "./wrap.ts";
import { commandToProto, historyItemToProto, statusFromName, statusToProto } from "./mapping.ts";
import type { BatchHandlers } from "./batch-handlers.ts";

export function principalOf(ctx: HandlerContext): Principal {
  return principalFrom(ctx.values);
}

export function callerOf(ctx: HandlerContext): Caller {
  return callerFrom(ctx.values);
}

export function executeInput(req: ExecuteRequest): ExecuteInput {
  if (req.machineId === "") throw new InvalidArgumentError("machine_id", "is required");
  return {
    machineId: req.machineId,
    command: req.command,
    cwd: req.cwd ?? null,
    env: req.env,
    timeoutMs: req.timeout === undefined ? null : toSafeNumber("timeout", req.timeout),
    user: req.user ?? null,
  };
}

export function toSafeNumber(field: string, v: bigint): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new InvalidArgumentError(field, "is out of range");
  }
  return Number(v);
}

export function eventToProto(e: WatchEvent): CommandEvent {
  switch (e.kind) {
    case "output":
      return create(CommandEventSchema, {
        event: {
          case: "output",
          value: create(OutputChunkSchema, {
            stream: e.stream === "stdout" ? OutputStream.STDOUT : OutputStream.STDERR,
            offset: BigInt(e.offset),
            data: e.data,
          }),
        },
      });
    case "skipped":
      return create(CommandEventSchema, { event: { case: "skipped", value: BigInt(e.bytes) } });
    case "end":
      return create(CommandEventSchema, { event: { case: "end", value: commandToProto(e.command) } });
  }
}

export interface CommandServiceDeps {
  engine: CommandEngine;
  commands: CommandStore;
  batches: BatchHandlers;
  onInternal: (e: unknown) => void;
}

export function commandServiceImpl(deps: CommandServiceDeps): ServiceImpl<typeof CommandService> {
  const { engine, onInternal } = deps;

  /**
   * Throws NotFoundError (as for an unknown id) unless the command's machine
   * is in the caller's scope. A scope over every machine costs no read.
   */
  const assertCommandVisible = async (id: string, caller: Caller): Promise<void> => {
    if (id === "") throw new InvalidArgumentError("id", "is required");
    if (allMachines(caller.scope)) return;
    const rec = await deps.commands.get(id);
    if (rec === null || !commandVisible(caller.scope, rec, await engine.findMachine(rec.machineId))) {
      throw new NotFoundError("command", id, "id");
    }
  };

  return {
    execute: unary(async (req: ExecuteRequest, ctx) => {
      const view = await engine.execute(executeInput(req), callerOf(ctx), ctx.signal);
      return commandToProto(view);
    }, onInternal),

    startCommand: unary(async (req: ExecuteRequest, ctx) => {
      const rec = await engine.start(executeInput(req), callerOf(ctx));
      return create(StartCommandResponseSchema, { id: rec.id, status: statusToProto(rec.status) });
    }, onInternal),

    executeAsync: stream(async function* (req: ExecuteRequest, ctx) {
      // The caller follows the output: its follower's place is taken before the
      // command is, so a refusal (429) leaves nothing started.
      const follower = engine.admission.admitFollower();
      try {
        const rec = await engine.start(executeInput(req), callerOf(ctx));
        yield create(CommandEventSchema, {
          event: { case: "started", value: create(CommandStartedSchema, { id: rec.id, status: statusToProto(rec.status) }) },
        });
        // Disconnecting only stops this follower: the command runs on.
        for await (const e of engine.watch(rec.id, 0, ctx.signal, follower)) yield eventToProto(e);
      } finally {
        // Also when the caller left right after `started`, before following began.
        follower.release();
      }
    }, onInternal),

    getCommand: unary(async (req, ctx) => {
      await assertCommandVisible(req.id, callerOf(ctx));
      return commandToProto(await engine.get(req.id));
    }, onInternal),

    watchCommand: stream(async function* (req, ctx) {
      if (req.id === "") throw new InvalidArgumentError("id", "is required");
      if (req.offset < 0n) throw new InvalidArgumentError("offset", "must be a non-negative byte offset");
      await assertCommandVisible(req.id, callerOf(ctx));
      for await (const e of engine.watch(req.id, toSafeNumber("offset", req.offset), ctx.signal)) yield eventToProto(e);
    }, onInternal),

    cancelCommand: unary(async (req, ctx) => {
      const caller = callerOf(ctx);
      await assertCommandVisible(req.id, caller);
      await engine.cancel(req.id, caller.name);
      return create(CancelCommandResponseSchema, { cancelled: true });
    }, onInternal),

    listMachineCommands: unary(async (req, ctx) => {
      const limit = req.limit ?? 20;
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new InvalidArgumentError("limit", "must be an integer from 1 to 1000");
      const offset = req.offset ?? 0;
      if (offset < 0) throw new InvalidArgumentError("offset", "must be a non-negative integer");
      let since: Date | null = null;
      if (req.since !== undefined) {
        since = parseIsoInstant(req.since);
        if (since === null) {
          throw new InvalidArgumentError("since", "must be an ISO 8601 date or date-time like 2026-01-01, 2026-01-01T15:45:00Z or 2026-01-01T17:45:00+02:00 (UTC when no offset is given)");
        }
      }
      let status = null;
      if (req.status !== undefined) {
        status = statusFromName(req.status);
        if (!status) throw new InvalidArgumentError("status", "must be one of queued, running, completed, failed, timed_out, cancelled, skipped, lost");
      }
      if (req.cursor !== undefined && !/^[A-Za-z0-9_-]{1,200}$/.test(req.cursor)) {
        throw new InvalidArgumentError("cursor", "must be a cursor returned in meta.next_cursor");
      }
      const scope = callerOf(ctx).scope;
      if (!allMachines(scope)) {
        // A machine out of scope is not found, whether or not it still exists.
        const m = await engine.findMachine(req.machineId);
        if (!machineInScope(scope, { id: req.machineId, labels: m?.labels ?? null })) throw new NotFoundError("machine", req.machineId, "machine_id");
      }
      const page = await deps.commands.history({
        machineId: req.machineId,
        since,
        limit,
        offset,
        cursor: req.cursor ?? null,
        status,
        exitCode: req.exitCode ?? null,
        requestedBy: req.requestedBy ?? null,
      });
      if (page.total === 0 && page.items.length === 0) {
        // An unknown machine is an error; a deleted one keeps its history.
        await engine.resolveMachine(req.machineId, "machine_id").catch((e: unknown) => {
          if (e instanceof NotFoundError) throw e;
        });
      }
      return create(ListMachineCommandsResponseSchema, {
        data: page.items.map(historyItemToProto),
        meta: create(PageMetaSchema, {
          total: BigInt(page.total),
          limit,
          offset: req.cursor !== undefined ? 0 : offset,
          ...(page.nextCursor ? { nextCursor: page.nextCursor } : {}),
        }),
      });
    }, onInternal),

    batch: unary((req, ctx) => deps.batches.batch(req, callerOf(ctx), ctx.signal), onInternal),
    batchStream: stream((req, ctx) => deps.batches.batchStream(req, callerOf(ctx), ctx.signal), onInternal),
    startBatch: unary((req, ctx) => deps.batches.startBatch(req, callerOf(ctx)), onInternal),
    getBatch: unary((req, ctx) => deps.batches.getBatch(req.id, callerOf(ctx)), onInternal),
    cancelBatch: unary((req, ctx) => deps.batches.cancelBatch(req.id, callerOf(ctx)), onInternal),
  };
}
