/**
 * SQLite specifics: the file settings, and the query plans of the hot paths
 * (the same SQL the command store's Kysely queries compile to) use the
 * indexes rather than scans or sorts.
 */
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openStores } from "../../src/db/index.ts";
import type { Stores } from "../../src/exec/ports.ts";

describe("SQLite database file", () => {
  let dir: string;
  let stores: Stores;
  let db: DatabaseSync;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "fleetrun-plan-"));
    // A data dir that does not exist yet, two levels deep.
    stores = await openStores({ dataDir: join(dir, "a", "b") });
    db = new DatabaseSync(join(dir, "a", "b", "fleetrun.db"));
    db.exec("analyze");
  });

  afterAll(async () => {
    db?.close();
    await stores?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("is created in the data dir, in WAL mode", async () => {
    expect((await stat(join(dir, "a", "b", "fleetrun.db"))).isFile()).toBe(true);
    const row = db.prepare("pragma journal_mode").get() as { journal_mode: string };
    expect(row.journal_mode).toBe("wal");
  });

  const plan = (sql: string, ...params: (string | number)[]): string =>
    db
      .prepare(`explain query plan ${sql}`)
      .all(...params)
      .map((r) => String(r.detail))
      .join("\n");

  it("serves a history page by offset from the history index, without a sort", () => {
    const p = plan(
      `select * from "commands" where "machine_id" = ? order by "created_at" desc, "id" desc limit ? offset ?`,
      "m",
      21,
      40,
    );
    expect(p).toContain("commands_history_index");
    expect(p).not.toContain("TEMP B-TREE");
  });

  it("serves a history page by cursor as an index range, without a sort", () => {
    const p = plan(
      `select * from "commands" where "machine_id" = ? and ("created_at", "id") < (?, ?) order by "created_at" desc, "id" desc limit ?`,
      "m",
      1_700_000_000_000,
      "cmd_x",
      21,
    );
    expect(p).toMatch(/SEARCH commands USING INDEX commands_history_index \(machine_id=\? AND \(created_at,id\)<\(\?,\?\)\)/);
    expect(p).not.toContain("TEMP B-TREE");
  });

  it("counts a filtered history on the history index", () => {
    const p = plan(
      `select count(*) as "n" from "commands" where "machine_id" = ? and "created_at" >= ?`,
      "m",
      0,
    );
    expect(p).toContain("commands_history_index");
  });

  it("reads output as a primary-key range", () => {
    const p = plan(
      `select "byte_offset", "stream", "data" from "command_output" where "command_id" = ? and "byte_offset" >= coalesce((select max("byte_offset") as "start" from "command_output" where "command_id" = ? and "byte_offset" <= ?), 0) order by "byte_offset" limit ?`,
      "c",
      "c",
      5,
      64,
    );
    expect(p).toMatch(/SEARCH command_output USING INDEX sqlite_autoindex_command_output_1 \(command_id=\? AND byte_offset>\?\)/);
    expect(p).toMatch(/SEARCH command_output USING COVERING INDEX sqlite_autoindex_command_output_1 \(command_id=\? AND byte_offset<\?\)/);
    expect(p).not.toContain("TEMP B-TREE");
  });

  it("finds active commands through the status index", () => {
    const active = plan(
      `select * from "commands" where "status" in (?, ?) order by "created_at", "id"`,
      "queued",
      "running",
    );
    expect(active).toContain("commands_status_index");
    const count = plan(
      `select count(*) as "n" from "commands" where "status" in (?, ?) and "machine_id" = ?`,
      "queued",
      "running",
      "m",
    );
    expect(count).toContain("COVERING INDEX commands_status_index");
  });
});
