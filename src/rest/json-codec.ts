/**
 * The REST JSON codec: a descriptor-driven mapping between protobuf messages
 * and the JSON shape of the public REST API.
 *
 * It differs from canonical proto3 JSON on purpose (the REST API follows the
 * documented resource shapes, not the protobuf conventions):
 *
 * - field names are the proto (snake_case) names;
 * - on output every field is present: unset proto3 `optional` scalars and unset
 *   message fields are `null`, repeated fields `[]`, maps `{}`; of a oneof only
 *   the member that is set appears;
 * - integers, 64-bit ones included, are JSON numbers (64-bit values beyond
 *   2^53 lose precision on output and are rejected on input);
 * - enums are the lowercase value name without the enum's shared prefix
 *   (`COMMAND_STATUS_TIMED_OUT` -> `"timed_out"`), the zero `…_UNSPECIFIED`
 *   value is `null`;
 * - `google.protobuf.Timestamp` is an RFC 3339 UTC string with milliseconds,
 *   `Value`/`Struct`/`ListValue` are plain JSON, wrappers their plain value;
 * - `bytes` are UTF-8 text (invalid sequences replaced by U+FFFD) both ways.
 *
 * Input is strict: unknown fields, wrong JSON types, fractional or out of
 * range integers and unknown enum names are rejected with a `RestInputError`
 * naming the field. `null` always means "unset". Messages never echo the
 * offending value (it could be a secret), only its shape.
 */
import { ScalarType, fromJson, toJson } from "@bufbuild/protobuf";
import type { DescEnum, DescField, DescMessage, JsonValue, Message, MessageShape } from "@bufbuild/protobuf";
import { reflect } from "@bufbuild/protobuf/reflect";
import type { ReflectMessage } from "@bufbuild/protobuf/reflect";
import { isWrapperDesc } from "@bufbuild/protobuf/wkt";

/** A request value that cannot be decoded; `field` is the proto field path (`selector.labels`). */
export class RestInputError extends Error {
  readonly field: string | undefined;
  constructor(field: string | undefined, message: string) {
    super(field === undefined ? message : `${field}: ${message}`);
    this.name = "RestInputError";
    this.field = field;
  }
}

const TIMESTAMP = "google.protobuf.Timestamp";
const DURATION = "google.protobuf.Duration";
const VALUE = "google.protobuf.Value";
const STRUCT = "google.protobuf.Struct";
const LIST_VALUE = "google.protobuf.ListValue";
const FIELD_MASK = "google.protobuf.FieldMask";
const EMPTY = "google.protobuf.Empty";

const utf8Decoder = new TextDecoder("utf-8", { fatal: false });
const utf8Encoder = new TextEncoder();

// ---------------------------------------------------------------------------
// Enums

/** The REST name of an enum value: lowercase, shared prefix removed. */
export function enumValueRestName(desc: DescEnum, name: string): string {
  const prefix = desc.sharedPrefix;
  const short = prefix !== undefined && name.toLowerCase().startsWith(prefix.toLowerCase()) && name.length > prefix.length
    ? name.slice(prefix.length)
    : name;
  return short.toLowerCase();
}

function isUnspecified(desc: DescEnum, num: number): boolean {
  const v = desc.value[num];
  return num === 0 && (v === undefined || v.name.endsWith("_UNSPECIFIED"));
}

/** REST enum value for a number: the short name, `null` for the unspecified zero value, the number if unknown. */
export function encodeEnum(desc: DescEnum, num: number): JsonValue {
  if (isUnspecified(desc, num)) return null;
  const v = desc.value[num];
  return v === undefined ? num : enumValueRestName(desc, v.name);
}

function decodeEnum(desc: DescEnum, json: unknown, field: string): number {
  if (typeof json !== "string") throw new RestInputError(field, `expected a string (one of ${enumChoices(desc)}), got ${shapeOf(json)}`);
  for (const v of desc.values) {
    if (isUnspecified(desc, v.number)) continue;
    if (json === enumValueRestName(desc, v.name) || json === v.name) return v.number;
  }
  throw new RestInputError(field, `unknown value; expected one of ${enumChoices(desc)}`);
}

function enumChoices(desc: DescEnum): string {
  return desc.values.filter((v) => !isUnspecified(desc, v.number)).map((v) => enumValueRestName(desc, v.name)).join(", ");
}

