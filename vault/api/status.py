"""One table from domain errors to gRPC status codes, with google.rpc details.

Every status carries an ``ErrorInfo`` (domain ``oubli.v1``, a stable reason code and
non-personal metadata); invalid arguments also carry a ``BadRequest`` naming the field,
and rate-limited calls a ``RetryInfo`` saying when to try again.
Messages come from the domain errors, which never hold personal data.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vault.errors import (
    AlreadyExists,
    FailedPrecondition,
    GrantNotFound,
    IntegrityFailure,
    InvalidArgument,
    KeyDestroyedError,
    KmsRefused,
    OubliError,
    PermissionDenied,
    RateLimited,
    RecordNotFound,
    RequestNotFound,
    SubjectNotFound,
    SubjectShredded,
    Unauthenticated,
    Unavailable,
    VersionConflict,
)

ERROR_DOMAIN = "oubli.v1"

#: Most specific class first; the first match wins.
STATUS_BY_ERROR: tuple[tuple[type[OubliError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (SubjectNotFound, grpc.StatusCode.NOT_FOUND),
    (RecordNotFound, grpc.StatusCode.NOT_FOUND),
    # Erased subjects are gone for good: NOT_FOUND, told apart by ErrorInfo.reason.
    (SubjectShredded, grpc.StatusCode.NOT_FOUND),
    (KeyDestroyedError, grpc.StatusCode.NOT_FOUND),
    (VersionConflict, grpc.StatusCode.ABORTED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (RequestNotFound, grpc.StatusCode.NOT_FOUND),
    (GrantNotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (IntegrityFailure, grpc.StatusCode.DATA_LOSS),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    # oubli's own credentials were refused: an operator must act, retrying will not help.
    (KmsRefused, grpc.StatusCode.INTERNAL),
)


def status_code_for(error: OubliError) -> grpc.StatusCode:
    for cls, code in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def error_status(error: OubliError) -> grpc.Status:
    code = status_code_for(error)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
    ]
    if isinstance(error, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.message
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(error, RateLimited):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(error.retry_after)
        details.append(_pack(retry))
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


def plain_status(code: grpc.StatusCode, message: str, reason: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    status = status_pb2.Status(code=code.value[0], message=message, details=[_pack(info)])
    return rpc_status.to_status(status)
