/**
 * Client-side errors, one class per gRPC status the API documents (mirrors the Python
 * client's `oubli_client.errors`, clients/python).
 *
 * Each carries the status code, the server's message (never personal data) and what the
 * `grpc-status-details-bin` trailer holds: the `reason` of the google.rpc.ErrorInfo
 * detail (e.g. `SUBJECT_SHREDDED`) and its metadata, the `field` of a google.rpc.BadRequest
 * (INVALID_ARGUMENT), and the delay of a google.rpc.RetryInfo (RESOURCE_EXHAUSTED).
 * See docs/api.md, "Errors".
 */

import { Metadata, status as Status, type ServiceError } from "@grpc/grpc-js";

import { BadRequest, ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details";
import { Status as RpcStatus } from "./gen/google/rpc/status";

export { Status };

/** The trailer carrying a serialized google.rpc.Status (gRPC's convention). */
const STATUS_DETAILS_TRAILER = "grpc-status-details-bin";

const TYPE_URL_PREFIX = "type.googleapis.com/";

export interface OubliErrorDetails {
  /** google.rpc.ErrorInfo reason, e.g. `SUBJECT_SHREDDED`; empty when the server sent none. */
  reason?: string;
  /** google.rpc.ErrorInfo metadata, e.g. `{ subject_id: "…" }`. */
  metadata?: Readonly<Record<string, string>>;
  /** For INVALID_ARGUMENT: the request field at fault (google.rpc.BadRequest). */
  field?: string;
  /** Seconds to wait before trying again (google.rpc.RetryInfo), when the server said. */
  retryAfter?: number;
  /** The call's `x-request-id` trailer: the id of the server's log line and audit entries. */
  requestId?: string;
  /**
   * From a batch create: the 0-based position of the failing item in the caller's whole
   * input (ErrorInfo metadata `index`, shifted by the items of earlier calls).
   */
  index?: number;
}

/** The root of every error the client raises for a gRPC status. */
export class OubliError extends Error {
  /** The gRPC status code (`status.NOT_FOUND`, …). */
  readonly code: Status;
  /** The server's message, without the code and reason prefix. */
  readonly details: string;
  readonly reason: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly field: string;
  readonly retryAfter: number | undefined;
  readonly requestId: string | undefined;
  readonly index: number | undefined;

  constructor(code: Status, details: string, extra: OubliErrorDetails = {}) {
    const reason = extra.reason ?? "";
    super(`${Status[code] ?? code}: ${details}` + (reason ? ` [${reason}]` : ""));
    this.name = new.target.name;
    this.code = code;
    this.details = details;
    this.reason = reason;
    this.metadata = extra.metadata ?? {};
    this.field = extra.field ?? "";
    this.retryAfter = extra.retryAfter;
    this.requestId = extra.requestId;
    this.index = extra.index;
  }

  /** The status's name, e.g. `"NOT_FOUND"`. */
  get codeName(): string {
    return Status[this.code] ?? String(this.code);
  }
}

export class InvalidArgument extends OubliError {}

/** Unknown subject or record, or an erased one (reason SUBJECT_SHREDDED / KEY_DESTROYED). */
export class NotFound extends OubliError {}

export class AlreadyExists extends OubliError {}

/** ABORTED: the record changed since it was read (stale expected_version). */
export class Conflict extends OubliError {}

export class PermissionDenied extends OubliError {}

/** No, unknown, expired or revoked credentials (reason UNAUTHENTICATED, TOKEN_EXPIRED, …). */
export class Unauthenticated extends OubliError {}

/** A state the call does not apply to (ACCOUNT_NOT_OPEN, EVENT_ALREADY_RECORDED, …). */
export class FailedPrecondition extends OubliError {}

/** The server, its KMS or its database is unreachable; safe to retry. */
export class Unavailable extends OubliError {}

/** A stored ciphertext failed authentication. */
export class DataLoss extends OubliError {}

/** A costly call ran too recently (e.g. a full audit walk): see `retryAfter`. */
export class ResourceExhausted extends OubliError {}

/** The call's deadline (the client's `timeoutMs`) passed before the server answered. */
export class DeadlineExceeded extends OubliError {}

type ErrorClass = new (code: Status, details: string, extra?: OubliErrorDetails) => OubliError;

const BY_CODE: ReadonlyMap<Status, ErrorClass> = new Map<Status, ErrorClass>([
  [Status.INVALID_ARGUMENT, InvalidArgument],
  [Status.NOT_FOUND, NotFound],
  [Status.ALREADY_EXISTS, AlreadyExists],
  [Status.ABORTED, Conflict],
  [Status.PERMISSION_DENIED, PermissionDenied],
  [Status.UNAUTHENTICATED, Unauthenticated],
  [Status.FAILED_PRECONDITION, FailedPrecondition],
  [Status.UNAVAILABLE, Unavailable],
  [Status.DATA_LOSS, DataLoss],
  [Status.RESOURCE_EXHAUSTED, ResourceExhausted],
  [Status.DEADLINE_EXCEEDED, DeadlineExceeded],
]);

/** The error for a status (also used for the per-item errors of batches). */
export function errorFor(code: Status, details: string, extra: OubliErrorDetails = {}): OubliError {
  const ErrorClass = BY_CODE.get(code) ?? OubliError;
  return new ErrorClass(code, details, extra);
}

/** The status of a google.rpc.Code number (UNKNOWN for one gRPC does not define). */
export function statusOf(value: number): Status {
  return Status[value] === undefined ? Status.UNKNOWN : (value as Status);
}

/** Reads the google.rpc details of the `grpc-status-details-bin` trailer, if any. */
export function decodeStatusDetails(trailers: Metadata | undefined): OubliErrorDetails {
  const found: OubliErrorDetails = {};
  const raw = trailers?.get(STATUS_DETAILS_TRAILER)[0];
  if (!(raw instanceof Buffer)) return found;
  let status: RpcStatus;
  try {
    status = RpcStatus.decode(raw);
  } catch {
    // A trailer we cannot parse must not hide the status code the call ended with.
    return found;
  }
  for (const detail of status.details) {
    const type = detail.typeUrl.startsWith(TYPE_URL_PREFIX)
      ? detail.typeUrl.slice(TYPE_URL_PREFIX.length)
      : detail.typeUrl;
    if (type === "google.rpc.ErrorInfo") {
      const info = ErrorInfo.decode(detail.value);
      found.reason = info.reason;
      found.metadata = info.metadata;
      const index = Number.parseInt(info.metadata["index"] ?? "", 10);
      if (Number.isInteger(index)) found.index = index;
    } else if (type === "google.rpc.BadRequest") {
      const bad = BadRequest.decode(detail.value);
      if (bad.fieldViolations.length > 0) found.field = bad.fieldViolations[0]!.field;
    } else if (type === "google.rpc.RetryInfo") {
      const delay = RetryInfo.decode(detail.value).retryDelay;
      if (delay) found.retryAfter = delay.seconds + delay.nanos / 1e9;
    }
  }
  return found;
}

function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error &&
    typeof (error as Partial<ServiceError>).code === "number" &&
    (error as Partial<ServiceError>).metadata instanceof Metadata
  );
}

/**
 * The OubliError for an error grpc-js raised; anything else (a bug, a serialization
 * failure) is returned unchanged.
 */
export function fromServiceError(error: unknown): unknown {
  if (!isServiceError(error)) return error;
  const requestId = error.metadata.get("x-request-id")[0];
  return errorFor(error.code, error.details ?? "", {
    ...decodeStatusDetails(error.metadata),
    requestId: typeof requestId === "string" ? requestId : undefined,
  });
}
