import { execFile } from "node:child_process";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import path from "node:path";
import { promisify } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Transport } from "@connectrpc/connect";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CommandSchema, CommandService, GetCommandRequestSchema } from "../../src/gen/fleetrun/v1/command_pb.js";
import type { Command, GetCommandRequest } from "../../src/gen/fleetrun/v1/command_pb.js";
import {
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus,
  HealthCheckResponseSchema,
  Health,
} from "../../src/gen/grpc/health/v1/health_pb.js";
import type { HealthCheckRequest, HealthCheckResponse } from "../../src/gen/grpc/health/v1/health_pb.js";
import {
  ExtensionRequestSchema,
  ServerReflection,
  ServerReflectionRequestSchema,
} from "../../src/gen/grpc/reflection/v1/reflection_pb.js";
import type {
  ServerReflectionRequest,
  ServerReflectionResponse,
} from "../../src/gen/grpc/reflection/v1/reflection_pb.js";
import { createHealthService } from "../../src/server/health.ts";
import type { HealthService } from "../../src/server/health.ts";
import { createFastify, listenOnePort } from "../../src/server/one-port-server.ts";
import type { ListeningServer } from "../../src/server/one-port-server.ts";
import { registerReflection } from "../../src/server/reflection.ts";

const run = promisify(execFile);
const BUF = path.resolve("node_modules/.bin/buf");

let server: ListeningServer;
let health: HealthService;
const grpcClients: grpc.Client[] = [];

beforeAll(async () => {
  health = createHealthService();
  health.setStatus("fleetrun.v1.CommandService", "SERVING");
  const app = createFastify();
  app.get("/healthz", async () => ({ ok: true }));
  await app.register(fastifyConnectPlugin, {
    routes(router) {
      health.register(router);
      router.service(CommandService, {
        getCommand: (req) => create(CommandSchema, { id: req.id, command: "uptime", machineId: "mach_1" }),
      });
      registerReflection(router);
    },
  });
  server = await listenOnePort(app, { host: "127.0.0.1", port: 0 });
});

afterAll(async () => {
  for (const client of grpcClients) client.close();
  await server?.close(1_000);
});

function grpcClient(): grpc.Client {
  const client = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
  grpcClients.push(client);
  return client;
}

function grpcUnary<I, O>(
  client: grpc.Client,
  method: string,
  serialize: (input: I) => Uint8Array,
  deserialize: (bytes: Uint8Array) => O,
  input: I,
): Promise<O> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      method,
      (value: I) => Buffer.from(serialize(value)),
      (bytes: Buffer) => deserialize(bytes),
      input,
      (err, value) => (err ? reject(err) : resolve(value as O)),
    );
  });
}

function healthCheck(client: grpc.Client, service: string): Promise<HealthCheckResponse> {
  return grpcUnary<HealthCheckRequest, HealthCheckResponse>(
    client,
    "/grpc.health.v1.Health/Check",
    (m) => toBinary(HealthCheckRequestSchema, m),
    (b) => fromBinary(HealthCheckResponseSchema, b),
    create(HealthCheckRequestSchema, { service }),
  );
}

