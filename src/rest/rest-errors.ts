/**
 * REST error bodies and statuses, mapped in one place.
 *
 * Body: `{"error": {"code": "<grpc code, snake_case>", "message": "…", "field": "…"}}`,
 * `field` only when known. Connect errors carry the field in the
 * `x-error-field` metadata header set by the service implementations.
 * A stream ended because the service stops adds `resume_offset` (from the
 * `fleetrun-resume-offset` trailer): the byte offset to follow again from.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { codeNames, ERROR_FIELD_HEADER, RESUME_OFFSET_HEADER, RETRY_AFTER_HEADER } from "../rpc/errors.ts";
import { RestInputError } from "./json-codec.ts";

export interface RestErrorBody {
  error: { code: string; message: string; field?: string; resume_offset?: number };
}

export interface RestError {
  readonly status: number;
  readonly body: RestErrorBody;
  /** Response headers that go with the error (`retry-after` of a 429). */
  readonly headers?: Readonly<Record<string, string>>;
}

/** The HTTP status of each gRPC code (the mapping of google.rpc.Code). */
export const httpStatusOfCode: Readonly<Record<Code, number>> = {
  [Code.Canceled]: 499,
  [Code.Unknown]: 500,
  [Code.InvalidArgument]: 400,
  [Code.DeadlineExceeded]: 504,
  [Code.NotFound]: 404,
  [Code.AlreadyExists]: 409,
  [Code.PermissionDenied]: 403,
  [Code.ResourceExhausted]: 429,
  [Code.FailedPrecondition]: 409,
  [Code.Aborted]: 409,
  [Code.OutOfRange]: 400,
  [Code.Unimplemented]: 501,
  [Code.Internal]: 500,
  [Code.Unavailable]: 503,
  [Code.DataLoss]: 500,
  [Code.Unauthenticated]: 401,
};

/** An HTTP-level failure of the transcoder itself (404, 405, 413, 415, …). */
export class RestHttpError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | undefined;
  constructor(status: number, code: string, message: string, field?: string) {
    super(message);
    this.name = "RestHttpError";
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export function errorBody(code: string, message: string, field?: string): RestErrorBody {
  return field === undefined || field === "" ? { error: { code, message } } : { error: { code, message, field } };
}

/** Maps anything thrown while serving a REST call to a status and body. */
export function restErrorFrom(err: unknown, bodyLimit?: number): RestError {
  if (err instanceof RestInputError) {
    return { status: 400, body: errorBody("invalid_argument", err.message, err.field) };
  }
  if (err instanceof RestHttpError) {
    return { status: err.status, body: errorBody(err.code, err.message, err.field) };
  }
  if (err instanceof ConnectError) {
    const field = err.metadata.get(ERROR_FIELD_HEADER) ?? undefined;
    const status = httpStatusOfCode[err.code] ?? 500;
    const body = errorBody(codeNames[err.code] ?? "unknown", err.rawMessage, field);
    const resume = err.metadata.get(RESUME_OFFSET_HEADER);
    if (resume !== null && /^\d{1,15}$/.test(resume)) body.error.resume_offset = Number(resume);
    // A refusal at a limit (429): when to retry, in whole seconds.
    const retryAfter = err.metadata.get(RETRY_AFTER_HEADER);
    if (retryAfter !== null && /^\d+$/.test(retryAfter)) return { status, body, headers: { "retry-after": retryAfter } };
    return { status, body };
  }
  const fastifyError = asFastifyError(err);
  if (fastifyError !== undefined) return fromFastifyError(fastifyError, bodyLimit);
  return { status: 500, body: errorBody("internal", "internal error") };
}

interface FastifyLikeError {
  code: string;
  statusCode: number;
  message: string;
}

function asFastifyError(err: unknown): FastifyLikeError | undefined {
  if (!(err instanceof Error)) return undefined;
  const e = err as Error & { code?: unknown; statusCode?: unknown };
  if (typeof e.statusCode !== "number") return undefined;
  return { code: typeof e.code === "string" ? e.code : "", statusCode: e.statusCode, message: e.message };
}

function fromFastifyError(err: FastifyLikeError, bodyLimit: number | undefined): RestError {
  switch (err.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return {
        status: 413,
        body: errorBody("resource_exhausted", bodyLimit === undefined ? "request body is too large" : `request body is larger than ${bodyLimit} bytes`),
      };
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return { status: 415, body: errorBody("invalid_argument", "Content-Type must be application/json") };
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return { status: 400, body: errorBody("invalid_argument", "Content-Length does not match the request body") };
  }
  const status = err.statusCode;
  if (status >= 500 || status < 400) return { status: 500, body: errorBody("internal", "internal error") };
  return { status, body: errorBody(codeOfHttpStatus(status), err.message) };
}

function codeOfHttpStatus(status: number): string {
  switch (status) {
    case 401:
      return "unauthenticated";
    case 403:
      return "permission_denied";
    case 404:
      return "not_found";
    case 408:
      return "deadline_exceeded";
    case 409:
      return "aborted";
    case 413:
    case 429:
      return "resource_exhausted";
    default:
      return "invalid_argument";
  }
}
