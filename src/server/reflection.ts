/**
 * gRPC server reflection (`grpc.reflection.v1.ServerReflection`, and the older
 * `grpc.reflection.v1alpha` that some clients still ask for) served through
 * Connect. Tools such as `buf curl`, grpcurl and Postman use it to discover
 * services and message shapes without local .proto files.
 *
 * Descriptors come from the generated code (`GenFile.proto`), so what is
 * served is exactly what the server was built with.
 */
import { clone, create, fromBinary, isFieldSet, toBinary } from "@bufbuild/protobuf";
import type { DescFile, DescMessage, DescMethod, DescService } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { createFileRegistry } from "@bufbuild/protobuf";
import { FieldDescriptorProtoSchema, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { DescriptorProto, FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import type { ConnectRouter } from "@connectrpc/connect";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  ServerReflectionResponseSchema,
  file_grpc_reflection_v1_reflection,
} from "../gen/grpc/reflection/v1/reflection_pb.js";
import type { ServerReflectionRequest, ServerReflectionResponse } from "../gen/grpc/reflection/v1/reflection_pb.js";

export interface ReflectionOptions {
  /**
   * Services to advertise. By default: every service registered on the router
   * (read at the first reflection request, so registration order does not matter).
   */
  services?: readonly DescService[] | undefined;
  /** Extra files to make resolvable (e.g. files that only declare extensions). @default [] */
  files?: readonly DescFile[] | undefined;
  /** Also serve `grpc.reflection.v1alpha.ServerReflection`. @default true */
  v1alpha?: boolean | undefined;
}

/** Lookup tables over a closed set of files. */
interface Index {
  services: string[];
  /** File name (e.g. "fleetrun/v1/command.proto") → file. */
  byName: Map<string, DescFile>;
  /** Fully-qualified symbol (message, enum, service, method, extension) → file. */
  bySymbol: Map<string, DescFile>;
  /** "extendee:number" → file declaring that extension. */
  byExtension: Map<string, DescFile>;
  /** Message type name → numbers of its known extensions. */
  extensionNumbers: Map<string, number[]>;
  /** File → serialized FileDescriptorProto. */
  serialized: Map<DescFile, Uint8Array>;
}

/**
 * Registers the reflection service(s) on `router`. The reflection service
 * lists itself, and resolves files of every advertised service plus their
 * transitive imports.
 */
export function registerReflection(router: ConnectRouter, options: ReflectionOptions = {}): void {
  const alpha = options.v1alpha === false ? undefined : createV1alphaService();
  let index: Index | undefined;

  function getIndex(): Index {
    if (index !== undefined) return index;
    const services = new Map<string, DescService>();
    const given = options.services ?? router.handlers.map((h) => h.service);
    for (const service of given) services.set(service.typeName, service);
    services.set(ServerReflection.typeName, ServerReflection);
    if (alpha !== undefined) services.set(alpha.typeName, alpha);
    const roots = [...services.values()].map((s) => s.file).concat(options.files ?? []);
    index = buildIndex([...services.keys()].sort(), roots);
    return index;
  }

  async function* serverReflectionInfo(
    requests: AsyncIterable<ServerReflectionRequest>,
  ): AsyncGenerator<ServerReflectionResponse> {
    for await (const request of requests) {
      yield answer(getIndex(), request);
    }
  }

  router.service(ServerReflection, { serverReflectionInfo });

  if (alpha !== undefined) {
    const method = alpha.methods[0]!;
    const input = method.input;
    const output = method.output;
    // v1alpha has the same messages with the same field numbers: translate
    // through the wire format and reuse the v1 handler.
    async function* alphaInfo(requests: AsyncIterable<unknown>): AsyncGenerator<unknown> {
      async function* translated(): AsyncGenerator<ServerReflectionRequest> {
        for await (const request of requests) {
          yield fromBinary(ServerReflectionRequestSchema, toBinary(input, request as never));
        }
      }
      for await (const response of serverReflectionInfo(translated())) {
        yield fromBinary(output, toBinary(ServerReflectionResponseSchema, response));
      }
    }
    router.rpc(method as DescMethod & { methodKind: "bidi_streaming" }, alphaInfo as never);
  }
}

function answer(index: Index, request: ServerReflectionRequest): ServerReflectionResponse {
  const response = create(ServerReflectionResponseSchema, {
    validHost: request.host,
    originalRequest: request,
  });
  const files = (file: DescFile | undefined, what: string): void => {
    if (file === undefined) {
      response.messageResponse = notFound(what);
      return;
    }
    response.messageResponse = {
      case: "fileDescriptorResponse",
      value: { $typeName: "grpc.reflection.v1.FileDescriptorResponse", fileDescriptorProto: withDependencies(index, file) },
    };
  };
  const req = request.messageRequest;
  switch (req.case) {
    case "listServices":
      response.messageResponse = {
        case: "listServicesResponse",
        value: {
          $typeName: "grpc.reflection.v1.ListServiceResponse",
          service: index.services.map((name) => ({ $typeName: "grpc.reflection.v1.ServiceResponse", name })),
        },
      };
      break;
    case "fileByFilename":
      files(index.byName.get(req.value), `file ${JSON.stringify(req.value)} not found`);
      break;
    case "fileContainingSymbol":
      files(index.bySymbol.get(stripDot(req.value)), `symbol ${JSON.stringify(req.value)} not found`);
      break;
    case "fileContainingExtension": {
      const key = `${stripDot(req.value.containingType)}:${req.value.extensionNumber}`;
      files(
        index.byExtension.get(key),
        `extension ${req.value.extensionNumber} of ${JSON.stringify(req.value.containingType)} not found`,
      );
      break;
    }
    case "allExtensionNumbersOfType": {
      const typeName = stripDot(req.value);
      if (!index.bySymbol.has(typeName)) {
        response.messageResponse = notFound(`type ${JSON.stringify(req.value)} not found`);
        break;
      }
      response.messageResponse = {
        case: "allExtensionNumbersResponse",
        value: {
          $typeName: "grpc.reflection.v1.ExtensionNumberResponse",
          baseTypeName: typeName,
          extensionNumber: index.extensionNumbers.get(typeName) ?? [],
        },
      };
      break;
    }
    default:
      response.messageResponse = {
        case: "errorResponse",
        value: {
          $typeName: "grpc.reflection.v1.ErrorResponse",
          errorCode: Code.Unimplemented,
          errorMessage: "unsupported reflection request",
        },
      };
  }
  return response;
}

function notFound(message: string): ServerReflectionResponse["messageResponse"] {
  return {
    case: "errorResponse",
    value: { $typeName: "grpc.reflection.v1.ErrorResponse", errorCode: Code.NotFound, errorMessage: message },
  };
}

function stripDot(name: string): string {
  return name.startsWith(".") ? name.slice(1) : name;
}

/** The file itself first, then every file it imports, transitively, each once. */
function withDependencies(index: Index, file: DescFile): Uint8Array[] {
  const out: Uint8Array[] = [];
  const seen = new Set<DescFile>();
  const visit = (f: DescFile): void => {
    if (seen.has(f)) return;
    seen.add(f);
    out.push(index.serialized.get(f) ?? toBinary(FileDescriptorProtoSchema, f.proto));
    for (const dep of f.dependencies) visit(dep);
  };
  visit(file);
  return out;
}

function buildIndex(services: string[], roots: readonly DescFile[]): Index {
  const index: Index = {
    services,
    byName: new Map(),
    bySymbol: new Map(),
    byExtension: new Map(),
    extensionNumbers: new Map(),
    serialized: new Map(),
  };
  const visit = (file: DescFile): void => {
    if (index.serialized.has(file)) return;
    index.serialized.set(file, toBinary(FileDescriptorProtoSchema, file.proto));
    index.byName.set(file.proto.name, file);
    for (const type of nestedTypes(file)) {
      index.bySymbol.set(type.typeName, file);
      if (type.kind === "service") {
        for (const method of type.methods) index.bySymbol.set(`${type.typeName}.${method.name}`, file);
      } else if (type.kind === "extension") {
        const extendee: DescMessage = type.extendee;
        index.byExtension.set(`${extendee.typeName}:${type.number}`, file);
        const numbers = index.extensionNumbers.get(extendee.typeName) ?? [];
        numbers.push(type.number);
        index.extensionNumbers.set(extendee.typeName, numbers);
      }
    }
    for (const dep of file.dependencies) visit(dep);
  };
  for (const file of roots) visit(file);
  return index;
}

/**
 * `grpc.reflection.v1alpha` is the v1 file under another package name: build
 * its descriptor from the v1 one instead of vendoring a second .proto.
 */
function createV1alphaService(): DescService {
  const proto: FileDescriptorProto = clone(FileDescriptorProtoSchema, file_grpc_reflection_v1_reflection.proto);
  const from = ".grpc.reflection.v1.";
  const to = ".grpc.reflection.v1alpha.";
  proto.name = "grpc/reflection/v1alpha/reflection.proto";
  proto.package = "grpc.reflection.v1alpha";
  proto.options = undefined;
  const rename = (name: string): string => (name.startsWith(from) ? to + name.slice(from.length) : name);
  // Only message and enum fields have a type_name: assigning even "" to a
  // scalar field's would set it, and strict descriptor pools (protoc, Python)
  // reject a scalar field that has one.
  const renameFields = (message: DescriptorProto): void => {
    for (const field of message.field) {
      if (isFieldSet(field, FieldDescriptorProtoSchema.field.typeName)) field.typeName = rename(field.typeName);
    }
    for (const nested of message.nestedType) renameFields(nested);
  };
  for (const message of proto.messageType) renameFields(message);
  for (const service of proto.service) {
    for (const method of service.method) {
      method.inputType = rename(method.inputType);
      method.outputType = rename(method.outputType);
    }
  }
  const registry = createFileRegistry(proto, () => undefined);
  const service = registry.getService("grpc.reflection.v1alpha.ServerReflection");
  if (service === undefined) throw new Error("grpc.reflection.v1alpha descriptor did not build");
  return service;
}
