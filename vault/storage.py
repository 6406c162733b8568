"""The database seam: SQLAlchemy 2 on SQLite (default) or PostgreSQL.

Every SQLAlchemy exception is translated here: connection trouble becomes
:class:`vault.errors.Unavailable`; nothing foreign reaches the domain. Each method is
one transaction, so a failure leaves nothing half-written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from vault.errors import AlreadyExists, SubjectNotFound, Unavailable
from vault.models import RecordRow, ShredReceiptRow, SubjectRow

ACTIVE = "active"
SHREDDING = "shredding"
SHREDDED = "shredded"


def make_engine(url: str) -> Engine:
    """Engine with the settings oubli relies on for each backend."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, poolclass=NullPool
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # Deleted ciphertext of a shredded subject is overwritten, not left in
            # free pages (it is useless without the key, but there is no reason to keep it).
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (no-op when already there)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(resources.files("vault").joinpath("migrations")))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as e:
        raise Unavailable(f"database migration failed: {type(e).__name__}") from e


@dataclass(frozen=True, slots=True)
class SubjectKeyInfo:
    subject_id: str
    tenant: str
    state: str
    key_id: str
    wrapped_dek: bytes | None
    key_version: int
    created_at: datetime
    updated_at: datetime


def _subject(row: SubjectRow) -> SubjectKeyInfo:
    return SubjectKeyInfo(
        row.subject_id,
        row.tenant,
        row.state,
        row.key_id,
        row.wrapped_dek,
        row.key_version,
        row.created_at,
        row.updated_at,
    )


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


def _record(row: RecordRow) -> StoredRecord:
    return StoredRecord(
        row.subject_id,
        row.record_id,
        row.category,
        row.version,
        row.ciphertext,
        row.origin,
        row.created_at,
        row.updated_at,
    )


@dataclass(frozen=True, slots=True)
class Receipt:
    subject_id: str
    key_id: str
    kms_backend: str
    records_deleted: int
    shredded_at: datetime


