/**
 * `fleetrun batch`: one command on many machines through `BatchStream`, each
 * machine's result as it ends. On a terminal a live progress line
 * (cli-progress) on stderr, then a per-machine table; `-o json` one document,
 * `-o ndjson` one line per machine as it ends and the summary last. Ctrl-C
 * hangs up, which cancels what runs and skips the rest.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import cliProgress from "cli-progress";
import { BatchMetaSchema, CommandStatus } from "../../gen/fleetrun/v1/command_pb.js";
import type { BatchMeta, BatchRequestSchema, Command } from "../../gen/fleetrun/v1/command_pb.js";
import type { Machine } from "../../gen/fleetrun/v1/machine_pb.js";
import { encodeMessage } from "../../rest/json-codec.ts";
import { CliError, UsageError } from "../errors.ts";
import { EXIT } from "../exit-codes.ts";
import { oneLine, printJson, renderTable } from "../output.ts";
import type { Out } from "../output.ts";
import { formatDuration, joinCommand, parseCountOrPercent, parseDuration, parseEnvPairs, parseSelector, resolveCount } from "../parse.ts";
import { listAllMachines, openSession, resolveMachines } from "../session.ts";
import type { GlobalOptions } from "../session.ts";
import { commandJson, paintStatus } from "../views.ts";

interface BatchOptions {
  machines: string[];
  selector?: string;
  maxConcurrency?: string;
  maxErrors?: string;
  cwd?: string;
  env: string[];
  user?: string;
  timeout?: string;
  progress: boolean;
}

/** The service's default `max_concurrency` (FLEETRUN_BATCH_CONCURRENCY), for the progress line's estimate. */
const SERVICE_DEFAULT_CONCURRENCY = 50;

type BatchValue = MessageInitShape<typeof BatchRequestSchema>["maxConcurrency"];

function countValue(v: number | string): BatchValue {
  return { kind: typeof v === "number" ? { case: "numberValue", value: v } : { case: "stringValue", value: v } };
}

export async function batchAction(args: string[], raw: Record<string, unknown>, globals: GlobalOptions): Promise<number> {
  const opts = raw as unknown as BatchOptions;
  const refs = opts.machines.flatMap((m) => m.split(",")).map((m) => m.trim()).filter((m) => m !== "");
  if ((refs.length > 0) === (opts.selector !== undefined)) throw new UsageError("give either --machines a,b or --selector KEY=VALUE");
  const labels = opts.selector !== undefined ? parseSelector([opts.selector]) : undefined;
  const maxConcurrency = opts.maxConcurrency !== undefined ? parseCountOrPercent(opts.maxConcurrency, "--max-concurrency", false) : undefined;
  const maxErrors = opts.maxErrors !== undefined ? parseCountOrPercent(opts.maxErrors, "--max-errors", true) : undefined;
  const request: MessageInitShape<typeof BatchRequestSchema> = {
    command: joinCommand(args),
    env: parseEnvPairs(opts.env),
    ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    ...(opts.user !== undefined ? { user: opts.user } : {}),
    ...(opts.timeout !== undefined ? { timeout: BigInt(parseDuration(opts.timeout, "--timeout")) } : {}),
    ...(maxConcurrency !== undefined ? { maxConcurrency: countValue(maxConcurrency) } : {}),
    ...(maxErrors !== undefined ? { maxErrors: countValue(maxErrors) } : {}),
  };
  const s = openSession(globals);
  try {
    let machines: Machine[];
    if (labels !== undefined) {
      const selector = Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(",");
      machines = await listAllMachines(s.fleet, selector);
      if (machines.length === 0) throw new CliError(`not_found: no machine carries the labels ${selector} (fleetrun machines list)`, EXIT.refused);
      request.selector = { labels };
    } else {
      machines = await resolveMachines(s.fleet, refs);
      request.machineIds = [...new Set(machines.map((m) => m.id))];
    }
    const names = new Map(machines.map((m) => [m.id, m.name]));
    const total = new Set(machines.map((m) => m.id)).size;
    const concurrency = resolveCount(maxConcurrency, total, SERVICE_DEFAULT_CONCURRENCY);
    const progress = opts.progress && s.out.errTty ? startProgress(s.out, total, concurrency) : undefined;

    const controller = new AbortController();
    let interrupted = false;
    const onInterrupt = (): void => {
      interrupted = true;
      controller.abort();
    };
    process.on("SIGINT", onInterrupt);
    const results: Command[] = [];
    let meta: BatchMeta | undefined;
    const t0 = Date.now();
    try {
      for await (const event of s.fleet.commands.batchStream(request, { signal: controller.signal, timeoutMs: 0 })) {
        const e = event.event;
        if (e.case === "result") {
          results.push(e.value);
          if (s.out.mode === "ndjson") s.out.write(`${JSON.stringify(resultJson(e.value, names))}\n`);
          const failed = results.filter((r) => !succeeded(r)).length;
          progress?.update(results.length, { running: Math.max(0, Math.min(concurrency, total - results.length)), failed });
        } else if (e.case === "summary") {
          meta = e.value;
        }
      }
    } catch (err) {
      if (!interrupted) throw err;
    } finally {
      process.off("SIGINT", onInterrupt);
      progress?.stop();
    }
    if (meta === undefined) {
      s.out.note(`fleetrun: batch interrupted after ${results.length} of ${total} machines: the service cancels what runs and skips the rest`);
      return EXIT.cancelled;
    }
    const elapsed = Date.now() - t0;
    const metaJson = encodeMessage(BatchMetaSchema, meta);
    if (s.out.mode === "ndjson") s.out.write(`${JSON.stringify({ summary: { ...metaJson, total, elapsed } })}\n`);
    else if (s.out.mode === "json") printJson(s.out, { batch_id: meta.batchId, meta: { ...metaJson, total, elapsed }, results: sortResults(results, names).map((r) => resultJson(r, names)) });
    else s.out.write(renderSummary(s.out, sortResults(results, names), names, meta, total, elapsed));
    return results.every(succeeded) && results.length === total ? EXIT.ok : EXIT.someFailed;
  } finally {
    s.fleet.close();
  }
}

