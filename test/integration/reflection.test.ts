/**
 * gRPC server reflection (v1 and v1alpha) over a real grpc-js client: every
 * served file descriptor passes the checks protoc's descriptor validation
 * makes on fields, loads into a fresh registry, and describes exactly the
 * messages, enums and services the server was generated from.
 */
import * as grpc from "@grpc/grpc-js";
import { create, createFileRegistry, fromBinary, isFieldSet, toBinary } from "@bufbuild/protobuf";
import type { DescFile, DescMessage, FileRegistry } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import {
  FieldDescriptorProto_Type,
  FieldDescriptorProtoSchema,
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
  type DescriptorProto,
  type FileDescriptorProto,
} from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuditService } from "../../src/gen/fleetrun/v1/audit_pb.js";
import { TokenService } from "../../src/gen/fleetrun/v1/token_pb.js";
import { CommandService } from "../../src/gen/fleetrun/v1/command_pb.js";
import { MachineService } from "../../src/gen/fleetrun/v1/machine_pb.js";
import { Health } from "../../src/gen/grpc/health/v1/health_pb.js";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  ServerReflectionResponseSchema,
  type ServerReflectionResponse,
} from "../../src/gen/grpc/reflection/v1/reflection_pb.js";
import { startService, type TestService } from "../fixtures/service.ts";

type RequestInit = Parameters<typeof toBinary<typeof ServerReflectionRequestSchema>>[1];

/** One request on a fresh reflection stream (v1 or v1alpha: same messages, same field numbers). */
function reflect(client: grpc.Client, pkg: "v1" | "v1alpha", request: Omit<RequestInit, "$typeName">): Promise<ServerReflectionResponse> {
  return new Promise((resolve, reject) => {
    const call = client.makeBidiStreamRequest(
      `/grpc.reflection.${pkg}.ServerReflection/ServerReflectionInfo`,
      (x: RequestInit) => Buffer.from(toBinary(ServerReflectionRequestSchema, x)),
      (b: Buffer) => fromBinary(ServerReflectionResponseSchema, b),
      new grpc.Metadata(),
    );
    call.on("data", (r: ServerReflectionResponse) => {
      resolve(r);
      call.end();
    });
    call.on("error", reject);
    call.write({ $typeName: "grpc.reflection.v1.ServerReflectionRequest", ...request } as RequestInit);
  });
}

/** What protoc's DescriptorBuilder checks about each field, as messages (empty: valid). */
function fieldProblems(file: FileDescriptorProto): string[] {
  const problems: string[] = [];
  const typed = new Set([FieldDescriptorProto_Type.MESSAGE, FieldDescriptorProto_Type.ENUM, FieldDescriptorProto_Type.GROUP]);
  const visit = (message: DescriptorProto, scope: string): void => {
    const fields = [...message.field, ...message.extension];
    for (const f of fields) {
      const where = `${file.name}: ${scope}.${f.name}`;
      const hasTypeName = isFieldSet(f, FieldDescriptorProtoSchema.field.typeName);
      if (!isFieldSet(f, FieldDescriptorProtoSchema.field.type) && !hasTypeName) problems.push(`${where}: neither type nor type_name`);
      if (typed.has(f.type) && (!hasTypeName || !f.typeName.startsWith("."))) problems.push(`${where}: message/enum field without a resolved type_name`);
      if (isFieldSet(f, FieldDescriptorProtoSchema.field.type) && !typed.has(f.type) && hasTypeName) {
        problems.push(`${where}: messages can't have fields of scalar type with a type_name (${JSON.stringify(f.typeName)})`);
      }
      if (isFieldSet(f, FieldDescriptorProtoSchema.field.oneofIndex) && (f.oneofIndex < 0 || f.oneofIndex >= message.oneofDecl.length)) {
        problems.push(`${where}: oneof_index out of range`);
      }
      if (f.proto3Optional && !isFieldSet(f, FieldDescriptorProtoSchema.field.oneofIndex)) problems.push(`${where}: proto3 optional without its oneof`);
      if (f.number < 1 || f.number > 536_870_911) problems.push(`${where}: bad field number`);
    }
    for (const nested of message.nestedType) visit(nested, `${scope}.${nested.name}`);
  };
  for (const m of file.messageType) visit(m, file.package === "" ? m.name : `${file.package}.${m.name}`);
  for (const e of file.extension) {
    if (isFieldSet(e, FieldDescriptorProtoSchema.field.type) && ![FieldDescriptorProto_Type.MESSAGE, FieldDescriptorProto_Type.ENUM, FieldDescriptorProto_Type.GROUP].includes(e.type) && isFieldSet(e, FieldDescriptorProtoSchema.field.typeName)) {
      problems.push(`${file.name}: extension ${e.name} of scalar type has a type_name`);
    }
  }
  return problems;
}