describe("one port, every protocol", () => {
  it("reports the real port when asked for port 0", () => {
    expect(server.port).toBeGreaterThan(0);
    expect(server.url).toBe(`http://127.0.0.1:${server.port}`);
  });

  it("serves a plain fastify route over HTTP/1.1", async () => {
    const res = await fetch(`${server.url}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true });
  });

  it("serves the same fastify route over h2c", async () => {
    const session = http2.connect(server.url);
    try {
      const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const stream = session.request({ ":path": "/healthz" });
        let status = 0;
        let body = "";
        stream.on("response", (headers) => (status = Number(headers[":status"])));
        stream.setEncoding("utf8");
        stream.on("data", (chunk: string) => (body += chunk));
        stream.on("end", () => resolve({ status, body }));
        stream.on("error", reject);
      });
      expect(status).toBe(200);
      expect(JSON.parse(body)).toEqual({ ok: true });
    } finally {
      session.close();
    }
  });

  it("recognises the HTTP/2 preface even when it arrives in pieces", async () => {
    const socket = net.connect(server.port, "127.0.0.1");
    socket.setNoDelay(true);
    socket.on("error", () => {});
    try {
      await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
      const received: Buffer[] = [];
      socket.on("data", (c: Buffer) => received.push(c));
      socket.write("PRI * HTTP/2.0\r\n");
      await new Promise((resolve) => setTimeout(resolve, 50)); // a separate TCP segment, not synchronisation
      socket.write("\r\nSM\r\n\r\n");
      socket.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])); // empty SETTINGS frame
      const deadline = Date.now() + 5_000;
      while (Buffer.concat(received).length < 9 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      const head = Buffer.concat(received);
      expect(head.length).toBeGreaterThanOrEqual(9);
      expect(head[3]).toBe(4); // the server's first frame is its SETTINGS
    } finally {
      socket.destroy();
    }
  });

  it("sends a request that merely starts like the preface to HTTP/1.1", async () => {
    const res = await fetch(`${server.url}/healthz`, { method: "POST", body: "x" });
    expect(res.status).toBe(404);
    expect(res.headers.get("content-type")).toContain("application/json");
  });

  const transports: [string, () => Transport][] = [
    ["Connect over HTTP/1.1", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })],
    ["Connect over h2c", () => createConnectTransport({ baseUrl: server.url, httpVersion: "2" })],
    ["gRPC-Web over HTTP/1.1", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" })],
    ["gRPC over h2c (connect-node)", () => createGrpcTransport({ baseUrl: server.url })],
  ];
  for (const [name, transport] of transports) {
    it(`answers a unary call: ${name}`, async () => {
      const client = createClient(CommandService, transport());
      const command = await client.getCommand({ id: "cmd_42" });
      expect(command.id).toBe("cmd_42");
      expect(command.command).toBe("uptime");
      expect(command.machineId).toBe("mach_1");
    });
  }

  it("answers a unary call from a @grpc/grpc-js client over h2c", async () => {
    const command = await grpcUnary<GetCommandRequest, Command>(
      grpcClient(),
      "/fleetrun.v1.CommandService/GetCommand",
      (m) => toBinary(GetCommandRequestSchema, m),
      (b) => fromBinary(CommandSchema, b),
      create(GetCommandRequestSchema, { id: "cmd_7" }),
    );
    expect(command.id).toBe("cmd_7");
    expect(command.command).toBe("uptime");
  });

  it("keeps HTTP/1.1 keep-alive working across requests on one socket", async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const ports: number[] = [];
      for (let i = 0; i < 3; i++) {
        await new Promise<void>((resolve, reject) => {
          http
            .get(`${server.url}/healthz`, { agent }, (res) => {
              ports.push(res.socket.localPort ?? -1);
              res.resume();
              res.on("end", resolve);
            })
            .on("error", reject);
        });
      }
      expect(new Set(ports).size).toBe(1);
    } finally {
      agent.destroy();
    }
  });
});

describe("grpc.health.v1.Health", () => {
  it("reports SERVING to a grpc-js client, then NOT_SERVING after setStatus", async () => {
    const client = grpcClient();
    expect((await healthCheck(client, "")).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    expect((await healthCheck(client, "fleetrun.v1.CommandService")).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
    health.setStatus("fleetrun.v1.CommandService", "NOT_SERVING");
    try {
      expect((await healthCheck(client, "fleetrun.v1.CommandService")).status).toBe(
        HealthCheckResponse_ServingStatus.NOT_SERVING,
      );
      expect((await healthCheck(client, "")).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    } finally {
      health.setStatus("fleetrun.v1.CommandService", "SERVING");
    }
  });

  it("answers NOT_FOUND for an unknown service", async () => {
    const err = await healthCheck(grpcClient(), "no.such.Service").then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it("streams status changes to Watch", async () => {
    const client = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    const abort = new AbortController();
    const name = "watched.Service";
    const stream = client.watch({ service: name }, { signal: abort.signal });
    const iterator = stream[Symbol.asyncIterator]();
    try {
      const first = await iterator.next();
      expect(first.value?.status).toBe(HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN);
      health.setStatus(name, "SERVING");
      expect((await iterator.next()).value?.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      health.setStatus(name, "SERVING"); // no change: no message
      health.setStatus(name, "NOT_SERVING");
      expect((await iterator.next()).value?.status).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);
    } finally {
      abort.abort();
      await iterator.return?.().catch(() => undefined);
    }
  });

  it("needs no extra route: Check over Connect JSON on HTTP/1.1 works with curl-like fetch", async () => {
    const res = await fetch(`${server.url}/grpc.health.v1.Health/Check`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ service: "" }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: "SERVING" });
  });

  it("maps an unknown service to NOT_FOUND for Connect clients too", async () => {
    const client = createClient(Health, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const err = await client.check({ service: "nope" }).catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.NotFound);
  });
});

describe("server reflection, seen by buf curl", () => {
  const target = (): string => `http://127.0.0.1:${server.port}`;

  it("lists the fleetrun, health and reflection services (v1)", async () => {
    const { stdout } = await run(BUF, [
      "curl",
      "--list-services",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      target(),
    ]);
    const services = stdout.trim().split("\n").sort();
    expect(services).toEqual(
      [
        "fleetrun.v1.CommandService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
      ].sort(),
    );
  });

  it("lists the methods of every service (file_containing_symbol)", async () => {
    const { stdout } = await run(BUF, [
      "curl",
      "--list-methods",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      target(),
    ]);
    const methods = stdout.trim().split("\n");
    expect(methods).toContain("grpc.health.v1.Health/Watch");
    expect(methods).toContain("grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
    expect(methods).toContain("fleetrun.v1.CommandService/GetCommand");
    expect(methods).toContain("fleetrun.v1.CommandService/Execute");
    expect(methods).toContain("fleetrun.v1.CommandService/WatchCommand");
  });

  it("gives buf curl enough schema to call a method from JSON (transitive imports resolve)", async () => {
    const { stdout } = await run(BUF, [
      "curl",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "-d",
      JSON.stringify({ id: "cmd_9" }),
      `${target()}/fleetrun.v1.CommandService/GetCommand`,
    ]);
    expect(JSON.parse(stdout)).toMatchObject({ id: "cmd_9", command: "uptime", machineId: "mach_1" });
  });

  it("also answers the v1alpha reflection protocol", async () => {
    const { stdout } = await run(BUF, [
      "curl",
      "--list-services",
      "--reflect-protocol",
      "grpc-v1alpha",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      target(),
    ]);
    expect(stdout.trim().split("\n")).toContain("fleetrun.v1.CommandService");
  });
});

describe("server reflection protocol details", () => {
  async function ask(
    requests: ServerReflectionRequest["messageRequest"][],
    service: typeof ServerReflection = ServerReflection,
  ): Promise<ServerReflectionResponse[]> {
    const client = createClient(service, createGrpcTransport({ baseUrl: server.url }));
    async function* input(): AsyncGenerator<MessageInitShape<typeof ServerReflectionRequestSchema>> {
      for (const messageRequest of requests) yield { host: "h", messageRequest };
    }
    const out: ServerReflectionResponse[] = [];
    for await (const response of client.serverReflectionInfo(input())) out.push(response);
    return out;
  }

  function fileNames(response: ServerReflectionResponse | undefined): string[] {
    if (response?.messageResponse.case !== "fileDescriptorResponse") {
      throw new Error(`expected files, got ${response?.messageResponse.case}`);
    }
    return response.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name);
  }

  it("answers each request of one stream in order, with transitive imports", async () => {
    const responses = await ask([
      { case: "fileContainingSymbol", value: "fleetrun.v1.CommandService.GetCommand" },
      { case: "fileByFilename", value: "grpc/health/v1/health.proto" },
      { case: "fileContainingSymbol", value: "fleetrun.v1.Command" },
    ]);
    expect(responses).toHaveLength(3);
    const first = fileNames(responses[0]);
    expect(first[0]).toBe("fleetrun/v1/command.proto");
    expect(first).toEqual(
      expect.arrayContaining([
        "google/api/annotations.proto",
        "google/api/http.proto",
        "google/protobuf/descriptor.proto",
        "google/protobuf/timestamp.proto",
        "fleetrun/v1/options.proto",
      ]),
    );
    expect(new Set(first).size).toBe(first.length);
    expect(fileNames(responses[1])).toEqual(["grpc/health/v1/health.proto"]);
    expect(fileNames(responses[2])[0]).toBe("fleetrun/v1/command.proto");
    expect(responses[0]?.originalRequest?.messageRequest.case).toBe("fileContainingSymbol");
    expect(responses[0]?.validHost).toBe("h");
  });

  it("answers NOT_FOUND for unknown files and symbols without ending the stream", async () => {
    const responses = await ask([
      { case: "fileByFilename", value: "nope.proto" },
      { case: "fileContainingSymbol", value: "no.Such" },
      { case: "listServices", value: "" },
    ]);
    expect(responses.map((r) => r.messageResponse.case)).toEqual([
      "errorResponse",
      "errorResponse",
      "listServicesResponse",
    ]);
    for (const r of responses.slice(0, 2)) {
      expect(r.messageResponse.case === "errorResponse" && r.messageResponse.value.errorCode).toBe(Code.NotFound);
    }
  });

  it("resolves extensions (google.api.http on MethodOptions)", async () => {
    const responses = await ask([
      { case: "allExtensionNumbersOfType", value: "google.protobuf.MethodOptions" },
      {
        case: "fileContainingExtension",
        value: create(ExtensionRequestSchema, { containingType: "google.protobuf.MethodOptions", extensionNumber: 72295728 }),
      },
    ]);
    const numbers = responses[0]?.messageResponse;
    expect(numbers?.case).toBe("allExtensionNumbersResponse");
    expect(numbers?.case === "allExtensionNumbersResponse" && numbers.value.extensionNumber).toContain(72295728);
    expect(fileNames(responses[1])[0]).toBe("google/api/annotations.proto");
  });
});
