import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  BatchRequestSchema,
  CommandEventSchema,
  CommandSchema,
  CommandStatus,
  ExecuteRequestSchema,
  ListMachineCommandsRequestSchema,
  OutputStream,
  StartCommandResponseSchema,
} from "../../src/gen/fleetrun/v1/command_pb.js";
import { decodeMessage, encodeMessage, RestInputError } from "../../src/rest/json-codec.ts";
import { reflect } from "@bufbuild/protobuf/reflect";
import { setFromText } from "../../src/rest/json-codec.ts";

function inputError(fn: () => unknown): RestInputError {
  try {
    fn();
  } catch (err) {
    if (err instanceof RestInputError) return err;
    throw err;
  }
  throw new Error("expected a RestInputError");
}

describe("REST JSON output", () => {
  it("renders every Command field: nulls for unset optionals and messages, numbers for int64, lowercase status", () => {
    const cmd = create(CommandSchema, {
      id: "cmd_1",
      machineId: "mach_1",
      command: "ls",
      timeout: 30000n,
      status: CommandStatus.TIMED_OUT,
      stdout: new Uint8Array([0x68, 0x69, 0xff, 0x0a]),
      stdoutBytes: 4n,
      createdAt: timestampFromMs(Date.UTC(2024, 0, 20, 15, 45, 0, 123)),
      signal: "SIGKILL",
    });
    const json = encodeMessage(CommandSchema, cmd);
    expect(Object.keys(json).sort()).toEqual(CommandSchema.fields.map((f) => f.name).sort());
    expect(json).toMatchObject({
      id: "cmd_1",
      cwd: null,
      env_keys: [],
      user: null,
      timeout: 30000,
      status: "timed_out",
      exit_code: null,
      signal: "SIGKILL",
      stdout: "hi\uFFFD\n",
      stderr: "",
      stdout_bytes: 4,
      stdout_truncated: false,
      duration: null,
      created_at: "2024-01-20T15:45:00.123Z",
      started_at: null,
      finished_at: null,
      error: null,
      batch_id: null,
      requested_by: "",
    });
  });

  it("renders the unspecified enum value as null and optional zero values as set", () => {
    const cmd = create(CommandSchema, { exitCode: 0, duration: 0n });
    const json = encodeMessage(CommandSchema, cmd);
    expect(json.status).toBeNull();
    expect(json.exit_code).toBe(0);
    expect(json.duration).toBe(0);
    expect(encodeMessage(StartCommandResponseSchema, create(StartCommandResponseSchema, { status: CommandStatus.QUEUED }))).toEqual({
      id: "",
      status: "queued",
    });
  });

  it("renders only the set member of a oneof, and nothing of an empty one", () => {
    const ev = create(CommandEventSchema, {
      event: { case: "output", value: { stream: OutputStream.STDERR, offset: 10n, data: new TextEncoder().encode("é") } },
    });
    expect(encodeMessage(CommandEventSchema, ev)).toEqual({ output: { stream: "stderr", offset: 10, data: "é" } });
    expect(encodeMessage(CommandEventSchema, create(CommandEventSchema, { event: { case: "skipped", value: 0n } }))).toEqual({ skipped: 0 });
    expect(encodeMessage(CommandEventSchema, create(CommandEventSchema))).toEqual({});
  });

  it("renders google.protobuf.Value as plain JSON and maps as objects", () => {
    const req = decodeMessage(BatchRequestSchema, { max_concurrency: "10%", max_errors: 3, selector: { labels: { env: "prod" } } });
    const json = encodeMessage(BatchRequestSchema, req);
    expect(json.max_concurrency).toBe("10%");
    expect(json.max_errors).toBe(3);
    expect(json.selector).toEqual({ labels: { env: "prod" } });
    expect(json.env).toEqual({});
    expect(json.machine_ids).toEqual([]);
  });
});