// ---------------------------------------------------------------------------
// Output

/** Renders a message as REST JSON (see the module comment for the rules). */
export function encodeMessage(desc: DescMessage, message: Message): { [k: string]: JsonValue } {
  return encodeReflect(reflect(desc, message as MessageShape<DescMessage>));
}

function encodeReflect(r: ReflectMessage): { [k: string]: JsonValue } {
  const out: { [k: string]: JsonValue } = {};
  for (const field of r.fields) {
    if (field.oneof !== undefined && !r.isSet(field)) continue;
    out[field.name] = encodeField(r, field);
  }
  return out;
}

function encodeField(r: ReflectMessage, field: DescField): JsonValue {
  switch (field.fieldKind) {
    case "list": {
      const list = r.get(field);
      const items: JsonValue[] = [];
      for (const item of list) {
        items.push(
          field.listKind === "scalar"
            ? encodeScalar(field.scalar, item)
            : field.listKind === "enum"
              ? encodeEnum(field.enum, item as number)
              : encodeMessageValue(item as ReflectMessage),
        );
      }
      return items;
    }
    case "map": {
      const map = r.get(field);
      const obj: { [k: string]: JsonValue } = {};
      for (const [key, value] of map) {
        obj[String(key)] =
          field.mapKind === "scalar"
            ? encodeScalar(field.scalar, value)
            : field.mapKind === "enum"
              ? encodeEnum(field.enum, value as number)
              : encodeMessageValue(value as ReflectMessage);
      }
      return obj;
    }
    case "message":
      return r.isSet(field) ? encodeMessageValue(r.get(field)) : null;
    case "enum":
      // Unset optional enums are null, like the unspecified value.
      return field.presence !== IMPLICIT && !r.isSet(field) ? null : encodeEnum(field.enum, r.get(field));
    case "scalar":
      return field.presence !== IMPLICIT && !r.isSet(field) ? null : encodeScalar(field.scalar, r.get(field));
  }
}

// FeatureSet_FieldPresence.IMPLICIT
const IMPLICIT = 2;

function encodeMessageValue(r: ReflectMessage): JsonValue {
  const desc = r.desc;
  switch (desc.typeName) {
    case TIMESTAMP:
      return encodeTimestamp(r);
    case VALUE:
    case STRUCT:
    case LIST_VALUE:
    case DURATION:
    case FIELD_MASK:
    case EMPTY:
      return toJson(desc, r.message);
  }
  if (isWrapperDesc(desc)) {
    const valueField = desc.fields[0];
    return valueField === undefined || valueField.fieldKind !== "scalar" ? null : encodeScalar(valueField.scalar, r.get(valueField));
  }
  return encodeReflect(r);
}

function encodeTimestamp(r: ReflectMessage): JsonValue {
  const msg = r.message as unknown as { seconds: bigint; nanos: number };
  const ms = Number(msg.seconds) * 1000 + Math.floor(msg.nanos / 1_000_000);
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? toJson(r.desc, r.message) : date.toISOString();
}

function encodeScalar(type: ScalarType, value: unknown): JsonValue {
  switch (type) {
    case ScalarType.BYTES:
      return utf8Decoder.decode(value as Uint8Array);
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return Number(value as bigint | string);
    case ScalarType.FLOAT:
    case ScalarType.DOUBLE: {
      const n = value as number;
      if (Number.isFinite(n)) return n;
      return Number.isNaN(n) ? "NaN" : n > 0 ? "Infinity" : "-Infinity";
    }
    default:
      return value as string | number | boolean;
  }
}

// ---------------------------------------------------------------------------
// Input: JSON bodies

/** Decodes a JSON object into a new message of `desc`. `path` prefixes field names in errors. */
export function decodeMessage<Desc extends DescMessage>(desc: Desc, json: unknown, path = ""): MessageShape<Desc> {
  const r = reflect(desc);
  mergeJsonObject(r, json, path);
  return r.message as MessageShape<Desc>;
}

