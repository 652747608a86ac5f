/**
 * The OpenAPI 3.1 document of the REST API, derived from the same service
 * descriptors and `google.api.http` rules the transcoder serves
 * (`restBindings`) and the JSON shape its codec writes (`json-codec.ts`):
 *
 * - snake_case field names; on output every field is present (unset optional
 *   scalars and messages are `null`, enums `null` when unspecified), integers
 *   (64-bit too) are JSON numbers, `bytes` are UTF-8 text, timestamps RFC 3339;
 * - on input every field may be omitted or `null` (unset), unknown fields are
 *   rejected (`additionalProperties: false`);
 * - success bodies are `{"data": <message>}`, or the message itself when it has
 *   a top-level `data` field (lists, batches); errors are
 *   `{"error": {"code", "message", "field"?}}`;
 * - server-streaming routes answer NDJSON (one `{"data": …}` per line) or
 *   Server-Sent Events, and accept the token as `access_token`.
 *
 * The document is a pure function of the descriptors; comments come from an
 * optional lookup (descriptors built with source info carry them).
 */
import type { DescEnum, DescField, DescMessage, DescMethod, DescService } from "@bufbuild/protobuf";
import { ScalarType } from "@bufbuild/protobuf";
import { restBindings } from "./http-rule.ts";
import type { RestBinding } from "./http-rule.ts";
import { codeNames } from "../rpc/errors.ts";
import { enumValueRestName } from "./json-codec.ts";
import { ndjsonContentType, sseContentType } from "./stream-response.ts";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type JsonObject = { [k: string]: Json };

export interface OpenApiOptions {
  /** `info.title`. @default "fleetrun" */
  title?: string;
  /** `info.version`. @default "0.0.0" */
  version?: string;
  /** `info.description`. */
  description?: string;
  /** The leading comment of a service, method, message, field or enum, if known. */
  comments?: (desc: DescService | DescMethod | DescMessage | DescField | DescEnum) => string | undefined;
}

const TIMESTAMP = "google.protobuf.Timestamp";
const DURATION = "google.protobuf.Duration";
const VALUE = "google.protobuf.Value";
const STRUCT = "google.protobuf.Struct";
const LIST_VALUE = "google.protobuf.ListValue";
const FIELD_MASK = "google.protobuf.FieldMask";
const EMPTY = "google.protobuf.Empty";
const WRAPPERS = new Set(
  ["Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes"].map((n) => `google.protobuf.${n}Value`),
);
// FeatureSet_FieldPresence.IMPLICIT
const IMPLICIT = 2;

type Direction = "output" | "input";

/** Builds the OpenAPI 3.1 document of every REST binding of `services`. */
export function buildOpenApiDocument(services: readonly DescService[], opts: OpenApiOptions = {}): JsonObject {
  const b = new Builder(opts);
  const paths: Record<string, JsonObject> = {};
  const operationIds = new Set<string>();
  for (const service of services) {
    for (const binding of restBindings(service)) {
      const path = openApiPath(binding.template);
      const item = (paths[path] ??= {});
      let id = binding.method.name;
      for (let n = 2; operationIds.has(id); n++) id = `${binding.method.name}_${n}`;
      operationIds.add(id);
      item[binding.httpMethod.toLowerCase()] = b.operation(binding, id);
    }
  }
  const tags: Json[] = services
    .filter((s) => restBindings(s).length > 0)
    .map((s) => withDescription({ name: s.name }, opts.comments?.(s)));
  return {
    openapi: "3.1.0",
    info: withDescription({ title: opts.title ?? "fleetrun", version: opts.version ?? "0.0.0" }, opts.description),
    tags,
    security: [{ bearerAuth: [] }],
    paths: sortKeys(paths),
    components: {
      securitySchemes: {
        bearerAuth: { type: "http", scheme: "bearer", description: "`Authorization: Bearer <token>`" },
        accessToken: {
          type: "apiKey",
          in: "query",
          name: "access_token",
          description: "The token as a query parameter, for browsers' EventSource (streaming routes only; never logged).",
        },
      },
      schemas: sortKeys({ ...b.schemas, Error: errorSchema() }),
      responses: errorResponses(),
    },
  };
}

