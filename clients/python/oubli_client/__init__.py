"""oubli's Python client: ``OubliClient``, what it returns, its errors.

The generated stubs are in ``oubli_client.v1`` (from the repository's proto/).
"""

from oubli_client.batches import BATCH_MAX, BatchIncomplete
from oubli_client.channel import MAX_RESPONSE_BYTES
from oubli_client.client import STREAM_TIMEOUT, OubliClient
from oubli_client.errors import (
    AlreadyExists,
    Conflict,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OubliClientError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from oubli_client.models import (
    KEY_KINDS,
    AuditCheckpoint,
    AuditCheckpointPage,
    AuditEntry,
    AuditVerification,
    KeyAge,
    NewRecord,
    Record,
    RetentionAction,
    RetentionSummary,
    RightsRequest,
    RotationPass,
    ShredReceipt,
    Subject,
    SupportGrant,
)
from oubli_client.retry import RetryPolicy

__all__ = [
    "BATCH_MAX",
    "KEY_KINDS",
    "MAX_RESPONSE_BYTES",
    "STREAM_TIMEOUT",
    "AlreadyExists",
    "AuditCheckpoint",
    "AuditCheckpointPage",
    "AuditEntry",
    "AuditVerification",
    "BatchIncomplete",
    "Conflict",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "KeyAge",
    "NewRecord",
    "NotFound",
    "OubliClient",
    "OubliClientError",
    "PermissionDenied",
    "Record",
    "ResourceExhausted",
    "RetentionAction",
    "RetentionSummary",
    "RetryPolicy",
    "RightsRequest",
    "RotationPass",
    "ShredReceipt",
    "Subject",
    "SupportGrant",
    "Unauthenticated",
    "Unavailable",
]
