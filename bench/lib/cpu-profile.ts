/**
 * Summarizes a V8 `.cpuprofile` (node --cpu-prof): self time per function
 * and per area (a package under node_modules, a file under src/, Node
 * internals, GC), optionally only for samples inside a time window given in
 * CLOCK_MONOTONIC microseconds (the clock the profile's timestamps use).
 */
import { readFileSync } from "node:fs";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  /** Sampled ms inside the window. */
  totalMs: number;
  byArea: { area: string; ms: number; share: number }[];
  byFunction: { fn: string; area: string; ms: number; share: number }[];
}

function areaOf(f: CallFrame): string {
  const url = f.url;
  if (url === "") {
    const name = f.functionName;
    if (name === "(garbage collector)" || name === "(idle)" || name === "(program)") return name;
    return "(native)";
  }
  const nm = url.lastIndexOf("/node_modules/");
  if (nm >= 0) {
    const rest = url.slice(nm + "/node_modules/".length).split("/");
    return rest[0]?.startsWith("@") ? `${rest[0]}/${rest[1]}` : (rest[0] ?? url);
  }
  if (url.startsWith("node:")) return url;
  const src = url.indexOf("/src/");
  if (src >= 0) return url.slice(src + 1);
  return url;
}

export function summarizeProfile(file: string, window?: { startUs: number; endUs: number }, top = 15): ProfileSummary {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const areaMs = new Map<string, number>();
  const fnMs = new Map<string, { area: string; ms: number }>();
  let t = p.startTime;
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const delta = p.timeDeltas[i] ?? 0;
    t += delta;
    if (window && (t < window.startUs || t > window.endUs)) continue;
    const node = byId.get(p.samples[i] as number);
    if (!node) continue;
    const ms = delta / 1000;
    const area = areaOf(node.callFrame);
    if (area === "(idle)") continue;
    total += ms;
    areaMs.set(area, (areaMs.get(area) ?? 0) + ms);
    const fn = `${node.callFrame.functionName || "(anonymous)"} ${area}:${node.callFrame.lineNumber + 1}`;
    const e = fnMs.get(fn) ?? { area, ms: 0 };
    e.ms += ms;
    fnMs.set(fn, e);
  }
  const share = (ms: number) => (total > 0 ? ms / total : 0);
  return {
    totalMs: total,
    byArea: [...areaMs].map(([area, ms]) => ({ area, ms, share: share(ms) })).sort((a, b) => b.ms - a.ms).slice(0, top),
    byFunction: [...fnMs].map(([fn, e]) => ({ fn, area: e.area, ms: e.ms, share: share(e.ms) })).sort((a, b) => b.ms - a.ms).slice(0, top),
  };
}

export function formatProfile(s: ProfileSummary): string {
  const lines = [`busy (non-idle) samples in the batch window: ${s.totalMs.toFixed(0)} ms`, "", "by area:"];
  for (const a of s.byArea) lines.push(`  ${a.ms.toFixed(0).padStart(6)} ms  ${(a.share * 100).toFixed(1).padStart(5)}%  ${a.area}`);
  lines.push("", "top functions (self time):");
  for (const f of s.byFunction) lines.push(`  ${f.ms.toFixed(0).padStart(6)} ms  ${(f.share * 100).toFixed(1).padStart(5)}%  ${f.fn}`);
  return lines.join("\n");
}