/** Merges the fields of a JSON object into an existing message (fields present in `json` are overwritten). */
export function mergeJsonObject(r: ReflectMessage, json: unknown, path: string): void {
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new RestInputError(path === "" ? undefined : path, `expected a JSON object, got ${shapeOf(json)}`);
  }
  const byName = new Map<string, DescField>();
  for (const f of r.fields) byName.set(f.name, f);
  for (const [key, value] of Object.entries(json as Record<string, unknown>)) {
    const fieldPath = join(path, key);
    const field = byName.get(key);
    if (field === undefined) throw new RestInputError(fieldPath, "unknown field");
    if (value === null) {
      r.clear(field);
      continue;
    }
    if (field.oneof !== undefined) {
      const other = r.oneofCase(field.oneof);
      if (other !== undefined && other !== field) {
        throw new RestInputError(fieldPath, `only one of ${field.oneof.fields.map((f) => f.name).join(", ")} may be set`);
      }
    }
    setFieldFromJson(r, field, value, fieldPath);
  }
}

/** Sets one top-level field (an HTTP rule's `body: "<field>"`) from JSON; `null` leaves it unset. */
export function setFieldJson(r: ReflectMessage, fieldName: string, json: unknown): void {
  const field = r.fields.find((f) => f.name === fieldName);
  if (field === undefined) throw new RestInputError(fieldName, "unknown field");
  if (json !== null) setFieldFromJson(r, field, json, fieldName);
}

function setFieldFromJson(r: ReflectMessage, field: DescField, json: unknown, path: string): void {
  switch (field.fieldKind) {
    case "list": {
      if (!Array.isArray(json)) throw new RestInputError(path, `expected an array, got ${shapeOf(json)}`);
      const list = r.get(field);
      list.clear();
      json.forEach((item: unknown, i) => {
        const itemPath = `${path}[${i}]`;
        if (item === null) throw new RestInputError(itemPath, "null is not allowed in an array");
        list.add(
          field.listKind === "scalar"
            ? decodeScalar(field.scalar, item, itemPath)
            : field.listKind === "enum"
              ? decodeEnum(field.enum, item, itemPath)
              : decodeMessageValue(field.message, item, itemPath),
        );
      });
      return;
    }
    case "map": {
      if (json === null || typeof json !== "object" || Array.isArray(json)) {
        throw new RestInputError(path, `expected a JSON object, got ${shapeOf(json)}`);
      }
      const map = r.get(field);
      map.clear();
      for (const [k, v] of Object.entries(json as Record<string, unknown>)) {
        if (v === null) throw new RestInputError(path, "map values must not be null");
        const key = decodeMapKey(field.mapKey, k, path);
        map.set(
          key,
          field.mapKind === "scalar"
            ? decodeScalar(field.scalar, v, path)
            : field.mapKind === "enum"
              ? decodeEnum(field.enum, v, path)
              : decodeMessageValue(field.message, v, path),
        );
      }
      return;
    }
    case "message":
      r.set(field, decodeMessageValue(field.message, json, path));
      return;
    case "enum":
      r.set(field, decodeEnum(field.enum, json, path));
      return;
    case "scalar":
      r.set(field, decodeScalar(field.scalar, json, path));
      return;
  }
}

function decodeMessageValue(desc: DescMessage, json: unknown, path: string): ReflectMessage {
  switch (desc.typeName) {
    case VALUE:
      // Any JSON value; null was handled as "unset" by the caller.
      return reflect(desc, fromJson(desc, json as JsonValue) as MessageShape<DescMessage>);
    case STRUCT:
      if (json === null || typeof json !== "object" || Array.isArray(json)) {
        throw new RestInputError(path, `expected a JSON object, got ${shapeOf(json)}`);
      }
      return reflect(desc, fromJson(desc, json as JsonValue) as MessageShape<DescMessage>);
    case LIST_VALUE:
      if (!Array.isArray(json)) throw new RestInputError(path, `expected an array, got ${shapeOf(json)}`);
      return reflect(desc, fromJson(desc, json as JsonValue) as MessageShape<DescMessage>);
    case TIMESTAMP:
      return reflect(desc, decodeTimestamp(desc, json, path) as MessageShape<DescMessage>);
    case DURATION:
    case FIELD_MASK:
    case EMPTY:
      try {
        return reflect(desc, fromJson(desc, json as JsonValue) as MessageShape<DescMessage>);
      } catch {
        throw new RestInputError(path, `invalid ${desc.name} (${shapeOf(json)})`);
      }
  }
  if (isWrapperDesc(desc)) {
    const r = reflect(desc);
    const valueField = desc.fields[0];
    if (valueField !== undefined && valueField.fieldKind === "scalar") r.set(valueField, decodeScalar(valueField.scalar, json, path));
    return r;
  }
  const r = reflect(desc);
  mergeJsonObject(r, json, path);
  return r;
}