function succeeded(c: Command): boolean {
  return c.status === CommandStatus.COMPLETED && c.exitCode === 0;
}

function resultJson(c: Command, names: Map<string, string>): unknown {
  return { machine_name: names.get(c.machineId) ?? null, ...commandJson(c) };
}

/** Failures first, then by machine name. */
function sortResults(results: Command[], names: Map<string, string>): Command[] {
  return [...results].sort((a, b) => Number(succeeded(a)) - Number(succeeded(b)) || (names.get(a.machineId) ?? a.machineId).localeCompare(names.get(b.machineId) ?? b.machineId));
}

/** The last non-empty line of the output, or the error: what a person looks at first. */
function lastWords(c: Command): string {
  if (c.error) return `${c.error.code}: ${c.error.message}`;
  for (const data of [c.stdout, c.stderr]) {
    const lines = Buffer.from(data).toString("utf8").split("\n").filter((l) => l.trim() !== "");
    if (lines.length > 0) return lines.at(-1)!;
  }
  return "";
}

function renderSummary(out: Out, results: Command[], names: Map<string, string>, meta: BatchMeta, total: number, elapsed: number): string {
  const rows = results.map((c) => [
    names.get(c.machineId) ?? c.machineId,
    paintStatus(out, c.status, c.exitCode),
    c.exitCode === undefined ? "-" : String(c.exitCode),
    c.duration === undefined ? "-" : formatDuration(Number(c.duration)),
    c.id,
    oneLine(lastWords(c), 60),
  ]);
  const counts = [
    out.paint("green", `${meta.succeeded} succeeded`),
    meta.failed > 0 ? out.paint("red", `${meta.failed} failed`) : "0 failed",
    ...(meta.timedOut > 0 ? [out.paint("red", `${meta.timedOut} timed out`)] : []),
    ...(meta.cancelled > 0 ? [`${meta.cancelled} cancelled`] : []),
    ...(meta.lost > 0 ? [out.paint("red", `${meta.lost} lost`)] : []),
    ...(meta.skipped > 0 ? [out.paint("yellow", `${meta.skipped} skipped`)] : []),
  ];
  return `${renderTable(out, ["MACHINE", "STATUS", "EXIT", "DURATION", "COMMAND ID", "OUTPUT"], rows)}\n${total} machine${total === 1 ? "" : "s"}: ${counts.join(", ")} in ${formatDuration(elapsed)} (batch ${meta.batchId})\n`;
}

/** The live line on stderr: `[=====-----] 12/40 done | 8 running | 1 failed | 4.2s elapsed | ETA 9.8s`. */
function startProgress(out: Out, total: number, concurrency: number): cliProgress.SingleBar {
  const bar = new cliProgress.SingleBar({
    stream: process.stderr,
    format: `{bar} {value}/{total} done | {running} running | ${out.paintErr("red", "{failed} failed")} | {duration_formatted} elapsed | ETA {eta_formatted}`,
    barsize: 20,
    hideCursor: true,
    clearOnComplete: false,
    fps: 5,
    etaBuffer: 20,
    etaAsynchronousUpdate: true,
    formatTime: (t: number) => (typeof t === "number" && Number.isFinite(t) ? formatDuration(t * 1000) : "-"),
  }, cliProgress.Presets.shades_classic);
  bar.start(total, 0, { running: Math.min(total, concurrency), failed: 0 });
  return bar;
}
