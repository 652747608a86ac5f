/**
 * The Stores contract, run against a real SQLite file and a real PostgreSQL
 * schema: the same assertions on both drivers.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openStores } from "../../src/db/index.ts";
import type { SqlCommandStore } from "../../src/db/command-store.ts";
import type { DbConfig } from "../../src/db/index.ts";
import { POSTGRESQL_MIGRATIONS, SQLITE_MIGRATIONS } from "../../src/db/migrations/index.ts";
import { AlreadyExistsError, InvalidArgumentError } from "../../src/exec/errors.ts";
import type {
  CommandRecord,
  CommandStatus,
  HistoryQuery,
  MachineRecord,
  Stores,
} from "../../src/exec/ports.ts";
import { createTestSchema, postgresSkipReason } from "../fixtures/postgres.ts";

const pgSkip = await postgresSkipReason();
if (pgSkip !== null) console.warn(`db-stores PostgreSQL suite skipped: ${pgSkip}`);

interface Target {
  config: DbConfig;
  cleanup(): Promise<void>;
}

const T0 = Date.UTC(2025, 0, 1, 12, 0, 0, 123);
let seq = 0;

function machine(overrides: Partial<MachineRecord> = {}): MachineRecord {
  seq += 1;
  const at = new Date(T0 + seq);
  return {
    id: `mach_${String(seq).padStart(6, "0")}`,
    name: `host-${seq}`,
    host: "127.0.0.1",
    port: 22,
    username: "deploy",
    privateKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n-----END OPENSSH PRIVATE KEY-----\n",
    passphrase: "pass-phrase",
    password: null,
    hostKeyFingerprint: "SHA256:abc",
    hostKeyAlgorithm: "ssh-ed25519",
    hostKeyPolicy: "pinned",
    labels: { env: "prod" },
    createdAt: at,
    updatedAt: at,
    ...overrides,
  };
}

function command(machineId: string, overrides: Partial<CommandRecord> = {}): CommandRecord {
  seq += 1;
  return {
    id: `cmd_${String(seq).padStart(8, "0")}`,
    machineId,
    command: "echo hi",
    cwd: null,
    envKeys: [],
    user: null,
    timeoutMs: 60_000,
    status: "queued",
    exitCode: null,
    signal: null,
    stdoutBytes: 0,
    stderrBytes: 0,
    stdoutTruncated: false,
    stderrTruncated: false,
    logBytes: 0,
    durationMs: null,
    createdAt: new Date(T0 + seq * 1000),
    startedAt: null,
    finishedAt: null,
    errorCode: null,
    errorMessage: null,
    batchId: null,
    requestedBy: "admin",
    cancelledBy: null,
    runner: null,
    sync: false,
    ...overrides,
  };
}

function historyQuery(machineId: string, overrides: Partial<HistoryQuery> = {}): HistoryQuery {
  return {
    machineId,
    since: null,
    limit: 20,
    offset: 0,
    cursor: null,
    status: null,
    exitCode: null,
    requestedBy: null,
    ...overrides,
  };
}

async function sqliteTarget(): Promise<Target> {
  const dir = await mkdtemp(join(tmpdir(), "fleetrun-db-"));
  return {
    config: { dataDir: join(dir, "data") },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

async function postgresTarget(): Promise<Target> {
  const { url, schema, drop } = await createTestSchema();
  const dir = await mkdtemp(join(tmpdir(), "fleetrun-db-"));
  return {
    config: { databaseUrl: url, schema, dataDir: dir },
    async cleanup() {
      await drop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const drivers: { name: string; skip: string | null; target: () => Promise<Target> }[] = [
  { name: "SQLite", skip: null, target: sqliteTarget },
  { name: "PostgreSQL", skip: pgSkip, target: postgresTarget },
];

for (const driver of drivers) {
  describe.skipIf(driver.skip !== null)(`Stores on ${driver.name}`, () => {
    let target: Target;
    let stores: Stores;

    beforeAll(async () => {
      target = await driver.target();
      stores = await openStores(target.config);
    });

    afterAll(async () => {
      await stores?.close();
      await target?.cleanup();
    });

    describe("machines", () => {
      it("round-trips every field, credentials included, with millisecond dates", async () => {
        const m = machine({ labels: { env: "prod", "team/x": "a b" }, password: "pw" });
        await stores.machines.create(m);
        const got = await stores.machines.get(m.id);
        expect(got).toEqual(m);
        expect(got?.createdAt.getTime()).toBe(m.createdAt.getTime());
        expect(await stores.machines.get("mach_missing")).toBeNull();
      });

      it("refuses a duplicate name with AlreadyExistsError on field name", async () => {
        const m = machine();
        await stores.machines.create(m);
        const dup = machine({ name: m.name });
        const err = await stores.machines.create(dup).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(AlreadyExistsError);
        expect((err as AlreadyExistsError).field).toBe("name");
        expect(await stores.machines.get(dup.id)).toBeNull();
      });

      it("updates, returning the new record, or null for an unknown id", async () => {
        const m = machine();
        await stores.machines.create(m);
        const later = new Date(m.updatedAt.getTime() + 5000);
        const updated = await stores.machines.update(m.id, {
          host: "10.0.0.9",
          labels: { env: "staging" },
          password: "new",
          updatedAt: later,
        });
        expect(updated).toEqual({ ...m, host: "10.0.0.9", labels: { env: "staging" }, password: "new", updatedAt: later });
        expect(await stores.machines.get(m.id)).toEqual(updated);
        expect(await stores.machines.update("mach_missing", { host: "x" })).toBeNull();
      });

      it("refuses renaming onto an existing name", async () => {
        const a = machine();
        const b = machine();
        await stores.machines.create(a);
        await stores.machines.create(b);
        const err = await stores.machines.update(b.id, { name: a.name }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(AlreadyExistsError);
        expect((await stores.machines.get(b.id))?.name).toBe(b.name);
      });

      it("deletes once", async () => {
        const m = machine();
        await stores.machines.create(m);
        expect(await stores.machines.delete(m.id)).toBe(true);
        expect(await stores.machines.delete(m.id)).toBe(false);
        expect(await stores.machines.get(m.id)).toBeNull();
      });

      it("gets many in the asked order, skipping unknown ids", async () => {
        const a = machine();
        const b = machine();
        await stores.machines.create(a);
        await stores.machines.create(b);
        const got = await stores.machines.getMany([b.id, "mach_missing", a.id]);
        expect(got.map((m) => m.id)).toEqual([b.id, a.id]);
      });
    });

    describe("machine lists and labels", () => {
      let s: Stores;
      let t: Target;
      const fleet: MachineRecord[] = [];

      beforeAll(async () => {
        // A database of its own, so totals are exact.
        t = await driver.target();
        s = await openStores(t.config);
        const same = new Date(T0 + 10_000_000);
        fleet.push(
          machine({ id: "mach_b", labels: { env: "prod", role: "web" }, createdAt: same, updatedAt: same }),
          machine({ id: "mach_a", labels: { env: "prod", role: "db" }, createdAt: same, updatedAt: same }),
          machine({ id: "mach_c", labels: { env: "dev", role: "web" }, createdAt: new Date(same.getTime() + 1), updatedAt: same }),
          machine({ id: "mach_d", labels: {}, createdAt: new Date(same.getTime() - 1), updatedAt: same }),
        );
        for (const m of fleet) await s.machines.create(m);
      });

      afterAll(async () => {
        await s?.close();
        await t?.cleanup();
      });

      it("lists by created_at then id, with limit, offset and total", async () => {
        const all = await s.machines.list({ limit: 10, offset: 0, labels: null });
        expect(all.items.map((m) => m.id)).toEqual(["mach_d", "mach_a", "mach_b", "mach_c"]);
        expect(all.total).toBe(4);
        const page = await s.machines.list({ limit: 2, offset: 1, labels: null });
        expect(page.items.map((m) => m.id)).toEqual(["mach_a", "mach_b"]);
        expect(page.total).toBe(4);
      });

      it("honours labels in list and selectByLabels", async () => {
        const web = await s.machines.list({ limit: 10, offset: 0, labels: { role: "web" } });
        expect(web.items.map((m) => m.id)).toEqual(["mach_b", "mach_c"]);
        expect(web.total).toBe(2);
        const prodWeb = await s.machines.selectByLabels({ env: "prod", role: "web" });
        expect(prodWeb.map((m) => m.id)).toEqual(["mach_b"]);
        expect(await s.machines.selectByLabels({ env: "nope" })).toEqual([]);
        expect((await s.machines.selectByLabels({})).length).toBe(4);
        const paged = await s.machines.list({ limit: 1, offset: 1, labels: { env: "prod" } });
        expect(paged.items.map((m) => m.id)).toEqual(["mach_b"]);
        expect(paged.total).toBe(2);
      });
    });

    describe("commands", () => {
      it("round-trips every field", async () => {
        const c = command("mach_rt", {
          cwd: "/srv",
          envKeys: ["A", "B"],
          user: "www-data",
          status: "completed",
          exitCode: 3,
          signal: "SIGTERM",
          stdoutBytes: 10,
          stderrBytes: 20,
          stdoutTruncated: true,
          stderrTruncated: false,
          logBytes: 30,
          durationMs: 1234,
          startedAt: new Date(T0 + 1),
          finishedAt: new Date(T0 + 1235),
          errorCode: "connection_lost",
          errorMessage: "gone",
          batchId: "batch_1",
          requestedBy: "ci-bot",
          runner: { jobDir: ".fleetrun/jobs/x", user: "www-data" },
          sync: true,
        });
        await stores.commands.insert(c);
        expect(await stores.commands.get(c.id)).toEqual(c);
        expect(await stores.commands.get("cmd_missing")).toBeNull();
      });

      it("transitions only from the given statuses (compare-and-set)", async () => {
        const c = command("mach_cas");
        await stores.commands.insert(c);
        const startedAt = new Date(T0 + 77);
        expect(
          await stores.commands.transition(c.id, ["queued"], {
            status: "running",
            startedAt,
            runner: { jobDir: "j", user: null },
          }),
        ).toBe(true);
        expect(await stores.commands.transition(c.id, ["queued"], { status: "cancelled" })).toBe(false);
        let got = await stores.commands.get(c.id);
        expect(got?.status).toBe("running");
        expect(got?.startedAt).toEqual(startedAt);
        expect(got?.runner).toEqual({ jobDir: "j", user: null });

        expect(
          await stores.commands.transition(c.id, ["queued", "running"], {
            status: "completed",
            exitCode: 0,
            durationMs: 5,
            finishedAt: new Date(T0 + 82),
          }),
        ).toBe(true);
        got = await stores.commands.get(c.id);
        expect(got).toMatchObject({ status: "completed", exitCode: 0, durationMs: 5 });
        expect(await stores.commands.transition(c.id, ["running"], { status: "lost" })).toBe(false);
        expect(await stores.commands.transition(c.id, [], { status: "lost" })).toBe(false);
        expect(await stores.commands.transition("cmd_missing", ["queued"], { status: "running" })).toBe(false);
        // An empty patch still reports whether the status matched.
        expect(await stores.commands.transition(c.id, ["completed"], {})).toBe(true);
        expect(await stores.commands.transition(c.id, ["running"], {})).toBe(false);
      });

      it("lets exactly one of many concurrent transitions win", async () => {
        const c = command("mach_race", { status: "running" });
        await stores.commands.insert(c);
        const ends: CommandStatus[] = ["completed", "cancelled", "timed_out", "lost", "failed", "completed", "lost", "cancelled"];
        const results = await Promise.all(
          ends.map((status) => stores.commands.transition(c.id, ["running"], { status })),
        );
        expect(results.filter(Boolean).length).toBe(1);
        const winner = ends[results.indexOf(true)];
        expect((await stores.commands.get(c.id))?.status).toBe(winner);
      });

      it("group-commits the writes of one event-loop turn in one transaction", async () => {
        const store = stores.commands as SqlCommandStore;
        const cmds = Array.from({ length: 40 }, () => command("mach_group", { status: "running" }));
        await stores.commands.insertMany(cmds);
        const before = store.writeStats().batches;
        // One turn: output, counters and a transition for each of 40 commands.
        await Promise.all(
          cmds.flatMap((c, i) => [
            stores.commands.appendOutput(c.id, [{ offset: 0, stream: "stdout", data: Buffer.from(`out ${i}\n`) }], [], {
              stdoutBytes: `out ${i}\n`.length,
              stderrBytes: 0,
              logBytes: `out ${i}\n`.length,
              stdoutTruncated: false,
              stderrTruncated: false,
            }),
            stores.commands.transition(c.id, ["running"], { runner: { jobDir: `j${i}`, user: null } }),
          ]),
        );
        expect(store.writeStats().batches - before).toBe(1);
        for (const [i, c] of cmds.entries()) {
          const got = await stores.commands.get(c.id);
          expect(got).toMatchObject({ stdoutBytes: `out ${i}\n`.length, runner: { jobDir: `j${i}` } });
          const out = await stores.commands.readOutput(c.id, 0, 1 << 20);
          expect(Buffer.concat(out.map((o) => o.data)).toString()).toBe(`out ${i}\n`);
        }
      });

      it("fails a bad write alone: the others of its batch are stored", async () => {
        const a = command("mach_fail");
        const b = command("mach_fail");
        const [ra, dup, rb, ta] = await Promise.allSettled([
          stores.commands.insert(a),
          stores.commands.insert({ ...a }),
          stores.commands.insert(b),
          stores.commands.transition(a.id, ["queued"], { status: "running" }),
        ]);
        expect(ra.status).toBe("fulfilled");
        expect(dup.status).toBe("rejected");
        expect(rb.status).toBe("fulfilled");
        expect(ta).toEqual({ status: "fulfilled", value: true });
        expect((await stores.commands.get(a.id))?.status).toBe("running");
        expect((await stores.commands.get(b.id))?.status).toBe("queued");
        const page = await stores.commands.history({
          machineId: "mach_fail", limit: 10, offset: 0, cursor: null, since: null, status: null, exitCode: null, requestedBy: null,
        });
        // The per-machine count moved once per stored command, not for the failed one.
        expect(page.total).toBe(2);
      });

      it("stores output, drops a middle and reads from any offset", async () => {
        const c = command("mach_out", { status: "running" });
        await stores.commands.insert(c);
        const chunk = (offset: number, text: string, stream: "stdout" | "stderr" = "stdout") => ({
          offset,
          stream,
          data: Buffer.from(text),
        });
        await stores.commands.appendOutput(
          c.id,
          [chunk(0, "aaaa"), chunk(4, "bbbb", "stderr"), chunk(8, "cccc")],
          [],
          { stdoutBytes: 8, stderrBytes: 4, logBytes: 12, stdoutTruncated: false, stderrTruncated: false },
        );
        // The middle chunk is dropped as a new one arrives.
        await stores.commands.appendOutput(c.id, [chunk(12, "dddd")], [4], {
          stdoutBytes: 12,
          stderrBytes: 4,
          logBytes: 16,
          stdoutTruncated: false,
          stderrTruncated: true,
        });
        const got = await stores.commands.get(c.id);
        expect(got).toMatchObject({
          stdoutBytes: 12,
          stderrBytes: 4,
          logBytes: 16,
          stdoutTruncated: false,
          stderrTruncated: true,
        });

        const offsets = async (from: number, max = 1 << 20) =>
          (await stores.commands.readOutput(c.id, from, max)).map((x) => x.offset);
        expect(await offsets(0)).toEqual([0, 8, 12]);
        expect(await offsets(3)).toEqual([0, 8, 12]);
        // Inside the dropped middle: the next stored chunk, offsets preserved.
        expect(await offsets(5)).toEqual([8, 12]);
        expect(await offsets(9)).toEqual([8, 12]);
        expect(await offsets(15)).toEqual([12]);
        expect(await offsets(16)).toEqual([]);
        // maxBytes: stop once reached, but always at least one chunk.
        expect(await offsets(0, 1)).toEqual([0]);
        expect(await offsets(0, 5)).toEqual([0, 8]);
        const first = await stores.commands.readOutput(c.id, 0, 1);
        expect(first[0]?.data.toString()).toBe("aaaa");
        expect(first[0]?.stream).toBe("stdout");

        // A retried append of a stored chunk keeps the stored one.
        await stores.commands.appendOutput(c.id, [chunk(12, "dddd")], [], {
          stdoutBytes: 12,
          stderrBytes: 4,
          logBytes: 16,
          stdoutTruncated: false,
          stderrTruncated: true,
        });
        expect(await offsets(0)).toEqual([0, 8, 12]);
        expect(await stores.commands.readOutput("cmd_missing", 0, 100)).toEqual([]);
      });

      it("reads long outputs across several round trips, in order, binary-safe", async () => {
        const c = command("mach_long", { status: "running" });
        await stores.commands.insert(c);
        const chunks = Array.from({ length: 150 }, (_, i) => ({
          offset: i * 3,
          stream: (i % 2 === 0 ? "stdout" : "stderr") as "stdout" | "stderr",
          data: Buffer.from([i, 0, 255]),
        }));
        await stores.commands.appendOutput(c.id, chunks, [], {
          stdoutBytes: 225,
          stderrBytes: 225,
          logBytes: 450,
          stdoutTruncated: false,
          stderrTruncated: false,
        });
        const all = await stores.commands.readOutput(c.id, 0, 1 << 20);
        expect(all).toEqual(chunks);
        const some = await stores.commands.readOutput(c.id, 100, 30);
        expect(some.map((x) => x.offset)).toEqual(Array.from({ length: 10 }, (_, i) => 99 + i * 3));
      });

      it("lists active commands and counts them per machine", async () => {
        const t = await driver.target();
        const s = await openStores(t.config);
        try {
          const q = command("mach_x", { status: "queued" });
          const r = command("mach_x", { status: "running" });
          const other = command("mach_y", { status: "running" });
          const done = command("mach_x", { status: "completed", exitCode: 0 });
          await s.commands.insertMany([q, r, other, done]);
          expect((await s.commands.listActive()).map((c) => c.id)).toEqual([q.id, r.id, other.id]);
          expect(await s.commands.countActiveOnMachine("mach_x")).toBe(2);
          expect(await s.commands.countActiveOnMachine("mach_none")).toBe(0);
          await s.commands.transition(r.id, ["running"], { status: "completed" });
          expect(await s.commands.countActiveOnMachine("mach_x")).toBe(1);
        } finally {
          await s.close();
          await t.cleanup();
        }
      });

      it("lists a batch's commands by created_at then id", async () => {
        const at = new Date(T0 + 99_000_000);
        const b2 = command("mach_1", { batchId: "batch_l", createdAt: at, id: "cmd_batch_2" });
        const b1 = command("mach_2", { batchId: "batch_l", createdAt: at, id: "cmd_batch_1" });
        const b0 = command("mach_3", { batchId: "batch_l", createdAt: new Date(at.getTime() - 1) });
        await stores.commands.insertMany([b2, b1, b0, command("mach_1", { batchId: "batch_other" })]);
        expect((await stores.commands.listByBatch("batch_l")).map((c) => c.id)).toEqual([
          b0.id,
          b1.id,
          b2.id,
        ]);
        expect(await stores.commands.listByBatch("batch_none")).toEqual([]);
      });
    });

    describe("history", () => {
      const M = "mach_hist";
      const rows: CommandRecord[] = [];

      beforeAll(async () => {
        // 55 commands; groups of three share a created_at to exercise the id tie-break.
        const statuses: CommandStatus[] = ["completed", "failed", "completed", "timed_out", "running"];
        for (let i = 0; i < 55; i++) {
          rows.push(
            command(M, {
              id: `cmd_h${String(i).padStart(3, "0")}`,
              createdAt: new Date(T0 + Math.floor(i / 3) * 1000),
              status: statuses[i % 5] ?? "completed",
              exitCode: i % 5 === 0 ? 0 : i % 5 === 2 ? 1 : null,
              requestedBy: i % 2 === 0 ? "alice" : "bob",
            }),
          );
        }
        await stores.commands.insertMany(rows.slice(0, 30));
        for (const r of rows.slice(30)) await stores.commands.insert(r);
      });

      const newestFirst = () =>
        [...rows].sort((a, b) =>
          b.createdAt.getTime() - a.createdAt.getTime() || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0),
        );

      it("orders newest first by created_at, then id (ties)", async () => {
        const page = await stores.commands.history(historyQuery(M, { limit: 7 }));
        expect(page.items.map((c) => c.id)).toEqual(newestFirst().slice(0, 7).map((c) => c.id));
        expect(page.items[0]?.id).toBe("cmd_h054");
        expect(page.items.slice(1, 4).map((c) => c.id)).toEqual(["cmd_h053", "cmd_h052", "cmd_h051"]);
        expect(page.total).toBe(55);
        expect(page.nextCursor).not.toBeNull();
        expect(page.items[0]).toEqual(rows[54]);
      });

      it("pages by offset, with an empty page past the end and a short last page", async () => {
        const all = newestFirst().map((c) => c.id);
        const last = await stores.commands.history(historyQuery(M, { limit: 20, offset: 40 }));
        expect(last.items.map((c) => c.id)).toEqual(all.slice(40));
        expect(last.nextCursor).toBeNull();
        expect(last.total).toBe(55);
        const exact = await stores.commands.history(historyQuery(M, { limit: 5, offset: 50 }));
        expect(exact.items.map((c) => c.id)).toEqual(all.slice(50));
        expect(exact.nextCursor).toBeNull();
        const past = await stores.commands.history(historyQuery(M, { limit: 20, offset: 55 }));
        expect(past.items).toEqual([]);
        expect(past.total).toBe(55);
        expect(past.nextCursor).toBeNull();
        const none = await stores.commands.history(historyQuery("mach_empty"));
        expect(none).toEqual({ items: [], total: 0, nextCursor: null });
      });

      it("pages by cursor visiting each row exactly once, ignoring offset", async () => {
        const seen: string[] = [];
        let cursor: string | null = null;
        let pages = 0;
        do {
          const page = await stores.commands.history(historyQuery(M, { limit: 10, cursor, offset: cursor === null ? 0 : 999 }));
          seen.push(...page.items.map((c) => c.id));
          expect(page.total).toBe(55);
          cursor = page.nextCursor;
          pages += 1;
        } while (cursor !== null && pages < 20);
        expect(pages).toBe(6);
        expect(seen).toEqual(newestFirst().map((c) => c.id));
        expect(new Set(seen).size).toBe(55);
      });

      it("filters by since, status, exit code and requester, counting the matches", async () => {
        const since = new Date(T0 + 10 * 1000);
        const bySince = await stores.commands.history(historyQuery(M, { since, limit: 100 }));
        const expected = newestFirst().filter((c) => c.createdAt >= since);
        expect(bySince.items.map((c) => c.id)).toEqual(expected.map((c) => c.id));
        expect(bySince.total).toBe(expected.length);

        const failed = await stores.commands.history(historyQuery(M, { status: "failed", limit: 3 }));
        const allFailed = newestFirst().filter((c) => c.status === "failed");
        expect(failed.items.map((c) => c.id)).toEqual(allFailed.slice(0, 3).map((c) => c.id));
        expect(failed.total).toBe(allFailed.length);

        const exit1 = await stores.commands.history(historyQuery(M, { exitCode: 1, requestedBy: "alice", limit: 100 }));
        const want = newestFirst().filter((c) => c.exitCode === 1 && c.requestedBy === "alice");
        expect(want.length).toBeGreaterThan(0);
        expect(exit1.items.map((c) => c.id)).toEqual(want.map((c) => c.id));
        expect(exit1.total).toBe(want.length);

        // Cursor paging under a filter.
        const seen: string[] = [];
        let cursor: string | null = null;
        do {
          const page = await stores.commands.history(historyQuery(M, { requestedBy: "bob", limit: 4, cursor }));
          seen.push(...page.items.map((c) => c.id));
          cursor = page.nextCursor;
        } while (cursor !== null);
        expect(seen).toEqual(newestFirst().filter((c) => c.requestedBy === "bob").map((c) => c.id));
      });

      it("rejects a cursor it did not write", async () => {
        for (const cursor of ["nope!", "", Buffer.from('["x",1]').toString("base64url")]) {
          const err = await stores.commands.history(historyQuery(M, { cursor })).catch((e: unknown) => e);
          expect(err).toBeInstanceOf(InvalidArgumentError);
        }
      });
    });

    describe("prune and totals", () => {
      // Prune spans all machines: a database of its own.
      let stores: Stores;
      let t: Target;

      beforeAll(async () => {
        t = await driver.target();
        stores = await openStores(t.config);
      });

      afterAll(async () => {
        await stores?.close();
        await t?.cleanup();
      });

      it("deletes only old terminal commands and their output, keeping totals right", async () => {
        const M = "mach_prune";
        const old = (i: number, status: CommandStatus) =>
          command(M, { id: `cmd_p${i}`, status, createdAt: new Date(T0 + i * 1000) });
        const cmds = [
          old(1, "completed"),
          old(2, "running"),
          old(3, "queued"),
          old(4, "failed"),
          old(5, "completed"),
          old(6, "completed"),
          old(7, "completed"),
        ];
        await stores.commands.insertMany(cmds);
        await stores.commands.appendOutput("cmd_p1", [{ offset: 0, stream: "stdout", data: Buffer.from("x") }], [], {
          stdoutBytes: 1,
          stderrBytes: 0,
          logBytes: 1,
          stdoutTruncated: false,
          stderrTruncated: false,
        });
        const total = async () => (await stores.commands.history(historyQuery(M))).total;
        const ids = async () => (await stores.commands.history(historyQuery(M, { limit: 100 }))).items.map((c) => c.id);
        expect(await total()).toBe(7);

        // Before T0 + 5 s: p1 and p4 go; p2 (running) and p3 (queued) stay.
        expect(await stores.commands.prune({ olderThan: new Date(T0 + 5000), keepPerMachine: null })).toBe(2);
        expect(await ids()).toEqual(["cmd_p7", "cmd_p6", "cmd_p5", "cmd_p3", "cmd_p2"]);
        expect(await total()).toBe(5);
        expect(await stores.commands.readOutput("cmd_p1", 0, 100)).toEqual([]);
        expect(await stores.commands.get("cmd_p1")).toBeNull();

        // Keep the newest 2: p5 goes; p3 and p2 are active and stay.
        expect(await stores.commands.prune({ olderThan: null, keepPerMachine: 2 })).toBe(1);
        expect(await ids()).toEqual(["cmd_p7", "cmd_p6", "cmd_p3", "cmd_p2"]);
        expect(await total()).toBe(4);
        // The counter and a COUNT agree.
        expect((await stores.commands.history(historyQuery(M, { since: new Date(0) }))).total).toBe(4);

        expect(await stores.commands.prune({ olderThan: null, keepPerMachine: null })).toBe(0);
        expect(await stores.commands.prune({ olderThan: null, keepPerMachine: 0 })).toBe(2);
        expect(await total()).toBe(2);

        await stores.commands.insert(command(M, { id: "cmd_p8" }));
        expect(await total()).toBe(3);
      });

      it("prunes more than one batch per machine", async () => {
        const M = "mach_prune_many";
        const cmds = Array.from({ length: 1203 }, (_, i) =>
          command(M, { id: `cmd_pm${String(i).padStart(5, "0")}`, status: "completed", createdAt: new Date(T0 + i) }),
        );
        await stores.commands.insertMany(cmds);
        expect(await stores.commands.prune({ olderThan: null, keepPerMachine: 3 })).toBe(1200);
        const page = await stores.commands.history(historyQuery(M));
        expect(page.total).toBe(3);
        expect(page.items.map((c) => c.id)).toEqual(["cmd_pm01202", "cmd_pm01201", "cmd_pm01200"]);
      });
    });

    describe("batches", () => {
      it("inserts, reads and updates", async () => {
        const b = {
          id: "batch_x1",
          command: "uptime",
          status: "running" as const,
          machineIds: ["mach_1", "mach_2"],
          maxConcurrency: 5,
          maxErrors: 1,
          requestedBy: "admin",
          createdAt: new Date(T0 + 1),
          finishedAt: null,
        };
        await stores.batches.insert(b);
        expect(await stores.batches.get(b.id)).toEqual(b);
        const finishedAt = new Date(T0 + 999);
        await stores.batches.update(b.id, { status: "completed", finishedAt });
        expect(await stores.batches.get(b.id)).toEqual({ ...b, status: "completed", finishedAt });
        expect(await stores.batches.get("batch_missing")).toBeNull();
      });
    });

    describe("lifecycle", () => {
      it("answers ping", async () => {
        await expect(stores.ping()).resolves.toBeUndefined();
      });

      it("keeps data across close and reopen, applying no migration twice", async () => {
        const t = await driver.target();
        try {
          const first = await openStores(t.config);
          const m = machine();
          const c = command(m.id, { status: "running" });
          await first.machines.create(m);
          await first.commands.insert(c);
          await first.close();

          const second = await openStores(t.config);
          try {
            expect(await second.machines.get(m.id)).toEqual(m);
            expect(await second.commands.get(c.id)).toEqual(c);
            expect((await second.commands.listActive()).map((x) => x.id)).toEqual([c.id]);
            expect((await second.commands.history(historyQuery(m.id))).total).toBe(1);
            await second.commands.insert(command(m.id));
            expect((await second.commands.history(historyQuery(m.id))).total).toBe(2);
          } finally {
            await second.close();
          }
          const third = await openStores(t.config);
          await third.close();
          const all = (t.config.databaseUrl === undefined ? SQLITE_MIGRATIONS : POSTGRESQL_MIGRATIONS).map((x) => x.name);
          expect(all[0]).toBe("0001_initial_schema");
          expect(await migrationsApplied(t.config)).toEqual(all);
        } finally {
          await t.cleanup();
        }
      });
    });
  });
}

/** Names recorded in the migrations table, read with a separate client. */
async function migrationsApplied(config: DbConfig): Promise<string[]> {
  if (config.databaseUrl === undefined) {
    const db = new DatabaseSync(join(config.dataDir, "fleetrun.db"), { readOnly: true });
    try {
      return db.prepare("select name from fleetrun_migrations order by id").all().map((r) => String(r.name));
    } finally {
      db.close();
    }
  }
  const name = "pg";
  const pg = (await import(name)) as {
    default: {
      Client: new (o: { connectionString: string }) => {
        connect(): Promise<void>;
        query(sql: string): Promise<{ rows: { name: string }[] }>;
        end(): Promise<void>;
      };
    };
  };
  const client = new pg.default.Client({ connectionString: config.databaseUrl });
  await client.connect();
  try {
    const res = await client.query(`select name from "${config.schema}".fleetrun_migrations order by id`);
    return res.rows.map((r) => r.name);
  } finally {
    await client.end();
  }
}
