/**
 * A hostile corpus against every request field but `command`: each value is
 * either refused with a 4xx naming the field, or taken verbatim as data. Nothing
 * of it ever runs on the target (the targets are loopback sshd, so a marker file
 * on this host is a marker on the target). Over REST and gRPC, on SQLite and
 * PostgreSQL.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { postgresSkipReason } from "../fixtures/postgres.ts";
import { GrpcClient, registerMachine, startService, type DbKind, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");
const pgSkip = await postgresSkipReason();
if (process.env.CI === "true" && pgSkip) throw new Error(`PostgreSQL is required in CI: ${pgSkip}`);
const dbs: DbKind[] = pgSkip ? ["sqlite"] : ["sqlite", "postgres"];

const marker = path.join(os.tmpdir(), `fleetrun-hostile-${process.pid}-${Date.now()}`);

/** Values that would run `touch marker` if any layer handed them to a shell, plus shapes that break parsers. */
const CORPUS: string[] = [
  `$(touch ${marker})`,
  `\`touch ${marker}\``,
  `; touch ${marker}`,
  `&& touch ${marker}`,
  `| touch ${marker}`,
  `'; touch ${marker}; '`,
  `"; touch ${marker}; "`,
  `x\ntouch ${marker}`,
  `x\rtouch ${marker}`,
  `-oProxyCommand=touch ${marker}`,
  `--help`,
  `-`,
  "x\u0000y",
  "\ud800 lone surrogate",
  "ünïcødé ✓ \u202e",
  "a".repeat(70_000),
  "${IFS}touch${IFS}" + marker,
  "*",
  "../../../../etc/passwd",
];

/** Percent-encoded UTF-8; a lone surrogate (which has no UTF-8 form) becomes U+FFFD, as a browser would send it. */
const urlPart = (v: string): string => encodeURIComponent(Buffer.from(v, "utf8").toString("utf8"));

