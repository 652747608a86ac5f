/**
 * Reads the `google.api.http` annotations (and `fleetrun.v1.http_success_code`)
 * of a service into route bindings.
 *
 * Supported path templates: literal segments and variables `{field}` /
 * `{a.b}` / `{field=*}` (one segment each). Multi-segment variables (`**`,
 * `{name=a/*}`) and custom verbs (`:cancel`) are rejected at setup.
 */
import { getOption } from "@bufbuild/protobuf";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { http } from "../gen/google/api/annotations_pb.js";
import type { HttpRule } from "../gen/google/api/http_pb.js";
import { http_success_code } from "../gen/fleetrun/v1/options_pb.js";
import { assertFieldPath } from "./json-codec.ts";

export interface PathVariable {
  /** The fastify route parameter name (`p0`, `p1`, …). */
  readonly param: string;
  /** The request field it binds, as a dotted proto field path. */
  readonly fieldPath: string;
}

export interface RestBinding {
  readonly method: DescMethod;
  /** Upper-case HTTP method. */
  readonly httpMethod: string;
  /** The annotation's path template, e.g. `/v1/commands/{id}`. */
  readonly template: string;
  /** The same path in fastify syntax, e.g. `/v1/commands/:p0`. */
  readonly url: string;
  readonly pathVariables: readonly PathVariable[];
  /** `""` (no body), `"*"` (the whole request) or the name of the request field the body fills. */
  readonly body: string;
  /** `""` (the whole response) or the name of the response field rendered as the body. */
  readonly responseBody: string;
  /** HTTP status of a success, from `fleetrun.v1.http_success_code` (default 200). */
  readonly successCode: number;
}

/** All REST bindings of the methods of `service` that carry a `google.api.http` rule. */
export function restBindings(service: DescService): RestBinding[] {
  const out: RestBinding[] = [];
  for (const method of service.methods) {
    const rule = getOption(method, http);
    if (rule.pattern.case === undefined) continue;
    if (method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming") {
      throw new Error(`${method.parent.typeName}.${method.name}: client-streaming methods cannot be served over REST`);
    }
    const code = getOption(method, http_success_code);
    const successCode = code === 0 ? 200 : code;
    out.push(binding(method, rule, successCode));
    for (const extra of rule.additionalBindings) {
      if (extra.pattern.case !== undefined) out.push(binding(method, extra, successCode));
    }
  }
  return out;
}

function binding(method: DescMethod, rule: HttpRule, successCode: number): RestBinding {
  let httpMethod: string;
  let template: string;
  switch (rule.pattern.case) {
    case "get":
    case "put":
    case "post":
    case "delete":
    case "patch":
      httpMethod = rule.pattern.case.toUpperCase();
      template = rule.pattern.value;
      break;
    case "custom":
      httpMethod = rule.pattern.value.kind.toUpperCase();
      template = rule.pattern.value.path;
      break;
    default:
      throw new Error(`${method.name}: no HTTP pattern`);
  }
  const where = `${method.parent.typeName}.${method.name} (${httpMethod} ${template})`;
  const { url, pathVariables } = parseTemplate(template, where);
  for (const v of pathVariables) checkField(method, v.fieldPath, where);
  if (rule.body !== "" && rule.body !== "*") checkField(method, rule.body, where);
  if (rule.responseBody !== "" && method.output.fields.every((f) => f.name !== rule.responseBody)) {
    throw new Error(`${where}: response_body names no field of ${method.output.typeName}`);
  }
  return { method, httpMethod, template, url, pathVariables, body: rule.body, responseBody: rule.responseBody, successCode };
}

function checkField(method: DescMethod, fieldPath: string, where: string): void {
  try {
    assertFieldPath(method.input, fieldPath);
  } catch {
    throw new Error(`${where}: ${fieldPath} is no field of ${method.input.typeName}`);
  }
}

/** Turns `/v1/commands/{id}/stream` into `/v1/commands/:p0/stream`. */
export function parseTemplate(template: string, where = template): { url: string; pathVariables: PathVariable[] } {
  if (!template.startsWith("/")) throw new Error(`${where}: a path template starts with "/"`);
  // A trailing `:verb` (`/v1/things/{id}:cancel`) is not supported: fastify's
  // router cannot end a parameter at a literal colon.
  const lastSegment = template.slice(template.lastIndexOf("/"));
  if (lastSegment.indexOf(":", lastSegment.lastIndexOf("}") + 1) !== -1) throw new Error(`${where}: custom verbs (":verb") are not supported`);
  const rest = template;
  const pathVariables: PathVariable[] = [];
  const segments = rest.slice(1).split("/").map((seg) => {
    const m = /^\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?:=\*)?\}$/.exec(seg);
    if (m !== null) {
      const param = `p${pathVariables.length}`;
      pathVariables.push({ param, fieldPath: m[1] as string });
      return `:${param}`;
    }
    if (seg === "" || /[{}*:]/.test(seg)) throw new Error(`${where}: unsupported path segment ${JSON.stringify(seg)}`);
    return seg;
  });
  const url = "/" + segments.join("/");
  return { url, pathVariables };
}