/** `/v1/commands/{id=*}` -> `/v1/commands/{id}`. */
function openApiPath(template: string): string {
  return template.replace(/\{([^}=]+)(?:=\*)?\}/g, "{$1}");
}

class Builder {
  readonly schemas: Record<string, Json> = {};
  /** Component name -> the message or enum it describes, per direction. */
  private readonly owners = new Map<string, string>();
  private readonly opts: OpenApiOptions;

  constructor(opts: OpenApiOptions) {
    this.opts = opts;
  }

  operation(binding: RestBinding, operationId: string): JsonObject {
    const m = binding.method;
    const comment = this.opts.comments?.(m);
    const streaming = m.methodKind === "server_streaming";
    const op: JsonObject = {
      operationId,
      tags: [m.parent.name],
      ...(comment === undefined ? {} : { summary: firstSentence(comment) }),
      ...(comment === undefined || firstSentence(comment) === comment.replace(/\s+/g, " ").trim() ? {} : { description: comment }),
      "x-fleetrun-rpc": `${m.parent.typeName}/${m.name}`,
    };
    const parameters: Json[] = [];
    const pathFields = binding.pathVariables.map((v) => v.fieldPath);
    for (const fieldPath of pathFields) {
      const field = resolveField(m.input, fieldPath);
      parameters.push(withDescription({ name: fieldPath, in: "path", required: true, schema: this.textSchema(field) }, this.opts.comments?.(field)));
    }
    if (binding.body !== "*") {
      const bound = [...pathFields, ...(binding.body === "" ? [] : [binding.body])];
      for (const { name, field } of queryFields(m.input, "", 0)) {
        if (bound.some((f) => f === name || name.startsWith(`${f}.`) || f.startsWith(`${name}.`))) continue;
        const schema = field.fieldKind === "list" ? { type: "array", items: this.textSchema(field) } : this.textSchema(field);
        parameters.push(withDescription({ name, in: "query", required: false, schema, ...(field.fieldKind === "list" ? { explode: true } : {}) }, this.opts.comments?.(field)));
      }
    }
    if (streaming) {
      parameters.push({
        name: "Last-Event-ID",
        in: "header",
        required: false,
        description: "Server-Sent Events: the `id` of the last event received; the stream resumes after it (sets `offset`).",
        schema: { type: "string", pattern: "^[0-9]+$" },
      });
    }
    if (parameters.length > 0) op.parameters = parameters;

    if (binding.body !== "") {
      let schema: Json;
      if (binding.body === "*") {
        schema = pathFields.length === 0 ? this.ref(m.input, "input") : this.messageSchema(m.input, "input", new Set(pathFields.filter((f) => !f.includes("."))));
      } else {
        schema = this.fieldSchema(resolveField(m.input, binding.body), "input");
      }
      op.requestBody = { required: binding.body !== "*", content: { "application/json": { schema } } };
    }

    const responses: JsonObject = {};
    const success = String(binding.successCode);
    if (streaming) {
      responses[success] = {
        description:
          "A live stream. NDJSON (default): one `{\"data\": <event>}` per line; a failure after the stream started ends it with an `{\"error\": …}` line. " +
          "Server-Sent Events (`Accept: text/event-stream`): `event:` is the event's kind, `data:` the same `{\"data\": <event>}`, `id:` the byte offset to resume from; a failure is an `error` event.",
        content: {
          [ndjsonContentType]: { schema: { oneOf: [envelope(this.ref(m.output, "output")), { $ref: "#/components/schemas/Error" }] } },
          [sseContentType]: { schema: { type: "string", description: "text/event-stream frames" } },
        },
      };
      op.security = [{ bearerAuth: [] }, { accessToken: [] }];
    } else {
      responses[success] = {
        description: successDescription(binding.successCode),
        content: { "application/json": { schema: this.responseSchema(binding) } },
      };
    }
    const errors = ["400", "401", "403", "404"];
    if (binding.httpMethod !== "GET") errors.push("409");
    if (binding.body !== "") errors.push("413", "415");
    errors.push("429");
    for (const code of errors) responses[code] = { $ref: `#/components/responses/${errorResponseNames[code]}` };
    responses.default = { $ref: "#/components/responses/Error" };
    op.responses = responses;
    return op;
  }