function decodeTimestamp(desc: DescMessage, json: unknown, path: string): Message {
  if (typeof json !== "string") throw new RestInputError(path, `expected an RFC 3339 timestamp string, got ${shapeOf(json)}`);
  if (!RFC3339.test(json)) throw new RestInputError(path, "expected an RFC 3339 timestamp like 2024-01-20T15:45:00Z");
  try {
    return fromJson(desc, json);
  } catch {
    throw new RestInputError(path, "expected an RFC 3339 timestamp like 2024-01-20T15:45:00Z");
  }
}

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;

const INT32_MIN = -0x80000000;
const INT32_MAX = 0x7fffffff;
const UINT32_MAX = 0xffffffff;

function decodeScalar(type: ScalarType, json: unknown, path: string): unknown {
  switch (type) {
    case ScalarType.STRING:
      if (typeof json !== "string") throw new RestInputError(path, `expected a string, got ${shapeOf(json)}`);
      return json;
    case ScalarType.BYTES:
      if (typeof json !== "string") throw new RestInputError(path, `expected a string, got ${shapeOf(json)}`);
      return utf8Encoder.encode(json);
    case ScalarType.BOOL:
      if (typeof json !== "boolean") throw new RestInputError(path, `expected true or false, got ${shapeOf(json)}`);
      return json;
    case ScalarType.FLOAT:
    case ScalarType.DOUBLE:
      if (typeof json !== "number") throw new RestInputError(path, `expected a number, got ${shapeOf(json)}`);
      return json;
    default:
      if (typeof json !== "number") throw new RestInputError(path, `expected an integer, got ${shapeOf(json)}`);
      return checkInteger(type, json, path);
  }
}

function checkInteger(type: ScalarType, n: number, path: string): number | bigint {
  if (!Number.isInteger(n)) throw new RestInputError(path, "expected an integer, got a fractional number");
  switch (type) {
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      if (n < INT32_MIN || n > INT32_MAX) throw new RestInputError(path, "integer out of range for a 32-bit signed integer");
      return n;
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      if (n < 0 || n > UINT32_MAX) throw new RestInputError(path, "integer out of range for a 32-bit unsigned integer");
      return n;
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      if (n < 0 || !Number.isSafeInteger(n)) throw new RestInputError(path, `integer out of range (0 to ${Number.MAX_SAFE_INTEGER})`);
      return BigInt(n);
    default:
      if (!Number.isSafeInteger(n)) throw new RestInputError(path, `integer out of range (±${Number.MAX_SAFE_INTEGER})`);
      return BigInt(n);
  }
}

function decodeMapKey(type: ScalarType, key: string, path: string): unknown {
  switch (type) {
    case ScalarType.STRING:
      return key;
    case ScalarType.BOOL:
      if (key === "true") return true;
      if (key === "false") return false;
      throw new RestInputError(path, "map keys must be true or false");
    default: {
      if (!/^-?\d+$/.test(key)) throw new RestInputError(path, "map keys must be decimal integers");
      return checkInteger(type, Number(key), path);
    }
  }
}

// ---------------------------------------------------------------------------
// Input: path variables and query parameters

/** Resolves a dotted proto field path (`selector.labels`) to the message holding the leaf field, creating intermediate messages. */
function resolvePath(root: ReflectMessage, fieldPath: string, what: string): { r: ReflectMessage; field: DescField } {
  const parts = fieldPath.split(".");
  let r = root;
  for (let i = 0; i < parts.length; i++) {
    const name = parts[i] as string;
    const field = r.fields.find((f) => f.name === name);
    const soFar = parts.slice(0, i + 1).join(".");
    if (field === undefined) throw new RestInputError(fieldPath, `unknown ${what}`);
    if (i === parts.length - 1) return { r, field };
    if (field.fieldKind !== "message" || isSpecialMessage(field.message)) throw new RestInputError(soFar, `unknown ${what}`);
    if (!r.isSet(field)) r.set(field, reflect(field.message));
    r = r.get(field);
  }
  throw new RestInputError(fieldPath, `unknown ${what}`);
}

