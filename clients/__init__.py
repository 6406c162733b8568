"""What callers import: the typed Python client and the generated stubs (oubli_v1)."""

from clients.errors import (
    AlreadyExists,
    Conflict,
    DataLoss,
    InvalidArgument,
    NotFound,
    OubliClientError,
    PermissionDenied,
    Unavailable,
)
from clients.oubli_client import OubliClient, Record, ShredReceipt, Subject

__all__ = [
    "AlreadyExists",
    "Conflict",
    "DataLoss",
    "InvalidArgument",
    "NotFound",
    "OubliClient",
    "OubliClientError",
    "PermissionDenied",
    "Record",
    "ShredReceipt",
    "Subject",
    "Unavailable",
]