  private responseSchema(binding: RestBinding): Json {
    const out = binding.method.output;
    if (binding.responseBody !== "") {
      const field = out.fields.find((f) => f.name === binding.responseBody);
      if (field === undefined) throw new Error(`${binding.method.name}: no response field ${binding.responseBody}`);
      return envelope(this.fieldSchema(field, "output"));
    }
    return out.fields.some((f) => f.name === "data") ? this.ref(out, "output") : envelope(this.ref(out, "output"));
  }

  /** A `$ref` to the component of a message, created on first use. */
  ref(desc: DescMessage, dir: Direction): JsonObject {
    const name = this.componentName(desc.typeName, desc.name, dir);
    if (!(name in this.schemas)) {
      this.schemas[name] = {}; // placeholder: recursive messages
      this.schemas[name] = this.messageSchema(desc, dir, new Set());
    }
    return { $ref: `#/components/schemas/${name}` };
  }

  private enumRef(desc: DescEnum): JsonObject {
    const name = this.componentName(desc.typeName, desc.name, "output");
    if (!(name in this.schemas)) {
      const values = desc.values.filter((v) => !(v.number === 0 && v.name.endsWith("_UNSPECIFIED"))).map((v) => enumValueRestName(desc, v.name));
      this.schemas[name] = withDescription({ type: "string", enum: values }, this.opts.comments?.(desc));
    }
    return { $ref: `#/components/schemas/${name}` };
  }

  private componentName(typeName: string, shortName: string, dir: Direction): string {
    const key = `${dir}:${typeName}`;
    const candidates = dir === "output" ? [shortName, typeName.replace(/\./g, "_")] : [shortName, `${shortName}Input`, `${typeName.replace(/\./g, "_")}_Input`];
    for (const c of candidates) {
      const owner = this.owners.get(c);
      if (owner === undefined) {
        this.owners.set(c, key);
        return c;
      }
      if (owner === key) return c;
    }
    throw new Error(`no free schema name for ${typeName}`);
  }

  messageSchema(desc: DescMessage, dir: Direction, omit: ReadonlySet<string>): JsonObject {
    const special = wellKnown(desc);
    if (special !== undefined) return special;
    const fields = desc.fields.filter((f) => !omit.has(f.name));
    const comment = this.opts.comments?.(desc);
    // A message that is nothing but one oneof (an event): exactly one member.
    if (dir === "output" && desc.oneofs.length === 1 && fields.every((f) => f.oneof !== undefined) && fields.length > 0) {
      return withDescription(
        {
          oneOf: fields.map((f) => ({
            type: "object",
            title: f.name,
            properties: { [f.name]: this.fieldSchema(f, dir) },
            required: [f.name],
            additionalProperties: false,
          })),
        },
        comment,
      );
    }
    const properties: JsonObject = {};
    for (const f of fields) properties[f.name] = this.fieldSchema(f, dir);
    const schema: JsonObject = { type: "object", properties };
    if (dir === "output") {
      const required = fields.filter((f) => f.oneof === undefined).map((f) => f.name);
      if (required.length > 0) schema.required = required;
    } else {
      schema.additionalProperties = false;
    }
    return withDescription(schema, comment);
  }

