/**
 * Typed domain errors. Everything the domain throws at a caller is one of
 * these; `src/rpc/errors.ts` maps them to gRPC/Connect codes in one place and
 * the REST layer maps those codes to HTTP statuses.
 *
 * Messages name the offending field and the shape of the value, never a
 * secret (credentials, env values).
 */

/** gRPC status code names, snake_case, as they appear in REST error bodies. */
export type ErrorCode =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "failed_precondition"
  | "aborted"
  | "unauthenticated"
  | "permission_denied"
  | "resource_exhausted"
  | "unavailable"
  | "deadline_exceeded"
  | "cancelled"
  | "internal";

export class FleetError extends Error {
  readonly code: ErrorCode;
  /** The request field the error is about, when there is one. */
  readonly field: string | undefined;
  constructor(code: ErrorCode, message: string, field?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FleetError";
    this.code = code;
    this.field = field;
  }
}

/** Thrown when a request field is missing, of the wrong shape or out of range. */
export class InvalidArgumentError extends FleetError {
  constructor(field: string, message: string) {
    super("invalid_argument", `${field}: ${message}`, field);
    this.name = "InvalidArgumentError";
  }
}

/** Thrown when a resource named by id does not exist. */
export class NotFoundError extends FleetError {
  readonly resource: string;
  readonly id: string;
  constructor(resource: string, id: string, field?: string) {
    super("not_found", `${resource} ${JSON.stringify(id)} not found`, field);
    this.name = "NotFoundError";
    this.resource = resource;
    this.id = id;
  }
}

/** Thrown when the resource is in a state that forbids the operation. */
export class FailedPreconditionError extends FleetError {
  constructor(message: string, field?: string) {
    super("failed_precondition", message, field);
    this.name = "FailedPreconditionError";
  }
}

/** Thrown when a create would duplicate a unique value (e.g. a machine name). */
export class AlreadyExistsError extends FleetError {
  constructor(message: string, field?: string) {
    super("already_exists", message, field);
    this.name = "AlreadyExistsError";
  }
}

/** Thrown when a call carries no valid token. */
export class UnauthenticatedError extends FleetError {
  constructor(message = "a valid bearer token is required") {
    super("unauthenticated", message);
    this.name = "UnauthenticatedError";
  }
}

/** Thrown when a valid token is not allowed to do what it asked. */
export class PermissionDeniedError extends FleetError {
  constructor(message: string) {
    super("permission_denied", message);
    this.name = "PermissionDeniedError";
  }
}

/** Thrown when the service is shutting down or a dependency is down. */
export class UnavailableError extends FleetError {
  constructor(message: string) {
    super("unavailable", message);
    this.name = "UnavailableError";
  }
}

/**
 * Thrown when the service is at one of its configured limits (commands,
 * pending starts, queued SSH handshakes, followers): the call is refused at
 * once, nothing was stored or started, and the caller may retry after
 * `retryAfterSeconds`.
 */
export class ResourceExhaustedError extends FleetError {
  /** Which limit was hit, e.g. `active_commands`. */
  readonly limit: string;
  /** The setting (environment variable) that configures it. */
  readonly setting: string;
  /** Seconds after which a retry may succeed. */
  readonly retryAfterSeconds: number;
  constructor(limit: string, setting: string, message: string, retryAfterSeconds: number) {
    super("resource_exhausted", message);
    this.name = "ResourceExhaustedError";
    this.limit = limit;
    this.setting = setting;
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/**
 * Ends a follower (WatchCommand, ExecuteAsync, `/stream`) because the service
 * is stopping. `resumeOffset` is the byte offset of the combined output log
 * the follower has received up to: following again from it after the next
 * start misses nothing and repeats nothing.
 */
export class ServiceStoppingError extends UnavailableError {
  readonly commandId: string;
  readonly resumeOffset: number;
  constructor(commandId: string, resumeOffset: number) {
    super(`the service is stopping: follow command ${commandId} again from offset ${resumeOffset} once it is back`);
    this.name = "ServiceStoppingError";
    this.commandId = commandId;
    this.resumeOffset = resumeOffset;
  }
}

/**
 * Why a command could not run, or stopped being observable, on its target.
 * These become `error.code` of a `failed` or `lost` command; they are not
 * thrown at API callers.
 */
export type TargetErrorReason =
  | "unreachable"
  | "auth_failed"
  | "host_key_mismatch"
  | "cwd_not_found"
  | "run_as_refused"
  | "spawn_failed"
  | "connection_lost"
  | "remote_state_lost"
  | "service_restarted";

/** A failure talking to a target machine (connect, authenticate, exec). */
export class TargetError extends Error {
  readonly reason: TargetErrorReason;
  readonly machineId: string | undefined;
  /** `host_key_mismatch`: the key the server presented (a fingerprint is public). */
  readonly presentedHostKey: { fingerprint: string; keyType: string } | undefined;
  constructor(
    reason: TargetErrorReason,
    message: string,
    machineId?: string,
    options?: { cause?: unknown; presentedHostKey?: { fingerprint: string; keyType: string } },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "TargetError";
    this.reason = reason;
    this.machineId = machineId;
    this.presentedHostKey = options?.presentedHostKey;
  }
}
