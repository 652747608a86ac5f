/**
 * The stdout table and the JSON results file.
 */
import type { SectionResult } from "./types.ts";

function ms(v: number | undefined): string {
  if (v === undefined || Number.isNaN(v)) return "-";
  if (v >= 10_000) return `${(v / 1000).toFixed(1)} s`;
  if (v >= 1_000) return `${(v / 1000).toFixed(2)} s`;
  if (v >= 10) return `${v.toFixed(0)} ms`;
  return `${v.toFixed(2)} ms`;
}

function pad(cells: string[], widths: number[], right: boolean[]): string {
  return cells.map((c, i) => (right[i] ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0))).join("  ");
}

function table(header: string[], rows: string[][], right: boolean[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const lines = [pad(header, widths, right), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map((r) => pad(r, widths, right))];
  return lines.join("\n");
}

function med(list: number[] | undefined): number | undefined {
  if (!list || list.length === 0) return undefined;
  const s = [...list].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
}

export function formatSection(s: SectionResult, baseline?: string): string {
  const out: string[] = [`\n== ${s.title} ==\n`];
  const base = baseline ? s.measurements.find((m) => m.name === baseline)?.median : undefined;
  const hasP95 = s.measurements.some((m) => m.p95 !== undefined);
  const hasP99 = s.measurements.some((m) => m.p99 !== undefined);
  const hasCpu = s.measurements.some((m) => m.clientCpuMs !== undefined);
  const header = ["", "median", ...(hasP95 ? ["p95"] : []), ...(hasP99 ? ["p99", "max"] : []), ...(base !== undefined ? [`× ${baseline}`] : []), ...(hasCpu ? ["client CPU", "machine CPU"] : []), "runs ok", "samples"];
  const rows = s.measurements.map((m) => [
    m.name,
    ms(m.median),
    ...(hasP95 ? [ms(m.p95)] : []),
    ...(hasP99 ? [ms(m.p99), ms(m.max)] : []),
    ...(base !== undefined ? [(m.median / base).toFixed(2)] : []),
    ...(hasCpu ? [ms(med(m.clientCpuMs)), ms(med(m.machineCpuMs))] : []),
    m.okRuns ?? "",
    m.samples.length <= 5 ? m.samples.map((v) => ms(v)).join(", ") : `${m.samples.length} samples`,
  ]);
  out.push(table(header, rows, header.map((_, i) => i > 0 && i < header.length - 2)));
  if (s.checks.length > 0) {
    out.push("");
    out.push(
      table(
        ["check", "value", "target", ""],
        s.checks.map((c) => [c.name, c.unit === "x" ? `${c.value.toFixed(2)}×` : c.unit === "n" ? String(c.value) : ms(c.value), c.target, c.target === "(info)" ? "" : c.met ? "MET" : "MISSED"]),
        [false, true, false, false],
      ),
    );
  }
  for (const m of s.measurements) if (m.note) out.push(`! ${m.name}: ${m.note}`);
  out.push("");
  for (const m of s.measurements) out.push(`  ${m.name}: ${m.detail}`);
  for (const n of s.notes) out.push(`  * ${n}`);
  return out.join("\n");
}