function isSpecialMessage(desc: DescMessage): boolean {
  return desc.typeName.startsWith("google.protobuf.");
}

/** Checks at route setup that a path variable or body field names a field of `desc`. */
export function assertFieldPath(desc: DescMessage, fieldPath: string): void {
  resolvePath(reflect(desc), fieldPath, "field");
}

/**
 * Sets the field named by a path variable (`{id}`, `{parent.id}`) from its
 * URL-decoded text, with query-parameter typing rules.
 */
export function setFromText(root: ReflectMessage, fieldPath: string, values: readonly string[], what: string): void {
  const { r, field } = resolvePath(root, fieldPath, what);
  if (field.fieldKind === "map") throw new RestInputError(fieldPath, `a map cannot be set as a ${what}`);
  if (field.fieldKind === "list") {
    const list = r.get(field);
    for (const text of values) {
      list.add(
        field.listKind === "scalar"
          ? scalarFromText(field.scalar, text, fieldPath)
          : field.listKind === "enum"
            ? decodeEnum(field.enum, text, fieldPath)
            : messageFromText(field.message, text, fieldPath, what),
      );
    }
    return;
  }
  if (values.length !== 1) throw new RestInputError(fieldPath, `${what} given more than once`);
  const text = values[0] as string;
  if (field.oneof !== undefined) {
    const other = r.oneofCase(field.oneof);
    if (other !== undefined && other !== field) throw new RestInputError(fieldPath, `only one of ${field.oneof.fields.map((f) => f.name).join(", ")} may be set`);
  }
  if (field.fieldKind === "scalar") r.set(field, scalarFromText(field.scalar, text, fieldPath));
  else if (field.fieldKind === "enum") r.set(field, decodeEnum(field.enum, text, fieldPath));
  else r.set(field, messageFromText(field.message, text, fieldPath, what));
}

function messageFromText(desc: DescMessage, text: string, path: string, what: string): ReflectMessage {
  if (desc.typeName === TIMESTAMP) return reflect(desc, decodeTimestamp(desc, text, path) as MessageShape<DescMessage>);
  if (desc.typeName === VALUE) return reflect(desc, fromJson(desc, text) as MessageShape<DescMessage>);
  if (isWrapperDesc(desc)) {
    const r = reflect(desc);
    const valueField = desc.fields[0];
    if (valueField !== undefined && valueField.fieldKind === "scalar") r.set(valueField, scalarFromText(valueField.scalar, text, path));
    return r;
  }
  if (desc.typeName === DURATION || desc.typeName === FIELD_MASK) {
    try {
      return reflect(desc, fromJson(desc, text) as MessageShape<DescMessage>);
    } catch {
      throw new RestInputError(path, `invalid ${desc.name}`);
    }
  }
  throw new RestInputError(path, `a message field cannot be set as a ${what}`);
}

function scalarFromText(type: ScalarType, text: string, path: string): unknown {
  switch (type) {
    case ScalarType.STRING:
      return text;
    case ScalarType.BYTES:
      return utf8Encoder.encode(text);
    case ScalarType.BOOL:
      if (text === "true") return true;
      if (text === "false") return false;
      throw new RestInputError(path, "expected true or false");
    case ScalarType.FLOAT:
    case ScalarType.DOUBLE: {
      const n = Number(text);
      if (text.trim() === "" || Number.isNaN(n)) throw new RestInputError(path, "expected a number");
      return n;
    }
    default:
      if (!/^-?\d+$/.test(text)) throw new RestInputError(path, "expected a decimal integer");
      return checkInteger(type, Number(text), path);
  }
}

// ---------------------------------------------------------------------------

function join(path: string, key: string): string {
  return path === "" ? key : `${path}.${key}`;
}

/** The JSON type of a value, for error messages that must not echo the value. */
export function shapeOf(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  switch (typeof v) {
    case "string":
      return "a string";
    case "number":
      return "a number";
    case "boolean":
      return "a boolean";
    case "object":
      return "an object";
    default:
      return typeof v;
  }
}