  fieldSchema(field: DescField, dir: Direction): Json {
    const description = this.opts.comments?.(field);
    let schema: JsonObject;
    let nullable: boolean;
    switch (field.fieldKind) {
      case "list":
        schema = {
          type: "array",
          items: field.listKind === "scalar" ? scalarSchema(field.scalar) : field.listKind === "enum" ? this.enumRef(field.enum) : this.messageValue(field.message, dir),
        };
        nullable = dir === "input";
        break;
      case "map":
        schema = {
          type: "object",
          additionalProperties: field.mapKind === "scalar" ? scalarSchema(field.scalar) : field.mapKind === "enum" ? this.enumRef(field.enum) : this.messageValue(field.message, dir),
        };
        nullable = dir === "input";
        break;
      case "message":
        schema = this.messageValue(field.message, dir);
        nullable = true;
        break;
      case "enum":
        schema = this.enumRef(field.enum);
        nullable = true;
        break;
      case "scalar":
        schema = scalarSchema(field.scalar);
        nullable = dir === "input" || field.presence !== IMPLICIT;
        break;
    }
    if (field.oneof !== undefined && dir === "output") nullable = false;
    return withDescription(nullable ? orNull(schema) : schema, description);
  }

  private messageValue(desc: DescMessage, dir: Direction): JsonObject {
    return wellKnown(desc) ?? this.ref(desc, dir);
  }

  /** The schema of a path variable or query parameter (text-decoded). */
  textSchema(field: DescField): JsonObject {
    if (field.fieldKind === "enum" || (field.fieldKind === "list" && field.listKind === "enum")) return this.enumRef(field.enum);
    if (field.fieldKind === "scalar" || (field.fieldKind === "list" && field.listKind === "scalar")) return scalarSchema(field.scalar);
    if (field.fieldKind === "message" || (field.fieldKind === "list" && field.listKind === "message")) {
      const known = wellKnown(field.message);
      if (known !== undefined) return known;
    }
    return { type: "string" };
  }
}

function envelope(inner: Json): JsonObject {
  return { type: "object", properties: { data: inner }, required: ["data"] };
}

function orNull(schema: JsonObject): JsonObject {
  if (typeof schema.type === "string" && !("$ref" in schema)) return { ...schema, type: [schema.type, "null"] };
  if (Object.keys(schema).length === 0) return schema; // any JSON value, null included
  return { anyOf: [schema, { type: "null" }] };
}

function withDescription(schema: JsonObject, description: string | undefined): JsonObject {
  return description === undefined || description === "" ? schema : { ...schema, description };
}

function scalarSchema(type: ScalarType): JsonObject {
  switch (type) {
    case ScalarType.STRING:
      return { type: "string" };
    case ScalarType.BYTES:
      return { type: "string", description: "UTF-8 text (invalid sequences replaced by U+FFFD)" };
    case ScalarType.BOOL:
      return { type: "boolean" };
    case ScalarType.FLOAT:
      return { type: "number", format: "float" };
    case ScalarType.DOUBLE:
      return { type: "number", format: "double" };
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return { type: "integer", format: "int32" };
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return { type: "integer", format: "int32", minimum: 0 };
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return { type: "integer", format: "int64", minimum: 0 };
    default:
      return { type: "integer", format: "int64" };
  }
}

/** Schemas of the well-known types as the codec writes them; undefined for ordinary messages. */
function wellKnown(desc: DescMessage): JsonObject | undefined {
  switch (desc.typeName) {
    case TIMESTAMP:
      return { type: "string", format: "date-time" };
    case DURATION:
      return { type: "string", description: "seconds with an `s` suffix, e.g. `1.5s`" };
    case FIELD_MASK:
      return { type: "string" };
    case VALUE:
      return {};
    case STRUCT:
    case EMPTY:
      return { type: "object" };
    case LIST_VALUE:
      return { type: "array" };
  }
  if (WRAPPERS.has(desc.typeName)) {
    const f = desc.fields[0];
    return f !== undefined && f.fieldKind === "scalar" ? scalarSchema(f.scalar) : {};
  }
  return undefined;
}

