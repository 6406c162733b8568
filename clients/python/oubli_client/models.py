"""What the client returns: plain frozen dataclasses, and their conversion from the
generated messages (``oubli_client.v1``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from oubli_client.errors import OubliClientError, error_for, grpc_code
from oubli_client.v1 import vault_pb2 as pb

STATE_NAMES = {
    pb.SUBJECT_STATE_ACTIVE: "active",
    pb.SUBJECT_STATE_CLOSED: "closed",
    pb.SUBJECT_STATE_SHREDDING: "shredding",
    pb.SUBJECT_STATE_HELD: "held",
    pb.SUBJECT_STATE_SHREDDED: "shredded",
}


def timestamp_of(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def time_of(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return stamp


@dataclass(frozen=True, slots=True)
class Subject:
    subject_id: str
    state: str
    created_at: datetime
    updated_at: datetime
    record_count: int
    restricted: bool = False
    objections: tuple[str, ...] = ()
    consents: tuple[str, ...] = ()
    closed_at: datetime | None = None
    scheduled_erasure_at: datetime | None = None
    hold_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Record:
    subject_id: str
    record_id: str
    category: str
    fields: dict[str, str]
    version: int
    origin: str
    created_at: datetime
    updated_at: datetime
    retain_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ShredReceipt:
    subject_id: str
    key_id: str
    shredded_at: datetime
    records_deleted: int
    kms_backend: str
    residual_risk: str
    residual_copies_expire_at: datetime
    records_retained: int = 0
    retained_until: datetime | None = None
    #: The seq of the erasure ledger's entry naming the destroyed key.
    ledger_position: int = 0
    #: Ed25519 signature (64 bytes) of the receipt document by the KMS signing key
    #: (docs/keys.md, "Checking a receipt").
    signature: bytes = b""
    signing_key_id: str = ""


@dataclass(frozen=True, slots=True)
class RightsRequest:
    request_id: str
    subject_id: str
    kind: str
    status: str
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class RetentionAction:
    kind: str
    target: str
    due_at: datetime
    records: int
    done: int
    total: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class RetentionSummary:
    dry_run: bool
    subjects_erased: int
    buckets_destroyed: int
    records_destroyed: int
    ran_at: datetime
    failures: int = 0


#: Kinds of keys ``rotate_keys`` handles (proto KeyKind).
KEY_KINDS = {
    "subjects": pb.KEY_KIND_SUBJECTS,
    "buckets": pb.KEY_KIND_BUCKETS,
    "deks": pb.KEY_KIND_DEKS,
    "index": pb.KEY_KIND_INDEX,
    "signing": pb.KEY_KIND_SIGNING,
}
KEY_KIND_NAMES = {value: name for name, value in KEY_KINDS.items()}


@dataclass(frozen=True, slots=True)
class RotationPass:
    """One pass of a key rotation (KeyAdminService.RotateKeys)."""

    kind: str
    dry_run: bool
    due: int
    rotated: int
    trimmed: int
    failed: int
    remaining: int
    records: int
    kms_calls: int
    #: The cut-off the pass used: give it to the next pass.
    rotated_before: datetime


@dataclass(frozen=True, slots=True)
class KeyAge:
    kind: str
    oldest: datetime | None
    cryptoperiod: timedelta
    due: bool


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: datetime
    caller: str
    action: str
    subject_id: str
    categories: tuple[str, ...]
    fields: tuple[str, ...]
    purpose: str
    outcome: str
    request_id: str


@dataclass(frozen=True, slots=True)
class AuditVerification:
    ok: bool
    #: Entries walked.
    checked: int
    first_broken_seq: int | None
    reason: str
    checkpoint_seq: int | None
    #: The whole chain was walked (asked for, or no checkpoint yet).
    full: bool = False
    #: One sentence for people, naming seqs only.
    detail: str = ""
    #: Exported checkpoints compared with the chain.
    exported_checked: int = 0


@dataclass(frozen=True, slots=True)
class AuditCheckpoint:
    """A signed chain head, to keep outside the server's database.

    ``signature`` is in the KMS backend's format; it signs
    ``b"oubli-audit-checkpoint/v1\\n" + seq + b"\\n" + hash`` (ASCII).
    """

    seq: int
    hash: str
    at: datetime
    signature: bytes
    key_id: str
    key_version: int


@dataclass(frozen=True, slots=True)
class AuditCheckpointPage:
    checkpoints: list[AuditCheckpoint]
    #: Raw 32-byte Ed25519 public key of the signing key's latest version.
    public_key: bytes
    key_id: str
    #: Every version of the signing key still held: version -> raw public key.
    public_keys: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SupportGrant:
    grant_id: str
    subject_id: str
    ticket_record_id: str
    granted_by: str
    created_at: datetime
    expires_at: datetime
    status: str


def grant_of(m: pb.SupportGrant) -> SupportGrant:
    return SupportGrant(
        m.grant_id,
        m.subject_id,
        m.ticket_record_id,
        m.granted_by,
        m.create_time.ToDatetime(tzinfo=UTC),
        m.expire_time.ToDatetime(tzinfo=UTC),
        m.status,
    )


def request_of(m: pb.RightsRequest) -> RightsRequest:
    return RightsRequest(
        m.request_id,
        m.subject_id,
        m.kind,
        m.status,
        m.receive_time.ToDatetime(tzinfo=UTC),
        m.due_time.ToDatetime(tzinfo=UTC),
        time_of(m, "complete_time"),
    )


def subject_of(m: pb.Subject) -> Subject:
    return Subject(
        m.subject_id,
        STATE_NAMES.get(m.state, "unspecified"),
        m.create_time.ToDatetime(tzinfo=UTC),
        m.update_time.ToDatetime(tzinfo=UTC),
        m.record_count,
        m.restricted,
        tuple(m.objections),
        tuple(m.consents),
        time_of(m, "close_time"),
        time_of(m, "scheduled_erasure_time"),
        time_of(m, "hold_until_time"),
    )


def receipt_of(r: pb.ShredReceipt) -> ShredReceipt:
    return ShredReceipt(
        r.subject_id,
        r.key_id,
        r.shred_time.ToDatetime(tzinfo=UTC),
        r.records_deleted,
        r.kms_backend,
        r.residual_risk,
        r.residual_copies_expire_time.ToDatetime(tzinfo=UTC),
        r.records_retained,
        time_of(r, "retained_until_time"),
        r.ledger_position,
        r.signature,
        r.signing_key_id,
    )


def item_error_of(m: pb.ItemError) -> OubliClientError:
    return error_for(grpc_code(m.code), m.message, m.reason)


@dataclass(frozen=True, slots=True)
class NewRecord:
    """One record of a batch put."""

    subject_id: str
    category: str
    fields: Mapping[str, str]
    origin: str = "customer"


def record_of(m: pb.Record) -> Record:
    return Record(
        m.subject_id,
        m.record_id,
        m.category,
        dict(m.fields),
        m.version,
        m.origin,
        m.create_time.ToDatetime(tzinfo=UTC),
        m.update_time.ToDatetime(tzinfo=UTC),
        time_of(m, "retain_until_time"),
    )
