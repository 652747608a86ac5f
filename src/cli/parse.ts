/**
 * Parsers of the CLI's argument values: human durations, `K=V` env pairs,
 * label selectors and changes, counts or percentages, `--since`. Each throws a
 * {@link UsageError} naming the flag and the expected form.
 */
import { UsageError } from "./errors.ts";

const UNIT_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * `30s`, `1.5h`, `1h30m`, `250ms`, `2d`; a bare number is seconds (like
 * `timeout(1)` and `sleep`). Returns milliseconds (> 0, whole).
 */
export function parseDuration(text: string, flag = "duration"): number {
  const s = text.trim().toLowerCase();
  const fail = (): never => {
    throw new UsageError(`${flag}: expected a duration like 30s, 5m, 1h30m, 250ms or 2d, got ${JSON.stringify(text)}`);
  };
  if (s === "") fail();
  if (/^\d+(\.\d+)?$/.test(s)) return positive(Math.round(Number(s) * 1000), flag, text);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let at = 0;
  for (let m = re.exec(s); m !== null; m = re.exec(s)) {
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
    at = re.lastIndex;
  }
  if (at !== s.length) fail();
  return positive(Math.round(total), flag, text);
}

function positive(ms: number, flag: string, text: string): number {
  if (!Number.isSafeInteger(ms) || ms <= 0) throw new UsageError(`${flag}: must be more than 0, got ${JSON.stringify(text)}`);
  return ms;
}

/** `1h2m3s`, `4.2s`, `350ms`: short and readable, for tables and progress. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return "-";
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`;
  const total = Math.round(ms / 1000);
  const d = Math.floor(total / 86_400);
  const h = Math.floor((total % 86_400) / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  if (d > 0) return `${d}d${h}h`;
  if (h > 0) return `${h}h${m}m`;
  return `${m}m${sec}s`;
}

/** Repeated `--env K=V` (the value may contain `=` and be empty). */
export function parseEnvPairs(pairs: readonly string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new UsageError(`--env: expected NAME=VALUE, got ${JSON.stringify(pair.length > 40 ? pair.slice(0, 40) + "…" : pair)}`);
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return env;
}

/** `env=prod,role=web` (also repeated flags): labels a machine must all carry. */
export function parseSelector(texts: readonly string[], flag = "--selector"): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const text of texts) {
    for (const part of text.split(",")) {
      const p = part.trim();
      if (p === "") continue;
      const eq = p.indexOf("=");
      if (eq <= 0) throw new UsageError(`${flag}: expected KEY=VALUE[,KEY=VALUE…], got ${JSON.stringify(text)}`);
      labels[p.slice(0, eq).trim()] = p.slice(eq + 1).trim();
    }
  }
  if (Object.keys(labels).length === 0) throw new UsageError(`${flag}: give at least one KEY=VALUE`);
  return labels;
}

/** `key=value` sets a label, `key-` removes it (as `kubectl label` does). */
export function parseLabelChanges(args: readonly string[]): { set: Record<string, string>; remove: string[] } {
  const set: Record<string, string> = {};
  const remove: string[] = [];
  for (const a of args) {
    const eq = a.indexOf("=");
    if (eq > 0) set[a.slice(0, eq)] = a.slice(eq + 1);
    else if (a.endsWith("-") && a.length > 1) remove.push(a.slice(0, -1));
    else throw new UsageError(`labels: expected KEY=VALUE to set or KEY- to remove, got ${JSON.stringify(a)}`);
  }
  if (Object.keys(set).length === 0 && remove.length === 0) throw new UsageError("labels: give KEY=VALUE to set or KEY- to remove");
  return { set, remove };
}

/** A count (`25`) or a percentage of the machines (`25%`), as the API takes it. */
export function parseCountOrPercent(text: string, flag: string, allowZero: boolean): number | string {
  const s = text.trim();
  const pct = /^(\d+(?:\.\d+)?)%$/.exec(s);
  if (pct) {
    const n = Number(pct[1]);
    if (n <= 0 || n > 100) throw new UsageError(`${flag}: a percentage must be more than 0% and at most 100%, got ${s}`);
    return s;
  }
  if (/^\d+$/.test(s)) {
    const n = Number(s);
    if (!allowZero && n === 0) throw new UsageError(`${flag}: must be at least 1, got 0`);
    return n;
  }
  throw new UsageError(`${flag}: expected a count (25) or a percentage (25%), got ${JSON.stringify(text)}`);
}

/** Resolves a count or percentage against `total` as the service does (at least 1). */
export function resolveCount(value: number | string | undefined, total: number, fallback: number): number {
  if (value === undefined) return Math.min(fallback, Math.max(total, 1));
  if (typeof value === "number") return value;
  return Math.max(1, Math.ceil((Number(value.slice(0, -1)) / 100) * total));
}

/** A positive integer flag value (`--limit 50`). */
export function parseIntFlag(text: string, flag: string, min: number, max: number): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${flag}: expected a whole number, got ${JSON.stringify(text)}`);
  const n = Number(text);
  if (n < min || n > max) throw new UsageError(`${flag}: must be from ${min} to ${max}, got ${n}`);
  return n;
}

/**
 * `--since`: a duration back from now (`1h`, `2d`) or an ISO 8601 date or
 * date-time (passed to the service as written). Returns what the API takes.
 */
export function parseSince(text: string, now = Date.now()): string {
  const s = text.trim();
  if (/^\d{4}-\d{2}-\d{2}/.test(s)) return s;
  const ms = parseDuration(s, "--since");
  return new Date(now - ms).toISOString();
}

/** `run MACHINE -- CMD…`: words joined with spaces, as ssh does; one word is taken as is. */
export function joinCommand(words: readonly string[]): string {
  if (words.length === 0) throw new UsageError("no command given: fleetrun run MACHINE -- COMMAND…");
  return words.join(" ");
}

/** Command statuses by their CLI names (`timed_out`, also `timed-out`). */
export const STATUS_NAMES = ["queued", "running", "completed", "failed", "timed_out", "cancelled", "skipped", "lost"] as const;

export function parseStatus(text: string): string {
  const s = text.trim().toLowerCase().replace(/-/g, "_");
  if (!(STATUS_NAMES as readonly string[]).includes(s)) throw new UsageError(`--status: expected one of ${STATUS_NAMES.join(", ")}, got ${JSON.stringify(text)}`);
  return s;
}