function resolveField(desc: DescMessage, fieldPath: string): DescField {
  let msg: DescMessage = desc;
  const parts = fieldPath.split(".");
  for (let i = 0; i < parts.length; i++) {
    const field = msg.fields.find((f) => f.name === parts[i]);
    if (field === undefined) throw new Error(`${desc.typeName}: no field ${fieldPath}`);
    if (i === parts.length - 1) return field;
    if (field.fieldKind !== "message") throw new Error(`${desc.typeName}: ${fieldPath} is not a message path`);
    msg = field.message;
  }
  throw new Error(`${desc.typeName}: empty field path`);
}

/** Fields settable from query parameters (the codec's `setFromText` rules), as dotted paths. */
function queryFields(desc: DescMessage, prefix: string, depth: number): { name: string; field: DescField }[] {
  const out: { name: string; field: DescField }[] = [];
  for (const field of desc.fields) {
    const name = prefix === "" ? field.name : `${prefix}.${field.name}`;
    if (field.fieldKind === "map") continue;
    if (field.fieldKind === "message" || (field.fieldKind === "list" && field.listKind === "message")) {
      const msg = field.message;
      if (wellKnown(msg) !== undefined && msg.typeName !== STRUCT && msg.typeName !== LIST_VALUE && msg.typeName !== EMPTY) out.push({ name, field });
      else if (field.fieldKind === "message" && depth < 3 && !msg.typeName.startsWith("google.protobuf.")) out.push(...queryFields(msg, name, depth + 1));
      continue;
    }
    out.push({ name, field });
  }
  return out;
}

function firstSentence(text: string): string {
  const flat = text.replace(/\s+/g, " ").trim();
  const m = /^(.+?\.)(\s|$)/.exec(flat);
  return m?.[1] ?? flat;
}

function successDescription(code: number): string {
  switch (code) {
    case 201:
      return "Created";
    case 202:
      return "Accepted: the work goes on after the answer";
    default:
      return "OK";
  }
}

const errorResponseNames: Record<string, string> = {
  "400": "BadRequest",
  "401": "Unauthenticated",
  "403": "PermissionDenied",
  "404": "NotFound",
  "409": "Conflict",
  "413": "PayloadTooLarge",
  "415": "UnsupportedMediaType",
  "429": "TooManyRequests",
};

function errorSchema(): JsonObject {
  return {
    type: "object",
    description: "Every REST error. `code` is the gRPC code in snake_case; `field` names the offending request field when known.",
    required: ["error"],
    properties: {
      error: {
        type: "object",
        required: ["code", "message"],
        properties: {
          code: { type: "string", enum: [...new Set(Object.values(codeNames))] },
          message: { type: "string" },
          field: { type: "string" },
        },
      },
    },
  };
}

function errorResponses(): JsonObject {
  const body = { "application/json": { schema: { $ref: "#/components/schemas/Error" } } };
  const out: JsonObject = {
    BadRequest: { description: "invalid_argument: a request field is malformed (`error.field` names it)", content: body },
    Unauthenticated: { description: "unauthenticated: no or an invalid bearer token", content: body },
    PermissionDenied: { description: "permission_denied: the token's scope does not allow this", content: body },
    NotFound: { description: "not_found: no such resource or route", content: body },
    Conflict: { description: "already_exists, aborted or failed_precondition: the resource's state does not allow this", content: body },
    PayloadTooLarge: { description: "resource_exhausted: the request body is larger than the limit", content: body },
    UnsupportedMediaType: { description: "invalid_argument: the body is not `application/json`", content: body },
    TooManyRequests: {
      description: "resource_exhausted: a limit was reached; retry later",
      headers: { "Retry-After": { description: "Seconds to wait before retrying, when known", schema: { type: "integer", minimum: 0 } } },
      content: body,
    },
    Error: { description: "Any other failure (499 cancelled, 500 internal, 501 unimplemented, 503 unavailable, 504 deadline_exceeded, …)", content: body },
  };
  return out;
}

function sortKeys<T extends Json>(obj: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(obj).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}
