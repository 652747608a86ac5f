/**
 * How the CLI prints: human tables (cli-table3, borderless, like `gh` and
 * `kubectl`) by default, `--output json` (one document) or `--output ndjson`
 * (one JSON value per line) for scripts. Colours only when the stream is a
 * terminal, never with `NO_COLOR` (any non-empty value) or `TERM=dumb`.
 * JSON values have the REST API's shape (snake_case, every field, lowercase
 * statuses, output as text).
 */
import { styleText } from "node:util";
import Table from "cli-table3";
import { UsageError } from "./errors.ts";

export const OUTPUT_MODES = ["table", "json", "ndjson"] as const;
export type OutputMode = (typeof OUTPUT_MODES)[number];

export function parseOutputMode(text: string | undefined): OutputMode {
  const mode = text ?? "table";
  if (!(OUTPUT_MODES as readonly string[]).includes(mode)) throw new UsageError(`--output: expected one of ${OUTPUT_MODES.join(", ")}, got ${JSON.stringify(mode)}`);
  return mode as OutputMode;
}

type Style = Parameters<typeof styleText>[0];

export interface Out {
  readonly mode: OutputMode;
  /** stdout is a terminal. */
  readonly tty: boolean;
  /** stderr is a terminal (progress lines go there). */
  readonly errTty: boolean;
  /** Colours on stdout / stderr. */
  readonly color: boolean;
  readonly errColor: boolean;
  /** `text` styled when colours are on for stdout. */
  paint(style: Style, text: string): string;
  /** `text` styled when colours are on for stderr. */
  paintErr(style: Style, text: string): string;
  write(text: string): void;
  /** A line on stderr (notes, warnings: never data). */
  note(text: string): void;
}

/** Colours for a stream: a terminal, `NO_COLOR` unset or empty, `TERM` not `dumb`. */
export function colorsFor(isTTY: boolean, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!isTTY) return false;
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== "") return false;
  return env.TERM !== "dumb";
}

export function createOut(mode: OutputMode, env: NodeJS.ProcessEnv = process.env): Out {
  const tty = process.stdout.isTTY === true;
  const errTty = process.stderr.isTTY === true;
  const color = colorsFor(tty, env);
  const errColor = colorsFor(errTty, env);
  return {
    mode,
    tty,
    errTty,
    color,
    errColor,
    paint: (style, text) => (color ? styleText(style, text, { validateStream: false }) : text),
    paintErr: (style, text) => (errColor ? styleText(style, text, { validateStream: false }) : text),
    write: (text) => void process.stdout.write(text),
    note: (text) => void process.stderr.write(`${text}\n`),
  };
}

const BORDERLESS = {
  top: "", "top-mid": "", "top-left": "", "top-right": "",
  bottom: "", "bottom-mid": "", "bottom-left": "", "bottom-right": "",
  left: "", "left-mid": "", mid: "", "mid-mid": "",
  right: "", "right-mid": "", middle: "  ",
};

/** A table with a header row; columns padded, no borders; the header bold when colours are on. */
export function renderTable(out: Pick<Out, "paint">, head: readonly string[], rows: readonly (readonly string[])[]): string {
  const table = new Table({
    head: head.map((h) => out.paint("bold", h)),
    chars: BORDERLESS,
    style: { head: [], border: [], "padding-left": 0, "padding-right": 0, compact: true },
  });
  for (const r of rows) table.push([...r]);
  return table.toString().split("\n").map((l) => l.trimEnd()).join("\n") + "\n";
}

/** `key: value` lines with aligned keys (one resource). */
export function renderFields(out: Pick<Out, "paint">, fields: readonly (readonly [string, string])[]): string {
  const width = Math.max(...fields.map(([k]) => k.length));
  return fields.map(([k, v]) => `${out.paint("bold", `${k}:`.padEnd(width + 1))} ${v}`).join("\n") + "\n";
}

/** A JSON document (json) or one line per item (ndjson). */
export function printJson(out: Out, value: unknown, items?: readonly unknown[]): void {
  if (out.mode === "ndjson") {
    for (const item of items ?? [value]) out.write(`${JSON.stringify(item)}\n`);
    return;
  }
  out.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Cuts a single-line rendering of `text` to `max` characters. */
export function oneLine(text: string, max = 60): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** `2026-12-02 15:04:05` in local time for tables; `-` when unset. */
export function formatTime(d: Date | undefined): string {
  if (d === undefined) return "-";
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** Labels as `k=v,k2=v2`. */
export function formatLabels(labels: Record<string, string>): string {
  const entries = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b));
  return entries.length === 0 ? "-" : entries.map(([k, v]) => `${k}=${v}`).join(",");
}
