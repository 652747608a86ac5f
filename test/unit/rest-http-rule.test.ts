import { describe, expect, it } from "vitest";
import { CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { MachineService } from "../../src/gen/fleetrun/v1/machine_pb.js";
import { parseTemplate, restBindings } from "../../src/rest/http-rule.ts";
import { redactUrl } from "../../src/rest/log-serializers.ts";
import { describeRestRoutes } from "../../src/rest/rest-routes.ts";

describe("path templates", () => {
  it("turns variables into fastify parameters", () => {
    expect(parseTemplate("/v1/commands/{id}/stream")).toEqual({ url: "/v1/commands/:p0/stream", pathVariables: [{ param: "p0", fieldPath: "id" }] });
    expect(parseTemplate("/v1/a/{parent.id=*}/b/{name}")).toEqual({
      url: "/v1/a/:p0/b/:p1",
      pathVariables: [
        { param: "p0", fieldPath: "parent.id" },
        { param: "p1", fieldPath: "name" },
      ],
    });
  });

  it("rejects custom verbs", () => {
    expect(() => parseTemplate("/v1/commands/{id}:cancel")).toThrow(/verbs/);
    expect(() => parseTemplate("/v1/commands:batchGet")).toThrow(/verbs/);
  });

  it("rejects multi-segment variables it cannot serve", () => {
    expect(() => parseTemplate("/v1/{name=shelves/*}")).toThrow(/unsupported path segment/);
    expect(() => parseTemplate("/v1/**")).toThrow(/unsupported path segment/);
    expect(() => parseTemplate("v1/x")).toThrow(/starts with/);
  });
});

describe("bindings from the fleetrun protos", () => {
  it("lists every annotated method with its success code", () => {
    const routes = describeRestRoutes([CommandService, MachineService]).map((r) => `${r.method} ${r.path} ${r.successCode} ${r.rpc.split(".").pop()}`);
    expect(routes).toEqual([
      "POST /v1/commands 200 CommandService/Execute",
      "POST /v1/commands/async 202 CommandService/StartCommand",
      "GET /v1/commands/{id} 200 CommandService/GetCommand",
      "GET /v1/commands/{id}/stream 200 CommandService/WatchCommand",
      "DELETE /v1/commands/{id} 200 CommandService/CancelCommand",
      "POST /v1/commands/batch 200 CommandService/Batch",
      "POST /v1/batches 202 CommandService/StartBatch",
      "GET /v1/batches/{id} 200 CommandService/GetBatch",
      "DELETE /v1/batches/{id} 200 CommandService/CancelBatch",
      "GET /v1/machines/{machine_id}/commands 200 CommandService/ListMachineCommands",
      "POST /v1/machines 201 MachineService/CreateMachine",
      "GET /v1/machines 200 MachineService/ListMachines",
      "GET /v1/machines/{id} 200 MachineService/GetMachine",
      "PATCH /v1/machines/{id} 200 MachineService/UpdateMachine",
      "DELETE /v1/machines/{id} 200 MachineService/DeleteMachine",
      "POST /v1/machines/{id}/test 200 MachineService/TestMachine",
    ]);
  });

  it("skips methods without an annotation (ExecuteAsync, BatchStream)", () => {
    const names = restBindings(CommandService).map((b) => b.method.name);
    expect(names).not.toContain("ExecuteAsync");
    expect(names).not.toContain("BatchStream");
  });

  it("records body rules and path variables", () => {
    const update = restBindings(MachineService).find((b) => b.method.name === "UpdateMachine");
    expect(update).toMatchObject({ httpMethod: "PATCH", body: "*", url: "/v1/machines/:p0", pathVariables: [{ param: "p0", fieldPath: "id" }] });
    const list = restBindings(CommandService).find((b) => b.method.name === "ListMachineCommands");
    expect(list).toMatchObject({ body: "", pathVariables: [{ fieldPath: "machine_id" }] });
  });
});

describe("log redaction", () => {
  it("replaces access_token values, however the key is encoded, and keeps the rest", () => {
    expect(redactUrl("/v1/commands/c/stream?access_token=abc&offset=5")).toBe("/v1/commands/c/stream?access_token=[REDACTED]&offset=5");
    // A server never receives a fragment: `#frag` is part of the value as the stream reads it.
    expect(redactUrl("/x?offset=1&access%5Ftoken=abc#frag")).toBe("/x?offset=1&access%5Ftoken=[REDACTED]");
    expect(redactUrl("/x?access_token")).toBe("/x?access_token=[REDACTED]");
    expect(redactUrl("/x?a=1&access_token=1&access_token=2")).toBe("/x?a=1&access_token=[REDACTED]&access_token=[REDACTED]");
    expect(redactUrl("/x/y")).toBe("/x/y");
  });
});
