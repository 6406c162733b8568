"""The database seam: SQLAlchemy 2 on SQLite (default) or PostgreSQL.

:class:`Storage` is the one object the use cases are given: one repository per aggregate
(subjects, records, erasures, re-key, retention buckets, rights requests, blind index,
service keys, support grants, the audit chain's entries and checkpoints), each in its own
module, sharing the engine. The bearer tokens' repository (:mod:`vault.storage.bearer_tokens`)
stands alone: the ``oubli token`` commands build it from the engine. Every SQLAlchemy
exception is translated in :mod:`vault.storage.engine`: connection trouble becomes
:class:`vault.errors.Unavailable`, nothing foreign reaches the domain. Each method is one
transaction, so a failure leaves nothing half-written.
"""

from __future__ import annotations

from vault.storage.audit_log import AuditLogRepository
from vault.storage.blind_index import BlindIndexRepository
from vault.storage.buckets import BucketRepository
from vault.storage.engine import (
    make_engine,
    migrate,
    sqlite_writer,
    trace_transactions,
    translate_db_errors,
)
from vault.storage.erasures import ErasureRepository
from vault.storage.key_rotation import KeyRotationRepository
from vault.storage.records import RecordRepository
from vault.storage.rekey import RekeyRepository
from vault.storage.rights_requests import RightsRequestRepository
from vault.storage.rows import (
    BucketInfo,
    Receipt,
    RecordLike,
    RightsRequest,
    StoredRecord,
    SubjectFlags,
    SubjectKeyInfo,
)
from vault.storage.service_keys import ServiceKeyRepository
from vault.storage.subjects import SubjectRepository
from vault.storage.support_grants import SupportGrantRepository

__all__ = [
    "BucketInfo",
    "Receipt",
    "RecordLike",
    "RightsRequest",
    "Storage",
    "StoredRecord",
    "SubjectFlags",
    "SubjectKeyInfo",
    "make_engine",
    "migrate",
    "sqlite_writer",
    "trace_transactions",
    "translate_db_errors",
]


class Storage(
    SubjectRepository,
    RecordRepository,
    ErasureRepository,
    RekeyRepository,
    KeyRotationRepository,
    BucketRepository,
    RightsRequestRepository,
    BlindIndexRepository,
    ServiceKeyRepository,
    SupportGrantRepository,
    AuditLogRepository,
):
    """The repositories over the oubli schema, as one object. Returns plain dataclasses,
    never ORM rows."""
