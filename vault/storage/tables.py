"""Database schema (SQLAlchemy 2). Alembic migrations in vault/storage/migrations/ create it.

No column holds personal data in clear: records are ciphertext, everything else is
random ids, states, category names, counts and times (and the blind index's truncated
keyed HMACs, see vault.crypto.blind_index).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SubjectRow(Base):
    __tablename__ = "subjects"

    subject_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    #: active | closed | shredding | held (erased but for legal holds) | shredded
    state: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str] = mapped_column(String(64), unique=True)
    #: The subject's DEK wrapped by its KMS key; NULL once shredded.
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: Right to restriction: only purposes allowed under restriction may read.
    restricted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: JSON list of purpose names the subject objected to (right to object).
    objections: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    #: JSON object: consent name -> ISO time it was granted.
    consents: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: When the retention job erases a closed account (closure + 6 months by default).
    scheduled_shred_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    #: For state "held": the hold bucket keeping the legally retained records, and until when.
    hold_bucket_id: Mapped[str | None] = mapped_column(String(96))
    hold_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: When the DEK was made (creation or the last re-key): the DEK's age.
    dek_created_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    #: When the KMS key got the version wrapping the DEK: the KEK's age.
    kek_rotated_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    #: From then on the KMS key's versions below the current one may be trimmed.
    kek_trim_after: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)


class RecordRow(Base):
    __tablename__ = "records"
    __table_args__ = (
        # Profile categories hold one record per subject: singleton = category name for
        # those, NULL (never equal) for event categories.
        UniqueConstraint("subject_id", "singleton", name="uq_records_subject_singleton"),
        # Paged exports walk category by category in record-id order.
        Index("ix_records_subject_category_record", "subject_id", "category", "record_id"),
    )

    subject_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("subjects.subject_id"), primary_key=True
    )
    record_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    category: Mapped[str] = mapped_column(String(64))
    singleton: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    origin: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: subject (the subject's DEK) | expiry (subject DEK AND a bucket) | hold (a bucket only)
    key_scheme: Mapped[str] = mapped_column(String(8), default="subject", server_default="subject")
    bucket_id: Mapped[str | None] = mapped_column(String(96), index=True)
    #: The record is destroyed by then at the latest (NULL: depends on the account).
    retain_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class RetentionBucketRow(Base):
    """A KMS key shared by every record that must be gone (or kept) until one month.

    Destroying the bucket's key destroys all of them at once, in every copy of the
    database: KMS calls grow with the number of buckets, not of records.
    """

    __tablename__ = "retention_buckets"

    #: e.g. "expiry:technical_logs:2027-11" or "hold:billing:2029-06"
    bucket_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    category: Mapped[str] = mapped_column(String(64))
    month: Mapped[str] = mapped_column(String(7))
    destroy_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    key_id: Mapped[str] = mapped_column(String(64), unique=True)
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_version: Mapped[int] = mapped_column(Integer)
    #: active | destroying | destroyed
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    destroyed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    kek_rotated_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    kek_trim_after: Mapped[datetime | None] = mapped_column(UtcDateTime())


class KeyLedgerRow(Base):
    """Every KMS key oubli destroyed (or is about to): reconcile destroys them again."""

    __tablename__ = "key_ledger"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: subject | bucket | retired (a subject key replaced by re-keying)
    kind: Mapped[str] = mapped_column(String(16))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: The subject the key belonged to (NULL for buckets).
    subject_id: Mapped[str | None] = mapped_column(String(26), index=True)


class LedgerPositionRow(Base):
    """One row: the erasure ledger's seq of the last erasure this database finished (its
    high-water mark). Above the ledger's head, the ledger was lost or restored; below
    it, this database was (the restore fence, vault/usecases/restore_fence.py)."""

    __tablename__ = "erasure_ledger_position"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)


class RightsRequestRow(Base):
    """A data-subject request, with the date it must be answered by."""

    __tablename__ = "rights_requests"

    request_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(26), index=True)
    #: access | rectification | erasure | restriction | portability | objection
    kind: Mapped[str] = mapped_column(String(16))
    #: open | completed | rejected
    status: Mapped[str] = mapped_column(String(16), index=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    due_at: Mapped[datetime] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ShredReceiptRow(Base):
    """The shred ledger: every destroyed key, kept for receipts and post-restore reconcile."""

    __tablename__ = "shred_receipts"

    subject_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64))
    kms_backend: Mapped[str] = mapped_column(String(32))
    records_deleted: Mapped[int] = mapped_column(Integer)
    shredded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: Records kept under a legal hold, and when the hold's key is destroyed.
    records_retained: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retained_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class BlindIndexRow(Base):
    """Lookup by e-mail / phone: a truncated keyed HMAC of a record's normalised value.

    The tag is deliberately short (vault.crypto.blind_index): many records share it, so a row tells
    nothing about the value and candidates are confirmed by decryption. Rows go with
    their record (ON DELETE CASCADE), so deleting or shredding a record drops them in
    the same statement.
    """

    __tablename__ = "blind_index"
    __table_args__ = (
        ForeignKeyConstraint(
            ["subject_id", "record_id"],
            ["records.subject_id", "records.record_id"],
            ondelete="CASCADE",
        ),
        Index("ix_blind_index_kind_generation_tag", "kind", "generation", "tag"),
    )

    subject_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    #: email | phone
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    #: The index key generation the tag was computed with (two during a rotation).
    generation: Mapped[int] = mapped_column(
        Integer, primary_key=True, default=1, server_default="1"
    )
    #: The first ``bits`` bits of HMAC-SHA256(index key, kind NUL value), as an integer.
    tag: Mapped[int] = mapped_column(Integer)


class ServiceKeyRow(Base):
    """oubli's own keys (not a subject's): a DEK wrapped by a KMS key, e.g. the
    lookup index key. Unwrapped once at start-up, kept in memory."""

    __tablename__ = "service_keys"

    #: e.g. "lookup-index"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), unique=True)
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    key_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: When the KMS key got its latest version (creation, or the last rotation).
    rotated_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    kek_trim_after: Mapped[datetime | None] = mapped_column(UtcDateTime())


class AuditEntryRow(Base):
    """One link of the audit hash chain (``hash``: vault/audit/entries.py computes it,
    vault/audit/verification.py checks it).

    Names only: pseudonymous ids, catalog names, reason codes — never a value.
    """

    __tablename__ = "audit_entries"

    #: 1, 2, 3, ... assigned by the sealer under the chain lock (no gaps).
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    caller: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str | None] = mapped_column(String(26), index=True)
    #: JSON list of category names.
    categories: Mapped[str] = mapped_column(Text)
    #: JSON list of field names (never their values).
    fields: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))
    #: Hex SHA-256 of the previous entry (64 zeros for the first).
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditPendingRow(Base):
    """An audit entry recorded but not yet sealed into the chain.

    Appending is a plain insert here, without the chain lock, so that replicas and
    worker processes record accesses side by side; a sealer (any of them) moves the
    rows, oldest ``id`` first, into ``audit_entries`` in batches under the chain lock,
    hashing them there (vault/audit/chain.py). Same names-only columns as an entry.
    """

    __tablename__ = "audit_pending"

    #: Insertion order (the order in which they are sealed); gaps are normal.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    caller: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str | None] = mapped_column(String(26))
    categories: Mapped[str] = mapped_column(Text)
    fields: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))


class AuditCheckpointRow(Base):
    """A chain head (``seq``, ``hash``) signed with the KMS signing key ``key_id``."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class SupportGrantRow(Base):
    """A subject's consent that support may read its data for one ticket (seed 002).

    Recorded by the caller that collected the consent (e.g. the control panel); live
    until ``expires_at``, its revocation, or the ticket's resolution, whichever first.
    """

    __tablename__ = "support_grants"

    grant_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(26), index=True)
    #: The subject's support-category record (the ticket) the consent is for.
    ticket_record_id: Mapped[str] = mapped_column(String(26))
    #: The caller that recorded the subject's consent (a caller name, not a person).
    granted_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: NULL while not ended early; revoked | resolved | erased
    ended_reason: Mapped[str | None] = mapped_column(String(16))


class BearerTokenRow(Base):
    """A bearer token of a caller: its SHA-256 hash, never the token (vault.access.tokens).

    Every replica reads this table on every call, so a revocation committed here is
    refused by all of them from their next call.
    """

    __tablename__ = "bearer_tokens"

    #: ``tok_`` + a random id: shown by ``oubli token list``, named in the audit trail.
    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    caller: Mapped[str] = mapped_column(String(64), index=True)
    #: ``sha256:<hex>`` of the token's UTF-8 bytes; unique, so looked up by index.
    token_hash: Mapped[str] = mapped_column(String(71), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: NULL only for hashes imported from a pre-0007 tokens file (they had no expiry).
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: Set once, never cleared: a revoked token stays revoked whatever the clocks say.
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: The token that replaced this one (``oubli token rotate``).
    replaced_by: Mapped[str | None] = mapped_column(String(32))
    #: Updated at most every few minutes (vault.access.tokens.LAST_USED_GRANULARITY).
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: created (oubli token create / rotate / dev) | imported (from a tokens file)
    source: Mapped[str] = mapped_column(String(16))
