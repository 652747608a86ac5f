import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { ExecuteRequestSchema } from "../../src/gen/fleetrun/v1/command_pb.js";
import { bounded } from "../../src/db/audit-store.ts";
import { nulField } from "../../src/rpc/nul-guard.ts";

describe("NUL in a request", () => {
  it("names the first field that holds one, map keys and values included", () => {
    expect(nulField(create(ExecuteRequestSchema, { machineId: "mach_1", command: "true" }))).toBeNull();
    expect(nulField(create(ExecuteRequestSchema, { machineId: "mach\u00001", command: "true" }))).toBe("machine_id");
    expect(nulField(create(ExecuteRequestSchema, { machineId: "m", command: "true", env: { A: "x\u0000" } }))).toBe("env.A");
    expect(nulField(create(ExecuteRequestSchema, { machineId: "m", command: "true", env: { "A\u0000": "x" } }))).toBe("env");
    expect(nulField(create(ExecuteRequestSchema, { machineId: "m", command: "true", cwd: "/\u0000" }))).toBe("cwd");
  });

  it("never reaches the audit store, whose PostgreSQL text cannot hold it", () => {
    const e = bounded({ actor: "a", action: "CommandService.GetCommand", outcome: "denied", commandId: "cmd_x\u0000y", detail: "d\u0000" });
    expect(e.commandId).toBe("cmd_x\uFFFDy");
    expect(e.detail).toBe("d\uFFFD");
  });
});
