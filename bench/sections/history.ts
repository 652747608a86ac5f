/**
 * Section "history": a machine with a large command history (inserted
 * straight through the store), then `GET /v1/machines/{id}/commands` pages
 * at the top, deep by cursor, and deep by offset, on SQLite and PostgreSQL.
 */
import { encodeHistoryCursor } from "../../src/db/history-cursor.ts";
import type { CommandRecord } from "../../src/exec/ports.ts";
import { ulid } from "../../src/exec/ids.ts";
import { postgresAvailable } from "../../test/fixtures/postgres.ts";
import { startService, type TestService } from "../../test/fixtures/service.ts";
import { onCleanup } from "../lib/cleanup.ts";
import { now, summarize } from "../lib/stats.ts";
import type { Check, Measurement, SectionResult } from "../lib/types.ts";

export interface HistoryOptions {
  rows: number;
  /** Page requests per measurement. */
  count: number;
  log: (line: string) => void;
  enabled: (db: string) => boolean;
}

const INSERT_CHUNK = 5_000;
const PAGE = 20;
const WARMUP = 5;
/** Deep offset pages are slow by nature; fewer of them. */
const OFFSET_COUNT = 10;

function record(machineId: string, createdMs: number): CommandRecord {
  const createdAt = new Date(createdMs);
  return {
    id: `cmd_${ulid(createdMs)}`,
    machineId,
    command: "uptime",
    cwd: null,
    envKeys: [],
    user: null,
    timeoutMs: 3_600_000,
    status: "completed",
    exitCode: 0,
    signal: null,
    stdoutBytes: 70,
    stderrBytes: 0,
    stdoutTruncated: false,
    stderrTruncated: false,
    logBytes: 70,
    durationMs: 12,
    createdAt,
    startedAt: createdAt,
    finishedAt: new Date(createdMs + 12),
    errorCode: null,
    errorMessage: null,
    batchId: null,
    requestedBy: "bench",
    cancelledBy: null,
    runner: null,
    sync: true,
  };
}

/** Inserts `rows` commands one second apart, oldest first; returns the (createdAt, id) of each in insertion order. */
async function fill(svc: TestService, machineId: string, rows: number, label: string, log: (l: string) => void): Promise<{ createdMs: number[]; ids: string[]; ms: number }> {
  const base = Date.now() - rows * 1000;
  const createdMs: number[] = new Array(rows);
  const ids: string[] = new Array(rows);
  const t0 = now();
  let lastReport = t0;
  for (let i = 0; i < rows; i += INSERT_CHUNK) {
    const chunk: CommandRecord[] = [];
    for (let j = i; j < Math.min(rows, i + INSERT_CHUNK); j++) {
      const r = record(machineId, base + j * 1000);
      createdMs[j] = base + j * 1000;
      ids[j] = r.id;
      chunk.push(r);
    }
    await svc.stores.commands.insertMany(chunk);
    const done = Math.min(rows, i + INSERT_CHUNK);
    if (now() - lastReport > 5_000 || done === rows) {
      lastReport = now();
      const s = (now() - t0) / 1000;
      log(`  ${label}: ${done.toLocaleString("en")} / ${rows.toLocaleString("en")} rows (${Math.round(done / s).toLocaleString("en")} rows/s)`);
    }
  }
  return { createdMs, ids, ms: now() - t0 };
}