class Storage:
    """Repository over the oubli schema. Returns plain dataclasses, never ORM rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except IntegrityError as e:
            raise AlreadyExists("a row with the same unique key exists") from e
        except DBAPIError as e:
            raise Unavailable(f"database error: {type(e.orig).__name__}") from e
        except SQLAlchemyError as e:
            raise Unavailable(f"database error: {type(e).__name__}") from e

    # --- subjects -------------------------------------------------------------------

    def insert_subject(self, info: SubjectKeyInfo) -> None:
        with self._session() as s:
            s.add(
                SubjectRow(
                    subject_id=info.subject_id,
                    tenant=info.tenant,
                    state=info.state,
                    key_id=info.key_id,
                    wrapped_dek=info.wrapped_dek,
                    key_version=info.key_version,
                    created_at=info.created_at,
                    updated_at=info.updated_at,
                )
            )

    def subject(self, subject_id: str) -> SubjectKeyInfo:
        with self._session() as s:
            row = s.get(SubjectRow, subject_id)
            if row is None:
                raise SubjectNotFound("subject not found", subject_id=subject_id)
            return _subject(row)

    def record_count(self, subject_id: str) -> int:
        with self._session() as s:
            count = s.scalar(
                select(func.count())
                .select_from(RecordRow)
                .where(RecordRow.subject_id == subject_id)
            )
            return int(count or 0)

    def mark_shredding(self, subject_id: str, now: datetime) -> None:
        with self._session() as s:
            s.execute(
                update(SubjectRow)
                .where(SubjectRow.subject_id == subject_id, SubjectRow.state == ACTIVE)
                .values(state=SHREDDING, updated_at=now)
            )

    def finish_shred(self, subject_id: str, kms_backend: str, now: datetime) -> Receipt:
        """Delete the ciphertext, forget the wrapped DEK, write the ledger: one transaction."""
        with self._session() as s:
            row = s.get(SubjectRow, subject_id, with_for_update=True)
            if row is None:
                raise SubjectNotFound("subject not found", subject_id=subject_id)
            existing = s.get(ShredReceiptRow, subject_id)
            if existing is not None:
                return _receipt(existing)
            deleted = s.execute(delete(RecordRow).where(RecordRow.subject_id == subject_id))
            receipt = ShredReceiptRow(
                subject_id=subject_id,
                key_id=row.key_id,
                kms_backend=kms_backend,
                records_deleted=int(getattr(deleted, "rowcount", 0) or 0),
                shredded_at=now,
            )
            s.add(receipt)
            row.state = SHREDDED
            row.wrapped_dek = None
            row.updated_at = now
            return _receipt(receipt)

    def shredded_key_ids(self) -> list[str]:
        """Every key id in the shred ledger (for reconcile after a KMS restore)."""
        with self._session() as s:
            return list(s.scalars(select(ShredReceiptRow.key_id).order_by(ShredReceiptRow.key_id)))

    def receipt(self, subject_id: str) -> Receipt | None:
        with self._session() as s:
            row = s.get(ShredReceiptRow, subject_id)
            return None if row is None else _receipt(row)

    # --- records --------------------------------------------------------------------

    def insert_record(self, record: StoredRecord, singleton: str | None) -> bool:
        """Insert a record if, and only if, its subject is still active.

        The state check and the insert are one statement, holding a share lock on the
        subject row (PostgreSQL) or the write lock (SQLite): a shred that starts
        meanwhile waits for it, and then deletes the row with the others. Returns False
        when the subject is no longer active.
        """
        values = {
            "subject_id": record.subject_id,
            "record_id": record.record_id,
            "category": record.category,
            "singleton": singleton,
            "version": record.version,
            "ciphertext": record.ciphertext,
            "origin": record.origin,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        }
        source = (
            select(*(literal(v, RecordRow.__table__.c[k].type).label(k) for k, v in values.items()))
            .select_from(SubjectRow)
            .where(SubjectRow.subject_id == record.subject_id, SubjectRow.state == ACTIVE)
            .with_for_update(read=True)
        )
        with self._session() as s:
            # RETURNING, not rowcount: drivers report -1 for INSERT ... SELECT.
            inserted = s.execute(
                insert(RecordRow).from_select(list(values), source).returning(RecordRow.record_id)
            )
            return inserted.first() is not None

    def record(self, subject_id: str, record_id: str) -> StoredRecord | None:
        with self._session() as s:
            row = s.get(RecordRow, (subject_id, record_id))
            return None if row is None else _record(row)

    def records(
        self,
        subject_id: str,
        *,
        category: str | None = None,
        after_record_id: str = "",
        limit: int | None = None,
    ) -> Sequence[StoredRecord]:
        query = (
            select(RecordRow)
            .where(RecordRow.subject_id == subject_id, RecordRow.record_id > after_record_id)
            .order_by(RecordRow.record_id)
        )
        if category:
            query = query.where(RecordRow.category == category)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as s:
            return [_record(row) for row in s.scalars(query)]

    def update_record(self, record: StoredRecord, expected_version: int) -> bool:
        """Compare-and-set on ``version``; False when the stored version differs."""
        with self._session() as s:
            result = s.execute(
                update(RecordRow)
                .where(
                    RecordRow.subject_id == record.subject_id,
                    RecordRow.record_id == record.record_id,
                    RecordRow.version == expected_version,
                    # A shred deletes rows under the row lock this update takes.
                    select(SubjectRow.subject_id)
                    .where(SubjectRow.subject_id == record.subject_id, SubjectRow.state == ACTIVE)
                    .exists(),
                )
                .values(
                    version=record.version,
                    ciphertext=record.ciphertext,
                    origin=record.origin,
                    updated_at=record.updated_at,
                )
            )
            return bool(getattr(result, "rowcount", 0))

    def delete_record(self, subject_id: str, record_id: str) -> bool:
        with self._session() as s:
            result = s.execute(
                delete(RecordRow).where(
                    RecordRow.subject_id == subject_id, RecordRow.record_id == record_id
                )
            )
            return bool(getattr(result, "rowcount", 0))


def _receipt(row: ShredReceiptRow) -> Receipt:
    return Receipt(
        row.subject_id, row.key_id, row.kms_backend, row.records_deleted, row.shredded_at
    )
