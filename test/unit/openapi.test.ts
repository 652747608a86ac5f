/**
 * The OpenAPI document: fresh (what `npm run generate:openapi` writes from
 * proto/), valid OpenAPI 3.1 for a maintained validator, and covering every
 * REST route the transcoder serves with its real success status.
 */
import fs from "node:fs";
import SwaggerParser from "@apidevtools/swagger-parser";
import { describe, expect, it } from "vitest";
import { CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { MachineService } from "../../src/gen/fleetrun/v1/machine_pb.js";
import { TokenService } from "../../src/gen/fleetrun/v1/token_pb.js";
import { describeRestRoutes } from "../../src/rest/rest-routes.ts";
import { generateOpenApiText, OPENAPI_FILE } from "../../scripts/generate-openapi.ts";

const committed = fs.readFileSync(OPENAPI_FILE, "utf8");
const doc = JSON.parse(committed);

describe("openapi/fleetrun.openapi.json", () => {
  it("is what `npm run generate:openapi` produces from proto/", () => {
    expect(committed, "stale: run npm run generate:openapi").toBe(generateOpenApiText());
  }, 120_000); // buf build: ~1 s, far longer on a busy machine

  it("is valid OpenAPI 3.1 (@apidevtools/swagger-parser, all $refs resolved)", async () => {
    const api = (await SwaggerParser.validate(structuredClone(doc))) as { openapi: string; paths: object };
    expect(api.openapi).toBe("3.1.0");
    expect(Object.keys(api.paths).length).toBeGreaterThan(5);
  });

  it("the validator rejects a broken document (the check is real)", async () => {
    const broken = structuredClone(doc);
    broken.paths["/v1/commands"].post.responses["200"].content["application/json"].schema = { $ref: "#/components/schemas/NoSuchThing" };
    await expect(SwaggerParser.validate(broken)).rejects.toThrow(/NoSuchThing/);
  });

  it("has one operation per REST route the server registers, with its success status", () => {
    const routes = describeRestRoutes([CommandService, MachineService, TokenService]);
    expect(routes.length).toBeGreaterThan(10);
    for (const r of routes) {
      const op = doc.paths[r.path.replace(/=\*\}/g, "}")]?.[r.method.toLowerCase()];
      expect(op, `${r.method} ${r.path}`).toBeDefined();
      expect(op["x-fleetrun-rpc"]).toBe(r.rpc);
      expect(Object.keys(op.responses)).toContain(String(r.successCode));
    }
    const ops = Object.values(doc.paths).flatMap((item: any) => Object.keys(item));
    expect(ops.length).toBe(routes.length);
  });

  it("describes the envelopes, the error body, query parameters and the stream as the REST layer sends them", () => {
    const s = doc.components.schemas;
    // {"data": Command}; every Command field present, unknown ones null.
    const exec = doc.paths["/v1/commands"].post;
    expect(exec.responses["200"].content["application/json"].schema).toEqual({
      type: "object",
      properties: { data: { $ref: "#/components/schemas/Command" } },
      required: ["data"],
    });
    expect(s.Command.required).toEqual(expect.arrayContaining(["id", "exit_code", "stdout", "status", "error", "started_at"]));
    expect(s.Command.properties.exit_code.type).toEqual(["integer", "null"]);
    expect(s.Command.properties.started_at).toEqual({ type: ["string", "null"], format: "date-time" });
    expect(s.CommandStatus.enum).toEqual(["queued", "running", "completed", "failed", "timed_out", "cancelled", "skipped", "lost"]);
    // Requests reject unknown fields; machine_id is snake_case.
    expect(s.ExecuteRequest.additionalProperties).toBe(false);
    expect(Object.keys(s.ExecuteRequest.properties)).toEqual(["machine_id", "command", "cwd", "env", "timeout", "user"]);
    // Lists and batches are their own envelope: {"data": [...], "meta": {...}}.
    const history = doc.paths["/v1/machines/{machine_id}/commands"].get;
    expect(history.responses["200"].content["application/json"].schema).toEqual({ $ref: "#/components/schemas/ListMachineCommandsResponse" });
    expect(history.parameters.map((p: any) => `${p.in}:${p.name}`)).toEqual([
      "path:machine_id", "query:since", "query:limit", "query:offset", "query:cursor", "query:status", "query:exit_code", "query:requested_by",
    ]);
    expect(s.BatchResponse.properties.data.additionalProperties).toEqual({ $ref: "#/components/schemas/Command" });
    // 202 for async starts, 201 for created machines.
    expect(Object.keys(doc.paths["/v1/commands/async"].post.responses)).toContain("202");
    expect(Object.keys(doc.paths["/v1/machines"].post.responses)).toContain("201");
    // Errors: {"error": {code, message, field?}}, 429 with Retry-After.
    expect(s.Error.properties.error.required).toEqual(["code", "message"]);
    expect(s.Error.properties.error.properties.code.enum).toContain("resource_exhausted");
    expect(doc.components.responses.TooManyRequests.headers["Retry-After"]).toBeDefined();
    expect(exec.responses["429"]).toEqual({ $ref: "#/components/responses/TooManyRequests" });
    // The stream: NDJSON and SSE, offset, Last-Event-ID, token as access_token.
    const stream = doc.paths["/v1/commands/{id}/stream"].get;
    expect(Object.keys(stream.responses["200"].content)).toEqual(["application/x-ndjson", "text/event-stream"]);
    expect(stream.parameters.map((p: any) => `${p.in}:${p.name}`)).toEqual(["path:id", "query:offset", "header:Last-Event-ID"]);
    expect(stream.security).toEqual([{ bearerAuth: [] }, { accessToken: [] }]);
    expect(doc.components.securitySchemes.accessToken).toMatchObject({ type: "apiKey", in: "query", name: "access_token" });
    expect(s.CommandEvent.oneOf.map((b: any) => b.required[0])).toEqual(["started", "output", "skipped", "end"]);
    // Credentials are write-only: in the request, never in the Machine response.
    expect(Object.keys(s.CreateMachineRequest.properties)).toContain("private_key");
    expect(Object.keys(s.Machine.properties)).not.toContain("private_key");
    expect(Object.keys(s.Machine.properties)).toContain("has_private_key");
  });
});
