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
  children?: number[];
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
  /** Coarse groups (see `groupOf`), all of them. */
  byGroup: { group: string; ms: number; share: number }[];
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

/**
 * The coarse group of a sample: the database layer (Kysely, MikroORM,
 * better-sqlite3, pg), ssh2, socket writes (Node's stream writes to sockets,
 * native), HTTP/RPC (fastify, Connect, protobuf), GC, fleetrun's own code
 * (src/), Node internals, and the rest. `area` is the sample's area, with a
 * native function counted in the area of the JavaScript that called it.
 */
export function groupOf(area: string, functionName: string, native: boolean): string {
  if (area === "(garbage collector)") return "GC";
  if (/^(kysely|@mikro-orm\/|better-sqlite3|knex|pg|pg-protocol|pg-pool)/.test(area)) return "database layer (Kysely, MikroORM, better-sqlite3, pg)";
  if (/^(writev|writeBuffer|writeUtf8String|writeLatin1String|writeAsciiString|writeUcs2String)$/.test(functionName) && (native || area.startsWith("node:"))) {
    return "socket writes (native)";
  }
  if (area === "ssh2" || area === "cpu-features") return "ssh2";
  if (/^(fastify|@fastify\/|@connectrpc\/|@bufbuild\/|find-my-way|light-my-request|avvio|pino|fast-json-stringify|@grpc\/)/.test(area)) return "HTTP/RPC (fastify, Connect, protobuf, pino)";
  if (area.startsWith("src/")) return "fleetrun (src/)";
  if (area.startsWith("node:")) return "Node internals (JS)";
  if (area === "(program)") return "(program)";
  return "other";
}

export function summarizeProfile(file: string, window?: { startUs: number; endUs: number }, top = 15): ProfileSummary {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parentOf = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parentOf.set(c, n.id);
  // A native function (empty url) counts in the area of the JavaScript that called it.
  const callerArea = new Map<number, string>();
  const areaFor = (node: ProfileNode): string => {
    const own = areaOf(node.callFrame);
    if (own !== "(native)") return own;
    const cached = callerArea.get(node.id);
    if (cached !== undefined) return cached;
    let up = parentOf.get(node.id);
    let found = "(native)";
    while (up !== undefined) {
      const parent = byId.get(up);
      if (!parent) break;
      const a = areaOf(parent.callFrame);
      if (a !== "(native)" && a !== "(root)" && parent.callFrame.url !== "") {
        found = a;
        break;
      }
      up = parentOf.get(up);
    }
    callerArea.set(node.id, found);
    return found;
  };
  const groupMs = new Map<string, number>();
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
    const native = node.callFrame.url === "" && areaOf(node.callFrame) === "(native)";
    const area = areaFor(node);
    if (area === "(idle)") continue;
    total += ms;
    areaMs.set(area, (areaMs.get(area) ?? 0) + ms);
    const group = groupOf(area, node.callFrame.functionName, native);
    groupMs.set(group, (groupMs.get(group) ?? 0) + ms);
    const fn = native
      ? `${node.callFrame.functionName || "(anonymous)"} (native, called from ${area})`
      : `${node.callFrame.functionName || "(anonymous)"} ${area}:${node.callFrame.lineNumber + 1}`;
    const e = fnMs.get(fn) ?? { area, ms: 0 };
    e.ms += ms;
    fnMs.set(fn, e);
  }
  const share = (ms: number) => (total > 0 ? ms / total : 0);
  return {
    totalMs: total,
    byGroup: [...groupMs].map(([group, ms]) => ({ group, ms, share: share(ms) })).sort((a, b) => b.ms - a.ms),
    byArea: [...areaMs].map(([area, ms]) => ({ area, ms, share: share(ms) })).sort((a, b) => b.ms - a.ms).slice(0, top),
    byFunction: [...fnMs].map(([fn, e]) => ({ fn, area: e.area, ms: e.ms, share: share(e.ms) })).sort((a, b) => b.ms - a.ms).slice(0, top),
  };
}

export function formatProfile(s: ProfileSummary, windowName = "the batch window"): string {
  const lines = [`busy (non-idle) samples in ${windowName}: ${s.totalMs.toFixed(0)} ms`, "", "by group:"];
  for (const g of s.byGroup) lines.push(`  ${g.ms.toFixed(0).padStart(6)} ms  ${(g.share * 100).toFixed(1).padStart(5)}%  ${g.group}`);
  lines.push("", "by area (a native function counts where it was called from):");
  for (const a of s.byArea) lines.push(`  ${a.ms.toFixed(0).padStart(6)} ms  ${(a.share * 100).toFixed(1).padStart(5)}%  ${a.area}`);
  lines.push("", "top functions (self time):");
  for (const f of s.byFunction) lines.push(`  ${f.ms.toFixed(0).padStart(6)} ms  ${(f.share * 100).toFixed(1).padStart(5)}%  ${f.fn}`);
  return lines.join("\n");
}