describe("REST JSON input", () => {
  it("decodes proto field names, int64 numbers, maps and null as unset", () => {
    const req = decodeMessage(ExecuteRequestSchema, { machine_id: "m", command: "c", env: { A: "1" }, timeout: 30000, cwd: null });
    expect(req.machineId).toBe("m");
    expect(req.timeout).toBe(30000n);
    expect(req.env).toEqual({ A: "1" });
    expect(req.cwd).toBeUndefined();
  });

  it.each([
    [{ machineId: "m" }, "machineId", /unknown field/],
    [{ machine_id: 5 }, "machine_id", /expected a string, got a number/],
    [{ timeout: "30000" }, "timeout", /expected an integer, got a string/],
    [{ timeout: 1.5 }, "timeout", /fractional/],
    [{ timeout: 2 ** 60 }, "timeout", /out of range/],
    [{ env: { A: 1 } }, "env", /expected a string, got a number/],
    [{ env: ["A"] }, "env", /expected a JSON object, got an array/],
    [{ env: { A: null } }, "env", /null/],
  ])("rejects %j naming the field", (body, field, message) => {
    const err = inputError(() => decodeMessage(ExecuteRequestSchema, body));
    expect(err.field).toBe(field);
    expect(err.message).toMatch(message);
  });

  it("rejects wrong types in nested messages and arrays with the full path", () => {
    expect(inputError(() => decodeMessage(BatchRequestSchema, { selector: { bogus: 1 } })).field).toBe("selector.bogus");
    expect(inputError(() => decodeMessage(BatchRequestSchema, { selector: { labels: { a: true } } })).field).toBe("selector.labels");
    expect(inputError(() => decodeMessage(BatchRequestSchema, { selector: "x" })).field).toBe("selector");
    expect(inputError(() => decodeMessage(BatchRequestSchema, { machine_ids: ["a", 2] })).field).toBe("machine_ids[1]");
    expect(inputError(() => decodeMessage(BatchRequestSchema, { machine_ids: "a" })).field).toBe("machine_ids");
  });

  it("decodes 32-bit integers with range checks", () => {
    expect(decodeMessage(ListMachineCommandsRequestSchema, { limit: 20 }).limit).toBe(20);
    expect(inputError(() => decodeMessage(ListMachineCommandsRequestSchema, { limit: 2 ** 31 })).field).toBe("limit");
    expect(decodeMessage(ListMachineCommandsRequestSchema, { limit: -(2 ** 31) }).limit).toBe(-(2 ** 31));
  });

  it("decodes enums by their REST name or full name and rejects others", () => {
    const ev = decodeMessage(CommandEventSchema, { output: { stream: "stderr", offset: 1, data: "x" } });
    expect(ev.event.case === "output" && ev.event.value.stream).toBe(OutputStream.STDERR);
    const full = decodeMessage(CommandEventSchema, { output: { stream: "OUTPUT_STREAM_STDOUT" } });
    expect(full.event.case === "output" && full.event.value.stream).toBe(OutputStream.STDOUT);
    const bad = inputError(() => decodeMessage(CommandEventSchema, { output: { stream: "stdin" } }));
    expect(bad.field).toBe("output.stream");
    expect(bad.message).toMatch(/stdout, stderr/);
    expect(inputError(() => decodeMessage(CommandEventSchema, { output: { stream: "unspecified" } })).field).toBe("output.stream");
    expect(inputError(() => decodeMessage(CommandEventSchema, { output: { stream: 1 } })).field).toBe("output.stream");
  });

  it("rejects two members of one oneof", () => {
    const err = inputError(() => decodeMessage(CommandEventSchema, { skipped: 3, end: {} }));
    expect(err.field).toBe("end");
  });

  it("decodes timestamps from RFC 3339 and rejects other strings", () => {
    const cmd = decodeMessage(CommandSchema, { created_at: "2024-01-20T15:45:00.5Z" });
    expect(encodeMessage(CommandSchema, cmd).created_at).toBe("2024-01-20T15:45:00.500Z");
    expect(inputError(() => decodeMessage(CommandSchema, { created_at: "yesterday" })).field).toBe("created_at");
    expect(inputError(() => decodeMessage(CommandSchema, { created_at: 1700000000 })).field).toBe("created_at");
  });

  it("never echoes the offending value in messages", () => {
    const secret = "hunter2-secret";
    for (const body of [{ machine_id: [secret] }, { timeout: secret }, { env: { K: [secret] } }]) {
      expect(inputError(() => decodeMessage(ExecuteRequestSchema, body)).message).not.toContain(secret);
    }
  });

  it("sets query and path text with integer, bool and repeated rules", () => {
    const r = reflect(ListMachineCommandsRequestSchema);
    setFromText(r, "limit", ["5"], "query parameter");
    setFromText(r, "since", ["2024-01-01T00:00:00Z"], "query parameter");
    expect(r.message).toMatchObject({ limit: 5, since: "2024-01-01T00:00:00Z" });
    expect(inputError(() => setFromText(reflect(ListMachineCommandsRequestSchema), "limit", ["5.0"], "q")).field).toBe("limit");
    expect(inputError(() => setFromText(reflect(ListMachineCommandsRequestSchema), "limit", ["1", "2"], "q")).message).toMatch(/more than once/);
    expect(inputError(() => setFromText(reflect(ListMachineCommandsRequestSchema), "nope", ["1"], "query parameter")).message).toMatch(
      /unknown query parameter/,
    );
    const b = reflect(BatchRequestSchema);
    setFromText(b, "machine_ids", ["a", "b"], "query parameter");
    expect(b.message).toMatchObject({ machineIds: ["a", "b"] });
  });
});
