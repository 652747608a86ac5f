/** Batch RPCs: protobuf <-> domain mapping for the BatchRunner. */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate, type Value } from "@bufbuild/protobuf/wkt";
import {
  BatchEventSchema,
  BatchMetaSchema,
  BatchProgressSchema,
  BatchResponseSchema,
  CancelBatchResponseSchema,
  StartBatchResponseSchema,
  type BatchEvent,
  type BatchProgress,
  type BatchRequest,
  type BatchResponse,
  type CancelBatchResponse,
  type Command,
  type StartBatchResponse,
} from "../gen/fleetrun/v1/command_pb.js";
import { summarize, type BatchInput, type BatchRunner, type BatchSummary } from "../exec/batch-runner.ts";
import type { CommandRecord } from "../exec/ports.ts";
import type { CommandEngine, CommandView } from "../exec/command-engine.ts";
import { InvalidArgumentError } from "../exec/errors.ts";
import type { Caller } from "../exec/caller.ts";
import { toSafeNumber } from "./command-service.ts";
import { commandToProto } from "./mapping.ts";

function valueToJs(v: Value | undefined): unknown {
  if (!v) return null;
  switch (v.kind.case) {
    case "numberValue":
    case "stringValue":
      return v.kind.value;
    case "nullValue":
    case undefined:
      return null;
    default:
      return v.kind.value as unknown;
  }
}

export function batchInput(req: BatchRequest): BatchInput {
  const selector = req.selector ? req.selector.labels : null;
  return {
    machineIds: req.machineIds,
    selector: selector && Object.keys(selector).length > 0 ? selector : null,
    command: req.command,
    cwd: req.cwd ?? null,
    env: req.env,
    timeoutMs: req.timeout === undefined ? null : toSafeNumber("timeout", req.timeout),
    user: req.user ?? null,
    maxConcurrency: valueToJs(req.maxConcurrency),
    maxErrors: valueToJs(req.maxErrors),
  };
}

/**
 * Bytes a unary batch response aims to stay under: grpc-js and most gRPC
 * clients refuse messages over 4 MiB by default, so a big batch must not
 * produce one just by printing (200 machines × 30 KiB is already 6 MiB).
 */
export const BATCH_RESPONSE_BUDGET = 3.5 * 1024 * 1024;
/** Room each machine's entry needs besides its command text and output (ids, timestamps, counters, error). */
const ENTRY_OVERHEAD = 512;

/**
 * The output bytes (stdout and stderr together) each machine may show in a
 * unary batch response of `machines` entries running `command`: the
 * configured per-stream cap, lowered so the whole response fits
 * BATCH_RESPONSE_BUDGET.
 */
export function perMachineOutputBudget(machines: number, command: string, outputCap: number): number {
  const fixed = machines * (ENTRY_OVERHEAD + Buffer.byteLength(command));
  const share = Math.floor(Math.max(0, BATCH_RESPONSE_BUDGET - fixed) / Math.max(1, machines));
  return Math.min(2 * outputCap, share);
}

/** The last `n` bytes of `b`, and whether anything was cut. */
function tail(b: Buffer, n: number): [Buffer, boolean] {
  return b.length > n ? [b.subarray(b.length - n), true] : [b, false];
}

/**
 * A command for a unary batch response: each stream capped at `outputCap`
 * (the last bytes kept), both together at `budget`; a stream shorter than
 * half the budget leaves the rest to the other. Cut streams are flagged
 * truncated; the full output stays at GetCommand.
 */
export function cappedForBatch(view: CommandView, outputCap: number, budget: number): Command {
  const outLen = Math.min(view.stdout.length, outputCap);
  const errLen = Math.min(view.stderr.length, outputCap);
  let outCap = outLen;
  let errCap = errLen;
  if (outLen + errLen > budget) {
    const half = Math.floor(budget / 2);
    if (errLen <= half) outCap = budget - errLen;
    else if (outLen <= half) errCap = budget - outLen;
    else {
      outCap = half;
      errCap = budget - half;
    }
  }
  const [stdout, outCut] = tail(view.stdout, outCap);
  const [stderr, errCut] = tail(view.stderr, errCap);
  return commandToProto({
    ...view,
    stdout,
    stderr,
    stdoutTruncated: view.stdoutTruncated || outCut,
    stderrTruncated: view.stderrTruncated || errCut,
  });
}

