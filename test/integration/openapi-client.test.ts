/**
 * The OpenAPI document in use: served at GET /openapi.json without a token,
 * a client generated from it by a standard generator (orval, fetch client)
 * runs Execute, async, status, cancel, batch and history against the real
 * service and sshd fleet, and every answer matches the document's schema
 * for that operation and status (ajv, JSON Schema 2020-12).
 */
import fs from "node:fs";
import path from "node:path";
import { Ajv2020 } from "ajv/dist/2020.js";
import { generate } from "orval";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { OPENAPI_FILE } from "../../scripts/generate-openapi.ts";
import { eventually, registerMachine, ROOT, startService, type TestService } from "../fixtures/service.ts";

const fleet = inject("sshFleet");
const doc = JSON.parse(fs.readFileSync(OPENAPI_FILE, "utf8"));

/** Checks a body against the schema the document gives for (path, method, status). */
function schemaCheck(): (route: string, method: string, status: number, body: unknown) => void {
  const ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: true });
  ajv.addSchema({ ...doc, $id: "https://fleetrun.local/openapi.json" });
  return (route, method, status, body) => {
    const op = doc.paths[route][method];
    const response = op.responses[String(status)] ?? op.responses.default;
    const ref: string | undefined = response.$ref;
    const resolved = ref === undefined ? response : doc.components.responses[ref.split("/").at(-1)!];
    expect(resolved.content?.["application/json"], `${method} ${route} ${status} is documented`).toBeDefined();
    const pointer = ref === undefined
      ? `#/paths/${route.replace(/~/g, "~0").replace(/\//g, "~1")}/${method}/responses/${status}/content/application~1json/schema`
      : `#/components/responses/${ref.split("/").at(-1)}/content/application~1json/schema`;
    const validate = ajv.getSchema(`https://fleetrun.local/openapi.json${pointer}`);
    expect(validate, pointer).toBeDefined();
    if (!validate!(body)) throw new Error(`${method} ${route} ${status}: ${ajv.errorsText(validate!.errors)}\n${JSON.stringify(body).slice(0, 500)}`);
  };
}

