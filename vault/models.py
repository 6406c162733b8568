"""Database schema (SQLAlchemy 2). Alembic migrations in vault/migrations/ create it.

No column holds personal data in clear: records are ciphertext, everything else is
random ids, states, category names, counts and times.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
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
    #: active | shredding | shredded
    state: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str] = mapped_column(String(64), unique=True)
    #: The subject's DEK wrapped by its KMS key; NULL once shredded.
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RecordRow(Base):
    __tablename__ = "records"
    __table_args__ = (
        # Profile categories hold one record per subject: singleton = category name for
        # those, NULL (never equal) for event categories.
        UniqueConstraint("subject_id", "singleton", name="uq_records_subject_singleton"),
        Index("ix_records_subject_category", "subject_id", "category"),
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


class ShredReceiptRow(Base):
    """The shred ledger: every destroyed key, kept for receipts and post-restore reconcile."""

    __tablename__ = "shred_receipts"

    subject_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64))
    kms_backend: Mapped[str] = mapped_column(String(32))
    records_deleted: Mapped[int] = mapped_column(Integer)
    shredded_at: Mapped[datetime] = mapped_column(UtcDateTime())
