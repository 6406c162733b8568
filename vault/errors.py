"""Domain errors: one root, typed fields, messages that never hold a personal-data value.

The gRPC layer maps each class to a status code in one table
(:data:`vault.api.status.STATUS_BY_ERROR`); the KMS and database adapters translate
their own exceptions into these before they reach the domain.
"""

from __future__ import annotations

from datetime import timedelta

from kms.base import KeyDestroyed, KmsAccessDenied, KmsError, KmsUnavailable


class OubliError(Exception):
    """Root of every domain error.

    Attributes:
        reason: stable, machine-readable UPPER_SNAKE code (google.rpc.ErrorInfo.reason).
        metadata: non-personal context (ids, limits, names of fields — never values).
    """

    reason = "OUBLI_ERROR"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata


class InvalidArgument(OubliError):
    """A request field is malformed; ``field`` names it (the name, never its value)."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, **metadata: str) -> None:
        super().__init__(message, field=field, **metadata)
        self.field = field


class SubjectNotFound(OubliError):
    reason = "SUBJECT_NOT_FOUND"


class RecordNotFound(OubliError):
    reason = "RECORD_NOT_FOUND"


class RequestNotFound(OubliError):
    reason = "REQUEST_NOT_FOUND"


class SubjectShredded(OubliError):
    """The subject was erased (or its erasure is under way): it is refused for good."""

    reason = "SUBJECT_SHREDDED"


class KeyDestroyedError(OubliError):
    """The subject's key is gone from the KMS, e.g. reading an old database copy."""

    reason = "KEY_DESTROYED"


class AlreadyExists(OubliError):
    """A uniqueness rule refused the write (e.g. a second record of a profile category)."""

    reason = "ALREADY_EXISTS"


class KmsRefused(OubliError):
    """The KMS refused oubli itself (e.g. an expired or under-privileged token)."""

    reason = "KMS_REFUSED"


class Unauthenticated(OubliError):
    """The call carries no credential that names a caller (the gRPC layer answers
    UNAUTHENTICATED)."""

    reason = "UNAUTHENTICATED"


class TokenExpired(Unauthenticated):
    """The token was valid and its expiry passed: the caller needs a new one."""

    reason = "TOKEN_EXPIRED"


class TokenRevoked(Unauthenticated):
    """The token was revoked (``oubli token revoke``, or ``rotate --now``)."""

    reason = "TOKEN_REVOKED"


class TokenNotFound(OubliError):
    """No bearer token with this id (``oubli token revoke`` / ``rotate``)."""

    reason = "TOKEN_NOT_FOUND"


class GrantNotFound(OubliError):
    """No support grant with this id (the gRPC layer maps it to NOT_FOUND)."""

    reason = "GRANT_NOT_FOUND"


class PermissionDenied(OubliError):
    """The purpose, the subject's objections, consents or restriction forbid this.

    ``reason`` says which rule: PURPOSE_NOT_ALLOWED, OBJECTED, CONSENT_MISSING,
    RESTRICTED or ERASED (only legally retained data is left, for its own purposes).
    """

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message, **metadata)
        self.reason = reason


class FailedPrecondition(OubliError):
    """The request is valid but the subject is not in a state that allows it."""

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message, **metadata)
        self.reason = reason


class VersionConflict(OubliError):
    """Optimistic concurrency: the record changed since the caller read it."""

    reason = "VERSION_CONFLICT"


class IntegrityFailure(OubliError):
    """A ciphertext failed authentication: tampered with, or moved to another place."""

    reason = "CIPHERTEXT_INTEGRITY"


class AuditChainBroken(IntegrityFailure):
    """The audit chain since the last checkpoint does not verify: oubli will not sign it."""

    reason = "AUDIT_CHAIN_BROKEN"


class Unavailable(OubliError):
    """The KMS or the database is unreachable; safe to retry.

    Writes are all-or-nothing; a shred interrupted here has already made the subject
    refused and completes on retry.
    """

    reason = "BACKEND_UNAVAILABLE"


class RateLimited(OubliError):
    """A costly operation ran too recently on this server; ``retry_after`` says when
    it may run again (google.rpc.RetryInfo)."""

    reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_after: timedelta, **metadata: str) -> None:
        super().__init__(message, **metadata)
        self.retry_after = retry_after


def kms_error(error: KmsError) -> OubliError:
    """The domain error for a KMS seam error (one table, used by every KMS caller)."""
    if isinstance(error, KmsUnavailable):
        return Unavailable("key management service unavailable; safe to retry")
    if isinstance(error, KmsAccessDenied):
        return KmsRefused("the key management service refused oubli's credentials")
    if isinstance(error, KeyDestroyed):
        return KeyDestroyedError("the key is destroyed: this data is unrecoverable")
    return IntegrityFailure("the key management service refused the data key")