describe("a client generated from the OpenAPI document", () => {
  let svc: TestService;
  let machine: string;
  let api: any;
  let outDir: string;
  const check = schemaCheck();
  const auth = (): RequestInit => ({ headers: { authorization: `Bearer ${svc.token}` } });

  beforeAll(async () => {
    svc = await startService({ db: "sqlite" });
    machine = await registerMachine(svc, fleet, { index: 7, user: "root" });
    // Generated from the document the service serves, into a scratch folder of the checkout.
    const served = await fetch(`${svc.url}/openapi.json`);
    outDir = fs.mkdtempSync(path.join(ROOT, ".cache", "openapi-client-"));
    const input = path.join(outDir, "openapi.json");
    fs.writeFileSync(input, Buffer.from(await served.arrayBuffer()));
    await generate(
      { input: { target: input }, output: { target: path.join(outDir, "fleetrun.ts"), client: "fetch", mode: "single", baseUrl: svc.url } },
      outDir,
    );
    api = await import(path.join(outDir, "fleetrun.ts"));
  }, 120_000);
  afterAll(async () => {
    await svc?.close();
    if (outDir) fs.rmSync(outDir, { recursive: true, force: true });
  });

  it("GET /openapi.json needs no token and is the committed document", async () => {
    const r = await fetch(`${svc.url}/openapi.json`);
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
    expect(await r.text()).toBe(fs.readFileSync(OPENAPI_FILE, "utf8"));
  });

  it("has one function per operation", () => {
    for (const name of ["execute", "startCommand", "getCommand", "cancelCommand", "batch", "startBatch", "getBatch", "cancelBatch", "listMachineCommands", "createMachine", "listMachines", "watchCommand"]) {
      expect(typeof api[name], name).toBe("function");
    }
  });

  it("Execute: 200 {data: Command}", async () => {
    const r = await api.execute({ machine_id: machine, command: "echo hi; echo err >&2; exit 3", timeout: 30000 }, auth());
    expect(r.status).toBe(200);
    check("/v1/commands", "post", r.status, r.data);
    expect(r.data.data).toMatchObject({ machine_id: machine, status: "completed", exit_code: 3, stdout: "hi\n", stderr: "err\n", signal: null, error: null });
  });

  it("async, status and cancel: 202 {data: {id, status}}, GET while running, DELETE {data: {cancelled: true}}", async () => {
    const started = await api.startCommand({ machine_id: machine, command: "echo started; sleep 30" }, auth());
    expect(started.status).toBe(202);
    check("/v1/commands/async", "post", started.status, started.data);
    const id = started.data.data.id as string;
    const running = await eventually(async () => {
      const r = await api.getCommand(id, auth());
      return r.data.data.status === "running" && r.data.data.stdout === "started\n" ? r : null;
    }, 15_000, "running with output");
    check("/v1/commands/{id}", "get", running.status, running.data);
    expect(running.data.data.exit_code).toBeNull();
    const cancelled = await api.cancelCommand(id, auth());
    expect(cancelled.status).toBe(200);
    check("/v1/commands/{id}", "delete", cancelled.status, cancelled.data);
    expect(cancelled.data).toEqual({ data: { cancelled: true } });
    const final = await eventually(async () => {
      const r = await api.getCommand(id, auth());
      return r.data.data.status === "cancelled" ? r : null;
    }, 15_000, "cancelled");
    check("/v1/commands/{id}", "get", final.status, final.data);
    expect(final.data.data.signal).toBe("SIGTERM");
  });

  it("batch: 200 {data: {machine id: Command}, meta}; async batch 202 and its progress", async () => {
    const r = await api.batch({ machine_ids: [machine, "mach_local"], command: "echo batch", max_concurrency: "50%" }, auth());
    expect(r.status).toBe(200);
    check("/v1/commands/batch", "post", r.status, r.data);
    expect(Object.keys(r.data.data).sort()).toEqual([machine, "mach_local"].sort());
    expect(r.data.data[machine]).toMatchObject({ status: "completed", exit_code: 0, stdout: "batch\n" });
    expect(r.data.meta).toMatchObject({ succeeded: 2, failed: 0, skipped: 0 });
    const started = await api.startBatch({ machine_ids: [machine], command: "true" }, auth());
    expect(started.status).toBe(202);
    check("/v1/batches", "post", started.status, started.data);
    const progress = await eventually(async () => {
      const p = await api.getBatch(started.data.data.id, auth());
      return p.data.data.status === "completed" ? p : null;
    }, 15_000, "batch completed");
    check("/v1/batches/{id}", "get", progress.status, progress.data);
  });

  it("history: 200 {data: [...], meta: {total, limit, offset}} with query parameters", async () => {
    const r = await api.listMachineCommands(machine, { limit: 2, offset: 0 }, auth());
    expect(r.status).toBe(200);
    check("/v1/machines/{machine_id}/commands", "get", r.status, r.data);
    expect(r.data.data).toHaveLength(2);
    expect(r.data.meta).toMatchObject({ limit: 2, offset: 0 });
    expect(r.data.meta.total).toBeGreaterThanOrEqual(3);
    const failed = await api.listMachineCommands(machine, { status: "cancelled" }, auth());
    expect(failed.data.data.every((h: any) => h.status === "cancelled")).toBe(true);
    expect(failed.data.data.length).toBeGreaterThanOrEqual(1);
  });

  it("errors have the documented envelope: 400 naming the field, 401, 404", async () => {
    const bad = await api.listMachineCommands(machine, { limit: 0 }, auth());
    expect(bad.status).toBe(400);
    check("/v1/machines/{machine_id}/commands", "get", bad.status, bad.data);
    expect(bad.data.error).toMatchObject({ code: "invalid_argument", field: "limit" });
    const unauth = await api.getCommand("cmd_x");
    expect(unauth.status).toBe(401);
    check("/v1/commands/{id}", "get", unauth.status, unauth.data);
    const missing = await api.getCommand("cmd_doesnotexist", auth());
    expect(missing.status).toBe(404);
    check("/v1/commands/{id}", "get", missing.status, missing.data);
  });

  it("the NDJSON stream's lines match the documented event schema", async () => {
    const done = await api.execute({ machine_id: machine, command: "printf 'a\\nb\\n'" }, auth());
    const r = await fetch(`${svc.url}/v1/commands/${done.data.data.id}/stream?offset=0`, auth());
    expect(r.headers.get("content-type")).toMatch(/^application\/x-ndjson/);
    const lines = (await r.text()).trim().split("\n").map((l) => JSON.parse(l));
    const ajv = new Ajv2020({ strict: false, validateFormats: false });
    ajv.addSchema({ ...doc, $id: "https://fleetrun.local/s.json" });
    const validate = ajv.getSchema("https://fleetrun.local/s.json#/paths/~1v1~1commands~1{id}~1stream/get/responses/200/content/application~1x-ndjson/schema")!;
    for (const line of lines) expect(validate(line), JSON.stringify(validate.errors)).toBe(true);
    expect(lines.at(-1).data.end.status).toBe("completed");
  });
});