const short = (v: string): string => JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…(${v.length})` : v);

describe.each(dbs)("hostile input on %s", (db) => {
  let svc: TestService;
  let machine: string;
  let grpc: GrpcClient;

  beforeAll(async () => {
    fs.rmSync(marker, { force: true });
    svc = await startService({ db });
    machine = await registerMachine(svc, fleet, { index: 2, user: "root", labels: { env: "hostile-test" } });
    grpc = new GrpcClient(svc.url, svc.token);
  });
  afterAll(async () => {
    grpc?.close();
    await svc?.close();
    expect(fs.existsSync(marker), "nothing of the corpus ran").toBe(false);
  });

  /** A 4xx must name `field` (exactly, or as its prefix like `env.NAME`). */
  function refusedNaming(r: { status: number; body: { error?: { field?: string; code?: string } } }, field: RegExp, what: string): void {
    expect(r.status, what).toBeGreaterThanOrEqual(400);
    expect(r.status, what).toBeLessThan(500);
    if (r.status === 400) expect(r.body.error?.field ?? "", what).toMatch(field);
  }

  it("cwd: refused naming it, or a directory that does not exist", async () => {
    for (const v of CORPUS) {
      const r = await svc.rest("POST", "/v1/commands", { machine_id: machine, command: "pwd", cwd: v });
      if (r.status === 200) {
        expect(r.body.data.status, short(v)).toBe("failed");
        expect(r.body.data.error.code, short(v)).toMatch(/^cwd_/);
      } else refusedNaming(r, /^cwd$/, short(v));
    }
    expect(fs.existsSync(marker)).toBe(false);
  });

  it("env values: refused naming the variable, or delivered byte for byte", async () => {
    for (const v of CORPUS) {
      const r = await svc.rest("POST", "/v1/commands", { machine_id: machine, command: 'printf %s "$HOSTILE"', env: { HOSTILE: v } });
      if (r.status === 200) {
        expect(r.body.data.status, short(v)).toBe("completed");
        // REST carries output as UTF-8 text: a lone surrogate comes back replaced.
        if (!/[\ud800-\udfff]/.test(v)) expect(r.body.data.stdout, short(v)).toBe(v);
        expect(r.body.data.env_keys).toEqual(["HOSTILE"]);
      } else refusedNaming(r, /^env(\.HOSTILE)?$/, short(v));
    }
    expect(fs.existsSync(marker)).toBe(false);
  });

  it("env names: refused naming env unless they are plain identifiers", async () => {
    for (const v of CORPUS) {
      const r = await svc.rest("POST", "/v1/commands", { machine_id: machine, command: "true", env: { [v]: "x" } });
      if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(v) && r.status === 200) expect(r.body.data.status, short(v)).toBe("completed");
      else refusedNaming(r, /^env/, short(v));
    }
    expect(fs.existsSync(marker)).toBe(false);
  });

  it("user: refused naming it, or a user that does not exist", async () => {
    for (const v of CORPUS) {
      const r = await svc.rest("POST", "/v1/commands", { machine_id: machine, command: "id -un", user: v });
      if (r.status === 200) expect(r.body.data.status, short(v)).toBe("failed");
      else refusedNaming(r, /^user$/, short(v));
    }
    expect(fs.existsSync(marker)).toBe(false);
  });

  it("ids in bodies and paths: 400 or 404, never a 5xx", async () => {
    for (const v of CORPUS) {
      const exec = await svc.rest("POST", "/v1/commands", { machine_id: v, command: "true" });
      expect([400, 404], short(v)).toContain(exec.status);
      const enc = urlPart(v.slice(0, 2000));
      for (const route of [`/v1/commands/${enc}`, `/v1/machines/${enc}`, `/v1/machines/${enc}/commands`, `/v1/batches/${enc}`]) {
        const r = await svc.rest("GET", route);
        expect([400, 404, 414], `${route.slice(0, 60)}`).toContain(r.status);
      }
    }
  });

  it("labels and selectors: refused naming the field, or kept verbatim as data", async () => {
    for (const v of CORPUS) {
      const patch = await svc.rest("PATCH", `/v1/machines/${machine}`, { labels: { [v]: "x", k: v } });
      if (patch.status === 200) {
        expect(patch.body.data.labels[v], short(v)).toBe("x");
        expect(patch.body.data.labels.k, short(v)).toBe(v);
      } else refusedNaming(patch, /^labels/, short(v));
      const list = await svc.rest("GET", `/v1/machines?label_selector=${urlPart(`k=${v.slice(0, 2000)}`)}`);
      expect(list.status, short(v)).toBeLessThan(500);
      if (list.status === 400) expect(list.body.error.field ?? "", short(v)).toMatch(/^label_selector/);
      const batch = await svc.rest("POST", "/v1/commands/batch", { selector: { labels: { k: v } }, command: "true" });
      expect(batch.status, short(v)).toBeLessThan(500);
      if (batch.status === 200) {
        // It may only reach the machine that carries exactly that label value.
        for (const id of Object.keys(batch.body.data)) expect(id, short(v)).toBe(machine);
      } else if (batch.status === 400) expect(batch.body.error.field ?? "", short(v)).toMatch(/^selector/);
    }
    // Back to a plain label set; the machine still works.
    const reset = await svc.rest("PATCH", `/v1/machines/${machine}`, { labels: null });
    expect(reset.status).toBe(200);
  });

  it("history filters: refused naming the filter, never a 5xx", async () => {
    for (const v of CORPUS) {
      const q = urlPart(v.slice(0, 2000));
      for (const name of ["status", "requested_by", "since", "cursor", "exit_code", "limit"]) {
        const r = await svc.rest("GET", `/v1/machines/${machine}/commands?${name}=${q}`);
        expect(r.status, `${name}=${short(v)}`).toBeLessThan(500);
        if (r.status === 400) expect(r.body.error.field ?? "", `${name}=${short(v)}`).toMatch(new RegExp(`^${name}`));
      }
    }
  });

  it("over gRPC the same values are refused or taken as data, and the service keeps serving", async () => {
    for (const v of CORPUS) {
      try {
        const r = await grpc.unary(CommandService.method.execute, { machineId: machine, command: 'printf %s "$HOSTILE"', env: { HOSTILE: v }, cwd: "/", user: "" });
        if (!/[\ud800-\udfff]/.test(v)) expect(Buffer.from(r.stdout).toString("utf8"), short(v)).toBe(v);
      } catch (e) {
        expect((e as { code: number }).code, short(v)).toBe(3); // INVALID_ARGUMENT
      }
    }
    const ok = await svc.rest("POST", "/v1/commands", { machine_id: machine, command: "echo alive" });
    expect(ok.body.data.stdout).toBe("alive\n");
    expect(fs.existsSync(marker)).toBe(false);
  });

  it("a NUL anywhere is a 400 naming the field, and its audit record (and its neighbours') is kept", async () => {
    const r = await svc.rest("GET", `/v1/commands/${encodeURIComponent("cmd_x\u0000y")}`);
    expect(r.status).toBe(400);
    expect(r.body.error.field).toBe("id");
    const label = await svc.rest("PATCH", `/v1/machines/${machine}`, { labels: { "a\u0000b": "x" } });
    expect(label.status).toBe(400);
    expect(label.body.error.field).toMatch(/^labels/);
    const metrics = await fetch(`${svc.url}/metrics`).then((x) => x.text());
    expect(metrics).not.toMatch(/^fleetrun_audit_records_lost_total [1-9]/m);
    const verify = await svc.rest("GET", "/v1/audit/verify");
    expect(verify.body.data.ok).toBe(true);
    const denied = await svc.rest("GET", "/v1/audit?action=CommandService.GetCommand&outcome=denied&limit=5");
    expect(denied.body.data.length).toBeGreaterThan(0);
  });
});