/** A comparable outline of a file's types: every field's number, kind and type, every method's types. */
function outline(file: DescFile, rename: (n: string) => string = (n) => n): unknown[] {
  const out: unknown[] = [];
  for (const t of nestedTypes(file)) {
    switch (t.kind) {
      case "message":
        out.push({
          message: rename(t.typeName),
          fields: t.fields.map((f) => ({
            name: f.name,
            number: f.number,
            kind: f.fieldKind,
            scalar: f.scalar ?? null,
            message: f.message ? rename(f.message.typeName) : null,
            enum: f.enum ? rename(f.enum.typeName) : null,
            presence: f.presence,
            oneof: f.oneof?.name ?? null,
            json: f.jsonName,
          })),
        });
        break;
      case "enum":
        out.push({ enum: rename(t.typeName), values: t.values.map((v) => [v.name, v.number]) });
        break;
      case "service":
        out.push({ service: rename(t.typeName), methods: t.methods.map((m) => [m.name, m.methodKind, rename(m.input.typeName), rename(m.output.typeName)]) });
        break;
      case "extension":
        out.push({ extension: t.typeName, extendee: t.extendee.typeName, number: t.number });
        break;
    }
  }
  return out;
}

/** The generated files the server was built from, by name, with their imports. */
function generatedFiles(): Map<string, DescFile> {
  const out = new Map<string, DescFile>();
  const visit = (f: DescFile): void => {
    if (out.has(f.proto.name)) return;
    out.set(f.proto.name, f);
    f.dependencies.forEach(visit);
  };
  for (const s of [AuditService, CommandService, MachineService, TokenService, Health, ServerReflection]) visit(s.file);
  return out;
}

describe("gRPC server reflection", () => {
  let svc: TestService;
  let client: grpc.Client;
  beforeAll(async () => {
    svc = await startService();
    client = new grpc.Client(svc.url.replace(/^http:\/\//, ""), grpc.credentials.createInsecure());
  });
  afterAll(async () => {
    client?.close();
    await svc?.close();
  });

  /** Every file served for every listed service, by name. */
  async function servedFiles(pkg: "v1" | "v1alpha"): Promise<{ services: string[]; files: Map<string, FileDescriptorProto> }> {
    const list = await reflect(client, pkg, { host: "", messageRequest: { case: "listServices", value: "" } });
    expect(list.messageResponse.case).toBe("listServicesResponse");
    const services = list.messageResponse.case === "listServicesResponse" ? list.messageResponse.value.service.map((s) => s.name) : [];
    const files = new Map<string, FileDescriptorProto>();
    for (const name of services) {
      const r = await reflect(client, pkg, { host: "", messageRequest: { case: "fileContainingSymbol", value: name } });
      expect(r.messageResponse.case, name).toBe("fileDescriptorResponse");
      if (r.messageResponse.case !== "fileDescriptorResponse") continue;
      for (const bytes of r.messageResponse.value.fileDescriptorProto) {
        const fdp = fromBinary(FileDescriptorProtoSchema, bytes);
        files.set(fdp.name, fdp);
      }
    }
    return { services, files };
  }

  for (const pkg of ["v1", "v1alpha"] as const) {
    it(`serves over ${pkg} descriptors that a strict pool accepts and that match the generated ones`, async () => {
      const { services, files } = await servedFiles(pkg);
      expect(services).toEqual(
        expect.arrayContaining(["fleetrun.v1.CommandService", "fleetrun.v1.MachineService", "fleetrun.v1.TokenService", "fleetrun.v1.AuditService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]),
      );
      expect(files.has("grpc/reflection/v1alpha/reflection.proto")).toBe(true);

      for (const fdp of files.values()) expect(fieldProblems(fdp), fdp.name).toEqual([]);

      // A fresh registry from the served files alone: every import resolves.
      // (A FileDescriptorSet lists imports before their importers.)
      const ordered: FileDescriptorProto[] = [];
      const place = (name: string): void => {
        const f = files.get(name);
        expect(f, `import ${name} is served`).toBeDefined();
        if (f === undefined || ordered.includes(f)) return;
        f.dependency.forEach(place);
        ordered.push(f);
      };
      [...files.keys()].forEach(place);
      const registry: FileRegistry = createFileRegistry(create(FileDescriptorSetSchema, { file: ordered }));

      const generated = generatedFiles();
      for (const name of files.keys()) {
        const served = registry.getFile(name);
        expect(served, name).toBeDefined();
        if (name === "grpc/reflection/v1alpha/reflection.proto") {
          const v1 = generated.get("grpc/reflection/v1/reflection.proto")!;
          const rename = (n: string) => n.replace(/^grpc\.reflection\.v1\./, "grpc.reflection.v1alpha.");
          expect(outline(served!)).toEqual(outline(v1, rename));
          continue;
        }
        const gen = generated.get(name);
        expect(gen, `${name} is generated`).toBeDefined();
        expect(outline(served!), name).toEqual(outline(gen!));
      }
      // Message lookups a client makes work on the served registry.
      const execReq: DescMessage | undefined = registry.getMessage("fleetrun.v1.ExecuteRequest");
      expect(execReq?.fields.find((f) => f.name === "command")?.scalar).toBeDefined();
    });
  }
});
