"""Client-side exceptions, one per gRPC status the API documents.

Each carries the status code, the server's message (never personal data) and the
``reason`` from the google.rpc.ErrorInfo detail (e.g. ``SUBJECT_SHREDDED``).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class OubliClientError(Exception):
    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        field: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        #: For INVALID_ARGUMENT: the request field at fault.
        self.field = field
        #: Seconds to wait before trying again (google.rpc.RetryInfo), when the server said.
        self.retry_after = retry_after


class InvalidArgument(OubliClientError):
    pass


class NotFound(OubliClientError):
    """Unknown subject or record, or an erased one (reason SUBJECT_SHREDDED/KEY_DESTROYED)."""


class AlreadyExists(OubliClientError):
    pass


class Conflict(OubliClientError):
    """ABORTED: the record changed since it was read (stale expected_version)."""


class PermissionDenied(OubliClientError):
    """The caller's policy does not allow the call or the purpose (or the subject has
    restricted processing: reason RESTRICTED)."""


class Unauthenticated(OubliClientError):
    """No credentials, unknown ones, or an expired token (reason TOKEN_EXPIRED)."""


class FailedPrecondition(OubliClientError):
    """The call does not fit the current state (e.g. ACCOUNT_NOT_OPEN, SUBJECT_CHANGED)."""


class DeadlineExceeded(OubliClientError):
    """The call's deadline passed; it may or may not have been applied."""


class Unavailable(OubliClientError):
    """The server, its KMS or its database is unreachable; safe to retry."""


class DataLoss(OubliClientError):
    """A stored ciphertext failed authentication."""


class ResourceExhausted(OubliClientError):
    """A costly call ran too recently (e.g. a full audit walk): see ``retry_after``."""


_BY_CODE: dict[grpc.StatusCode, type[OubliClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code(value: int) -> grpc.StatusCode:
    """The StatusCode of a google.rpc.Code number (UNKNOWN for an unknown one)."""
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


def error_for(
    code: grpc.StatusCode,
    message: str,
    reason: str = "",
    field: str = "",
    retry_after: float | None = None,
) -> OubliClientError:
    """The exception for a status (also used for the per-item errors of batches)."""
    return _BY_CODE.get(code, OubliClientError)(code, message, reason, field, retry_after)


def from_rpc_error(error: grpc.RpcError) -> OubliClientError:
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    reason = field = ""
    retry_after: float | None = None
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    field = bad.field_violations[0].field
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return error_for(code, message, reason, field, retry_after)
