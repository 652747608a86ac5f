/**
 * Every failure that reaches a caller passes through `toConnectError`: typed
 * domain errors keep their code and field; anything else becomes a bare
 * `internal` error whose details go to the log only.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { FleetError, ResourceExhaustedError, ServiceStoppingError, type ErrorCode } from "../exec/errors.ts";

/** Response header naming the request field an error is about. */
export const ERROR_FIELD_HEADER = "x-error-field";

/**
 * Response header (gRPC: trailer) of a RESOURCE_EXHAUSTED refusal: seconds
 * after which a retry may succeed. REST sends it as `Retry-After`.
 */
export const RETRY_AFTER_HEADER = "retry-after";

/**
 * Trailer of a stream ended because the service stops (code UNAVAILABLE):
 * the byte offset to follow the command again from after the next start.
 */
export const RESUME_OFFSET_HEADER = "fleetrun-resume-offset";

/** gRPC code names, snake_case, as they appear in REST error bodies and audit records. */
export const codeNames: Readonly<Record<Code, string>> = {
  [Code.Canceled]: "cancelled",
  [Code.Unknown]: "unknown",
  [Code.InvalidArgument]: "invalid_argument",
  [Code.DeadlineExceeded]: "deadline_exceeded",
  [Code.NotFound]: "not_found",
  [Code.AlreadyExists]: "already_exists",
  [Code.PermissionDenied]: "permission_denied",
  [Code.ResourceExhausted]: "resource_exhausted",
  [Code.FailedPrecondition]: "failed_precondition",
  [Code.Aborted]: "aborted",
  [Code.OutOfRange]: "out_of_range",
  [Code.Unimplemented]: "unimplemented",
  [Code.Internal]: "internal",
  [Code.Unavailable]: "unavailable",
  [Code.DataLoss]: "data_loss",
  [Code.Unauthenticated]: "unauthenticated",
};

const CODES: Record<ErrorCode, Code> = {
  invalid_argument: Code.InvalidArgument,
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  failed_precondition: Code.FailedPrecondition,
  aborted: Code.Aborted,
  unauthenticated: Code.Unauthenticated,
  permission_denied: Code.PermissionDenied,
  resource_exhausted: Code.ResourceExhausted,
  unavailable: Code.Unavailable,
  deadline_exceeded: Code.DeadlineExceeded,
  cancelled: Code.Canceled,
  internal: Code.Internal,
};

export function toConnectError(err: unknown, onInternal?: (err: unknown) => void): ConnectError {
  // Already mapped (e.g. thrown by an interceptor or by Connect itself).
  if (err instanceof ConnectError) return err;
  // A domain error: its code and field are part of the API.
  if (err instanceof FleetError) {
    const e = new ConnectError(err.message, CODES[err.code]);
    if (err.field) e.metadata.set(ERROR_FIELD_HEADER, err.field);
    // A refusal at a limit says when to come back.
    if (err instanceof ResourceExhaustedError) e.metadata.set(RETRY_AFTER_HEADER, String(err.retryAfterSeconds));
    if (err instanceof ServiceStoppingError) e.metadata.set(RESUME_OFFSET_HEADER, String(err.resumeOffset));
    return e;
  }
  // An abort of the caller's own request.
  if (err instanceof Error && err.name === "AbortError") {
    return new ConnectError("the call was cancelled", Code.Canceled);
  }
  // Anything else is a bug or an infrastructure failure: say little.
  onInternal?.(err);
  return new ConnectError("internal error", Code.Internal);
}
