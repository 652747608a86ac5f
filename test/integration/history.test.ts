/**
 * A machine's command history (`GET /v1/machines/{id}/commands`) on SQLite
 * and PostgreSQL: the seed's shape, validation, paging by offset and by
 * cursor, filters, and retention pruning.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { loadConfig } from "../../src/config.ts";
import type { CommandRecord, CommandStatus } from "../../src/exec/ports.ts";
import { postgresSkipReason } from "../fixtures/postgres.ts";
import { registerMachine, startService, type DbKind, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");
const pgSkip = await postgresSkipReason();
if (process.env.CI === "true" && pgSkip) throw new Error(`PostgreSQL is required in CI: ${pgSkip}`);

const dbs: DbKind[] = pgSkip ? ["sqlite"] : ["sqlite", "postgres"];

const ITEM_FIELDS = ["batch_id", "command", "duration", "executed_at", "exit_code", "id", "requested_by", "status", "user"];

/** Newest first by created_at, then id: the order the API promises. */
function newestFirst(a: CommandRecord, b: CommandRecord): number {
  const d = b.createdAt.getTime() - a.createdAt.getTime();
  if (d !== 0) return d;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

describe.each(dbs)("History on %s", (db) => {
  let svc: TestService;

  beforeAll(async () => {
    svc = await startService({ db });
  });
  afterAll(async () => {
    await svc?.close();
  });

  const history = (machineId: string, query = "") => svc.rest("GET", `/v1/machines/${machineId}/commands${query}`);

  /**
   * Stores `n` ended commands for `machineId` directly (history paging needs
   * volume, not real runs): created a second apart from `base` backwards,
   * every fifth pair sharing a millisecond so the id decides their order.
   */
  async function seed(svc: TestService, machineId: string, n: number, base = Date.now() - 3_600_000, status: (i: number) => CommandStatus = () => "completed"): Promise<CommandRecord[]> {
    const records: CommandRecord[] = [];
    for (let i = 0; i < n; i++) {
      const rec = svc.app.engine.newRecord(
        machineId,
        { command: `echo seeded ${i}`, cwd: null, env: {}, timeoutMs: 60_000, user: i % 4 === 0 ? "frrunas" : null },
        i % 3 === 0 ? "ci-bot" : "admin",
        false,
      );
      const created = new Date(base - (i % 5 === 1 ? (i - 1) * 1000 : i * 1000));
      const st = status(i);
      const started = st === "failed" || st === "skipped" || st === "queued" ? null : new Date(created.getTime() + 100);
      records.push({
        ...rec,
        createdAt: created,
        status: st,
        startedAt: started,
        finishedAt: st === "running" || st === "queued" ? null : new Date(created.getTime() + 600),
        durationMs: started && st !== "running" ? 500 : null,
        exitCode: st === "completed" ? i % 2 : null,
        errorCode: st === "failed" ? "unreachable" : null,
        errorMessage: st === "failed" ? "connection refused" : null,
      });
    }
    await svc.stores.commands.insertMany(records);
    return records.sort(newestFirst);
  }

  it("answers in the seed's shape, newest first, executed_at = started_at (or created_at when it never started)", async () => {
    const m = await registerMachine(svc, fleet, { index: 22 });
    const run = async (body: Record<string, unknown>) => {
      const r = await svc.rest("POST", "/v1/commands", { machine_id: m, ...body });
      expect(r.status).toBe(200);
      return r.body.data;
    };
    const ran = [
      await run({ command: "echo one" }),
      await run({ command: "exit 3", user: "frrunas" }),
      await run({ command: "true", cwd: "/no/such/dir" }),
      await run({ command: "sleep 30", timeout: 500 }),
    ];
    expect(ran.map((c) => c.status)).toEqual(["completed", "completed", "failed", "timed_out"]);
    const r = await history(m);
    expect(r.status).toBe(200);
    expect(Object.keys(r.body).sort()).toEqual(["data", "meta"]);
    expect(r.body.meta).toMatchObject({ total: 4, limit: 20, offset: 0 });
    expect(r.body.meta.next_cursor ?? null).toBeNull();
    const items = r.body.data;
    expect(items.map((i: { id: string }) => i.id)).toEqual(ran.map((c) => c.id).reverse());
    for (const item of items) {
      expect(Object.keys(item).sort()).toEqual(ITEM_FIELDS);
      const full = ran.find((c) => c.id === item.id);
      expect(item).toMatchObject({
        command: full.command,
        exit_code: full.exit_code,
        duration: full.duration,
        status: full.status,
        user: full.user,
        requested_by: "admin",
        batch_id: null,
      });
      expect(item.executed_at).toBe(full.started_at ?? full.created_at);
    }
    const [timedOut, failed, three, one] = items;
    expect(one).toMatchObject({ command: "echo one", exit_code: 0, status: "completed", user: null });
    expect(three).toMatchObject({ exit_code: 3, user: "frrunas" });
    expect(failed).toMatchObject({ status: "failed", exit_code: null, duration: null });
    expect(failed.executed_at).toBe(ran[2].created_at);
    expect(timedOut).toMatchObject({ status: "timed_out", exit_code: null });
    expect(typeof one.duration).toBe("number");
    expect(one.executed_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
  });

  it("takes since as an ISO 8601 date or date-time, UTC when it has no offset", async () => {
    const m = await registerMachine(svc, fleet, { index: 23 });
    // Created at 2026-01-01 00:00:01 (two), 2025-12-31 23:59:59 and 23:59:58 UTC.
    await seed(svc, m, 4, Date.UTC(2026, 0, 1, 0, 0, 1));
    const cases: [string, number][] = [
      ["2026-01-01", 2],
      ["2025-12-31", 4],
      ["2026-01-02", 0],
      ["2026-01-01T00:00:01", 2],
      ["2026-01-01T00:00:02", 0],
      ["2025-12-31T23:59:59Z", 3],
      ["2025-12-31 23:59:59", 3],
      ["2026-01-01T01:00:01+01:00", 2],
      ["2026-01-01T01:00:02+0100", 0],
      ["2025-12-31T22:59:59-01:00", 3],
      ["2026-01-01T00:00:01.001Z", 0],
      ["2026-01-01T00:00", 2],
    ];
    for (const [since, n] of cases) {
      const r = await history(m, `?since=${encodeURIComponent(since)}`);
      expect(r.status, since).toBe(200);
      expect(r.body.meta.total, since).toBe(n);
    }
    // An unencoded `+` arrives as a space: still read as the offset's sign.
    const plus = await history(m, "?since=2026-01-01T01:00:01+01:00");
    expect(plus.status).toBe(200);
    expect(plus.body.meta.total).toBe(2);
  });

  it("validates limit, offset, since and status; an empty or unknown machine", async () => {
    const m = await registerMachine(svc, fleet, { index: 23 });
    await seed(svc, m, 3);
    const bad: [string, string][] = [
      ["?limit=0", "limit"],
      ["?limit=1001", "limit"],
      ["?limit=-5", "limit"],
      ["?limit=abc", "limit"],
      ["?offset=-1", "offset"],
      ["?since=yesterday", "since"],
      ["?since=2024-13-45T99:00:00Z", "since"],
      ["?since=2024-02-30", "since"],
      ["?since=2024-01-20T25:00", "since"],
      ["?since=20240120", "since"],
      ["?status=bogus", "status"],
      ["?cursor=%2F%2F%2F", "cursor"],
      ["?cursor=Zm9vYmFy", "cursor"],
    ];
    for (const [q, field] of bad) {
      const r = await history(m, q);
      expect(r.status, q).toBe(400);
      expect(r.body.error.code).toBe("invalid_argument");
      expect(r.body.error.field, q).toBe(field);
    }
    const max = await history(m, "?limit=1000");
    expect(max.status).toBe(200);
    expect(max.body.meta).toMatchObject({ total: 3, limit: 1000 });

    const future = await history(m, `?since=${new Date(Date.now() + 86_400_000).toISOString()}`);
    expect(future.status).toBe(200);
    expect(future.body.data).toEqual([]);
    expect(future.body.meta.total).toBe(0);

    const empty = await registerMachine(svc, fleet, { index: 23 });
    const e = await history(empty);
    expect(e.status).toBe(200);
    expect(e.body).toMatchObject({ data: [], meta: { total: 0, limit: 20, offset: 0 } });

    const unknown = await history("mach_nope");
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe("not_found");
  });

  it("pages by offset: default limit 20, a last partial page, and past the end", async () => {
    const m = await registerMachine(svc, fleet, { index: 21 });
    const all = await seed(svc, m, 45);
    const ids = all.map((c) => c.id);
    const first = await history(m);
    expect(first.body.data.map((i: { id: string }) => i.id)).toEqual(ids.slice(0, 20));
    expect(first.body.meta).toMatchObject({ total: 45, limit: 20, offset: 0 });
    const second = await history(m, "?offset=20");
    expect(second.body.data.map((i: { id: string }) => i.id)).toEqual(ids.slice(20, 40));
    const last = await history(m, "?offset=40");
    expect(last.body.data.map((i: { id: string }) => i.id)).toEqual(ids.slice(40));
    expect(last.body.meta).toMatchObject({ total: 45, limit: 20, offset: 40 });
    const one = await history(m, "?offset=44&limit=10");
    expect(one.body.data.map((i: { id: string }) => i.id)).toEqual([ids[44]]);
    const past = await history(m, "?offset=45");
    expect(past.status).toBe(200);
    expect(past.body.data).toEqual([]);
    expect(past.body.meta.total).toBe(45);
  });

  it("filters by status, exit_code, requested_by and since; cursor paging visits each command once, in order", async () => {
    const m = await registerMachine(svc, fleet, { index: 20 });
    const statuses: CommandStatus[] = ["completed", "completed", "failed", "timed_out", "cancelled", "skipped"];
    const all = await seed(svc, m, 60, Date.now() - 7_200_000, (i) => statuses[i % statuses.length]!);

    const walk = async (query: string, limit: number) => {
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      for (;;) {
        const r = await history(m, `?limit=${limit}${query}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
        expect(r.status).toBe(200);
        pages++;
        expect(r.body.data.length).toBeLessThanOrEqual(limit);
        seen.push(...r.body.data.map((i: { id: string }) => i.id));
        cursor = r.body.meta.next_cursor ?? null;
        if (cursor === null) break;
        expect(r.body.data).toHaveLength(limit);
        expect(pages).toBeLessThan(100);
      }
      return { seen, pages };
    };

    const cases: [string, (c: CommandRecord) => boolean][] = [
      ["", () => true],
      ["&status=failed", (c) => c.status === "failed"],
      ["&status=completed&exit_code=1", (c) => c.status === "completed" && c.exitCode === 1],
      ["&exit_code=0", (c) => c.exitCode === 0],
      ["&requested_by=ci-bot", (c) => c.requestedBy === "ci-bot"],
      ["&requested_by=ci-bot&status=completed", (c) => c.requestedBy === "ci-bot" && c.status === "completed"],
      [`&since=${encodeURIComponent(all[29]!.createdAt.toISOString())}`, (c) => c.createdAt.getTime() >= all[29]!.createdAt.getTime()],
      ["&requested_by=nobody", () => false],
    ];
    for (const [query, keep] of cases) {
      const expected = all.filter(keep).map((c) => c.id);
      const page = await history(m, `?limit=1000${query}`);
      expect(page.body.data.map((i: { id: string }) => i.id), query).toEqual(expected);
      expect(page.body.meta.total, query).toBe(expected.length);
      for (const limit of [7, 10]) {
        const { seen, pages } = await walk(query, limit);
        expect(seen, `${query} limit ${limit}`).toEqual(expected);
        expect(pages).toBe(Math.max(1, Math.ceil(expected.length / limit)));
      }
    }
    const filtered = await history(m, "?status=failed");
    for (const item of filtered.body.data) expect(item).toMatchObject({ status: "failed", exit_code: null });
  });

  /** Runs `fn` against a service of its own: prune works on every machine of its database. */
  async function withRetentionService(fn: (svc: TestService, keep: number) => Promise<void>): Promise<void> {
    const env = { FLEETRUN_RETENTION_MAX_PER_MACHINE: "5" };
    const own = await startService({ db, env });
    try {
      const keep = loadConfig({ FLEETRUN_DATA_DIR: own.dataDir, ...env }).retentionMaxPerMachine;
      expect(keep).toBe(5);
      await fn(own, keep!);
    } finally {
      await own.close();
    }
  }

  const idsOf = (r: { body: { data: { id: string }[] } }) => r.body.data.map((i) => i.id);

  it("retention keeps the newest N ended commands per machine and never deletes running or queued ones", async () => {
    await withRetentionService(async (own, keep) => {
      const a = await registerMachine(own, fleet, { index: 19 });
      const b = await registerMachine(own, fleet, { index: 18 });
      const base = Date.now() - 600_000;
      // a: 12 ended commands, and a running and a queued one older than all of them.
      const ended = await seed(own, a, 12, base);
      const [running] = await seed(own, a, 1, base - 100_000, () => "running");
      const [queued] = await seed(own, a, 1, base - 200_000, () => "queued");
      const bEnded = await seed(own, b, 3, base);
      expect((await own.rest("GET", `/v1/machines/${a}/commands`)).body.meta.total).toBe(14);

      expect(await own.stores.commands.prune({ olderThan: null, keepPerMachine: keep })).toBe(7);

      const after = await own.rest("GET", `/v1/machines/${a}/commands?limit=1000`);
      expect(idsOf(after)).toEqual([...ended.slice(0, 5), running!, queued!].map((c) => c.id));
      expect(after.body.meta.total).toBe(7);
      for (const gone of ended.slice(5)) expect((await own.rest("GET", `/v1/commands/${gone.id}`)).status).toBe(404);
      expect((await own.rest("GET", `/v1/commands/${running!.id}`)).body.data.status).toBe("running");

      const bAfter = await own.rest("GET", `/v1/machines/${b}/commands?limit=1000`);
      expect(idsOf(bAfter)).toEqual(bEnded.map((c) => c.id));
      expect(bAfter.body.meta.total).toBe(3);

      // Pruning again changes nothing.
      expect(await own.stores.commands.prune({ olderThan: null, keepPerMachine: keep })).toBe(0);
    });
  });

  // Known bug: the store counts active commands among the N it keeps, so a
  // running command newer than the ended ones costs one ended command.
  // Remove `.fails` once prune ranks ended commands only.
  it("retention does not count a running command among the N ended ones it keeps", async () => {
    await withRetentionService(async (own, keep) => {
      const a = await registerMachine(own, fleet, { index: 17 });
      const base = Date.now() - 600_000;
      const ended = await seed(own, a, 8, base);
      const [running] = await seed(own, a, 1, base + 100_000, () => "running");
      expect(await own.stores.commands.prune({ olderThan: null, keepPerMachine: keep })).toBe(3);
      const after = await own.rest("GET", `/v1/machines/${a}/commands?limit=1000`);
      expect(idsOf(after)).toEqual([running!, ...ended.slice(0, 5)].map((c) => c.id));
    });
  });
});