function meta(s: BatchSummary) {
  return create(BatchMetaSchema, {
    batchId: s.batchId,
    succeeded: s.succeeded,
    failed: s.failed,
    skipped: s.skipped,
    timedOut: s.timedOut,
    cancelled: s.cancelled,
    lost: s.lost,
    errors: s.errors,
  });
}

export interface BatchHandlers {
  batch(req: BatchRequest, caller: Caller, signal: AbortSignal): Promise<BatchResponse>;
  batchStream(req: BatchRequest, caller: Caller, signal: AbortSignal): AsyncIterable<BatchEvent>;
  startBatch(req: BatchRequest, caller: Caller): Promise<StartBatchResponse>;
  getBatch(id: string, caller: Caller): Promise<BatchProgress>;
  cancelBatch(id: string, caller: Caller): Promise<CancelBatchResponse>;
}

export function batchHandlers(runner: BatchRunner, engine: CommandEngine, outputCap: number): BatchHandlers {
  return {
    async batch(req, p, signal) {
      const prepared = await runner.prepare(batchInput(req), p, true);
      // The terminal records arrive with the results: only their output is read back.
      const ended = new Map<string, CommandRecord>();
      const summary = await runner.run(prepared, (c) => ended.set(c.id, c), signal);
      const data: Record<string, Command> = {};
      const budget = perMachineOutputBudget(prepared.records.length, prepared.batch.command, outputCap);
      for (const rec of prepared.records) {
        const done = ended.get(rec.id);
        const view = done ? await engine.view(done) : await engine.get(rec.id);
        data[rec.machineId] = cappedForBatch(view, outputCap, budget);
      }
      return create(BatchResponseSchema, { data, meta: meta(summary) });
    },

    async *batchStream(req, p, signal) {
      const prepared = await runner.prepare(batchInput(req), p, true);
      const queue: string[] = [];
      let wake: (() => void) | null = null;
      let done = false;
      const running = runner
        .run(
          prepared,
          (c) => {
            queue.push(c.id);
            wake?.();
          },
          signal,
        )
        .finally(() => {
          done = true;
          wake?.();
        });
      while (!done || queue.length > 0) {
        const id = queue.shift();
        if (id) {
          const view = await engine.get(id);
          yield create(BatchEventSchema, { event: { case: "result", value: commandToProto(view, outputCap) } });
          continue;
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
          if (done || queue.length > 0) resolve();
        });
        wake = null;
      }
      const summary = await running;
      yield create(BatchEventSchema, { event: { case: "summary", value: meta(summary) } });
    },

    async startBatch(req, p) {
      const prepared = await runner.prepare(batchInput(req), p, false);
      runner.run(prepared).catch(() => {});
      return create(StartBatchResponseSchema, { id: prepared.batch.id, status: "running" });
    },

    async getBatch(id, caller) {
      if (id === "") throw new InvalidArgumentError("id", "is required");
      const { batch, commands } = await runner.get(id, caller.scope);
      const s = summarize(batch.id, commands);
      const machines: Record<string, Command> = {};
      for (const c of commands) machines[c.machineId] = commandToProto(c);
      return create(BatchProgressSchema, {
        id: batch.id,
        status: batch.status,
        command: batch.command,
        total: commands.length,
        succeeded: s.succeeded,
        failed: s.failed,
        skipped: s.skipped,
        timedOut: s.timedOut,
        cancelled: s.cancelled,
        lost: s.lost,
        errors: s.errors,
        running: commands.filter((c) => c.status === "running").length,
        pending: commands.filter((c) => c.status === "queued").length,
        createdAt: timestampFromDate(batch.createdAt),
        ...(batch.finishedAt ? { finishedAt: timestampFromDate(batch.finishedAt) } : {}),
        requestedBy: batch.requestedBy,
        machines,
      });
    },

    async cancelBatch(id, caller) {
      if (id === "") throw new InvalidArgumentError("id", "is required");
      await runner.cancel(id, caller);
      return create(CancelBatchResponseSchema, { cancelled: true });
    },
  };
}