async function pages(svc: TestService, url: string, n: number, check: (body: any) => void): Promise<number[]> {
  const once = async (): Promise<number> => {
    const t0 = now();
    const r = await svc.rest("GET", url);
    const ms = now() - t0;
    if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${r.text.slice(0, 300)}`);
    check(r.body);
    return ms;
  };
  for (let i = 0; i < WARMUP; i++) await once();
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await once());
  return out;
}

async function oneDatabase(db: "sqlite" | "postgres", opts: HistoryOptions): Promise<{ measurements: Measurement[]; checks: Check[]; note: string }> {
  const { rows, log } = opts;
  const svc = await startService({ db });
  const close = onCleanup(`history service (${db})`, () => svc.close());
  try {
    const machineId = `mach_${ulid()}`;
    const at = new Date();
    await svc.stores.machines.create({
      id: machineId,
      name: `bench-history-${db}`,
      host: "127.0.0.1",
      port: 22,
      username: "root",
      privateKey: null,
      passphrase: null,
      password: null,
      hostKeyFingerprint: null,
      hostKeyAlgorithm: null,
      hostKeyPolicy: "tofu",
      labels: {},
      createdAt: at,
      updatedAt: at,
    });
    log(`${db}: inserting ${rows.toLocaleString("en")} commands for one machine (batches of ${INSERT_CHUNK})…`);
    const { createdMs, ids, ms: insertMs } = await fill(svc, machineId, rows, db, log);

    const base = `/v1/machines/${machineId}/commands?limit=${PAGE}`;
    // Newest first: position p (0 = newest) is insertion index rows-1-p.
    const depth = Math.min(rows - PAGE, Math.round(rows * 0.9));
    const prev = rows - depth; // insertion index of position depth-1
    const cursor = encodeHistoryCursor(new Date(createdMs[prev] as number), ids[prev] as string);
    const expectFirst = (index: number) => (body: any) => {
      const items = body?.data as { id: string }[] | undefined;
      if (!items || items.length !== PAGE || items[0]?.id !== ids[index]) {
        throw new Error(`unexpected page: first ${items?.[0]?.id}, wanted ${ids[index]} (${items?.length} items)`);
      }
      if (Number(body.meta?.total) !== rows) throw new Error(`meta.total ${body.meta?.total}, wanted ${rows}`);
    };

    // The REST cursor of the first page leads to the second page.
    const first = await svc.rest("GET", base);
    const next = first.body?.meta?.next_cursor as string | undefined;
    if (!next) throw new Error(`first page has no meta.next_cursor: ${first.text.slice(0, 300)}`);
    const second = await svc.rest("GET", `${base}&cursor=${encodeURIComponent(next)}`);
    expectFirst(rows - 1 - PAGE)(second.body);

    log(`${db}: timing pages…`);
    const top = await pages(svc, base, opts.count, expectFirst(rows - 1));
    const deepCursor = await pages(svc, `${base}&cursor=${encodeURIComponent(cursor)}`, opts.count, expectFirst(rows - 1 - depth));
    const deepOffset = await pages(svc, `${base}&offset=${depth}`, OFFSET_COUNT, expectFirst(rows - 1 - depth));

    const label = db === "sqlite" ? "SQLite" : "PostgreSQL";
    const m = (name: string, detail: string, samples: number[]): Measurement => {
      const s = summarize(samples);
      return { name: `${label}: ${name}`, detail, samples, median: s.median, p95: s.p95 };
    };
    const measurements = [
      m("first page", `GET …/commands?limit=${PAGE} (offset 0)`, top),
      m(`cursor at row ${depth.toLocaleString("en")}`, `GET …/commands?limit=${PAGE}&cursor=… (keyset, ${depth.toLocaleString("en")} rows deep)`, deepCursor),
      m(`offset ${depth.toLocaleString("en")}`, `GET …/commands?limit=${PAGE}&offset=${depth} (informative: offset paging scans the skipped rows)`, deepOffset),
    ];
    const checks: Check[] = measurements.slice(0, 2).map((x) => ({ name: x.name, value: x.median, unit: "ms", target: "< 10 ms", met: x.median < 10 }));
    const note = `${label}: ${rows.toLocaleString("en")} rows inserted in ${(insertMs / 1000).toFixed(0)} s (${Math.round(rows / (insertMs / 1000)).toLocaleString("en")} rows/s through insertMany).`;
    return { measurements, checks, note };
  } finally {
    await close();
  }
}

export async function runHistory(opts: HistoryOptions): Promise<SectionResult> {
  const measurements: Measurement[] = [];
  const checks: Check[] = [];
  const notes: string[] = [];
  if (opts.enabled("history-sqlite")) {
    const r = await oneDatabase("sqlite", opts);
    measurements.push(...r.measurements);
    checks.push(...r.checks);
    notes.push(r.note);
  }
  if (opts.enabled("history-postgres")) {
    if (await postgresAvailable()) {
      const r = await oneDatabase("postgres", opts);
      measurements.push(...r.measurements);
      checks.push(...r.checks);
      notes.push(r.note);
    } else {
      notes.push("PostgreSQL not reachable at 127.0.0.1:5432 (trust auth, database test): skipped.");
    }
  }
  notes.push("The service runs in the bench process (buildApp on port 0, as the integration tests do); each time is one REST request over loopback HTTP/1.1.");
  return { title: `History page: one machine with ${opts.rows.toLocaleString("en")} commands (median of ${opts.count})`, measurements, checks, notes };
}
