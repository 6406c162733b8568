"""What the repositories return: plain frozen dataclasses, never ORM rows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from vault.storage.tables import (
    RetentionBucketRow,
    RightsRequestRow,
)
from vault.vocabulary import BucketKind, BucketState, KeyScheme, RequestState, SubjectState


@dataclass(frozen=True, slots=True)
class SubjectKeyInfo:
    """A subject's row: state, key, and the flags every access is checked against."""

    subject_id: str
    tenant: str
    state: SubjectState
    key_id: str
    wrapped_dek: bytes | None
    key_version: int
    created_at: datetime
    updated_at: datetime
    restricted: bool = False
    objections: frozenset[str] = frozenset()
    #: consent name -> when it was granted
    consents: dict[str, str] = field(default_factory=dict)
    closed_at: datetime | None = None
    scheduled_shred_at: datetime | None = None
    hold_bucket_id: str | None = None
    hold_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class SubjectFlags:
    """New values of a subject's rights flags; None leaves a flag as it is."""

    restricted: bool | None = None
    objections: frozenset[str] | None = None
    #: consent name -> when it was granted
    consents: Mapping[str, str] | None = None


def subject_info(row: Any) -> SubjectKeyInfo:
    """From an ORM row or a Core row of the subjects table (same attribute names)."""
    return SubjectKeyInfo(
        row.subject_id,
        row.tenant,
        SubjectState(row.state),
        row.key_id,
        row.wrapped_dek,
        row.key_version,
        row.created_at,
        row.updated_at,
        bool(row.restricted),
        frozenset(json.loads(row.objections or "[]")),
        dict(json.loads(row.consents or "{}")),
        row.closed_at,
        row.scheduled_shred_at,
        row.hold_bucket_id,
        row.hold_until,
    )


class RecordLike(Protocol):
    """What decrypting and exporting a record reads: a StoredRecord, or a row of the
    records table with the same names."""

    @property
    def subject_id(self) -> str: ...
    @property
    def record_id(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def ciphertext(self) -> bytes: ...
    @property
    def origin(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def key_scheme(self) -> str: ...
    @property
    def bucket_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class StoredRecord:
    subject_id: str
    record_id: str
    category: str
    version: int
    ciphertext: bytes
    origin: str
    created_at: datetime
    updated_at: datetime
    key_scheme: KeyScheme = KeyScheme.SUBJECT
    bucket_id: str | None = None
    retain_until: datetime | None = None


def stored_record(row: Any) -> StoredRecord:
    """From an ORM row or a Core row of the records table (same attribute names)."""
    return StoredRecord(
        row.subject_id,
        row.record_id,
        row.category,
        row.version,
        row.ciphertext,
        row.origin,
        row.created_at,
        row.updated_at,
        KeyScheme(row.key_scheme),
        row.bucket_id,
        row.retain_until,
    )


@dataclass(frozen=True, slots=True)
class Receipt:
    subject_id: str
    key_id: str
    kms_backend: str
    records_deleted: int
    shredded_at: datetime
    records_retained: int = 0
    retained_until: datetime | None = None


def receipt_of(row: Any) -> Receipt:
    return Receipt(
        row.subject_id,
        row.key_id,
        row.kms_backend,
        row.records_deleted,
        row.shredded_at,
        row.records_retained,
        row.retained_until,
    )


@dataclass(frozen=True, slots=True)
class BucketInfo:
    bucket_id: str
    kind: BucketKind
    category: str
    month: str
    destroy_at: datetime
    key_id: str
    wrapped_dek: bytes | None
    key_version: int
    state: BucketState


def bucket_info(row: RetentionBucketRow) -> BucketInfo:
    return BucketInfo(
        row.bucket_id,
        BucketKind(row.kind),
        row.category,
        row.month,
        row.destroy_at,
        row.key_id,
        row.wrapped_dek,
        row.key_version,
        BucketState(row.state),
    )


@dataclass(frozen=True, slots=True)
class RightsRequest:
    request_id: str
    subject_id: str
    kind: str
    status: RequestState
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None


def rights_request(row: RightsRequestRow) -> RightsRequest:
    return RightsRequest(
        row.request_id,
        row.subject_id,
        row.kind,
        RequestState(row.status),
        row.received_at,
        row.due_at,
        row.completed_at,
    )
