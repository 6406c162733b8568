"""The database seam: SQLAlchemy 2 on SQLite (default) or PostgreSQL.

Every SQLAlchemy exception is translated here: connection trouble becomes
:class:`vault.errors.Unavailable`; nothing foreign reaches the domain. Each method is
one transaction, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, cast

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from vault.errors import AlreadyExists, OubliError, SubjectNotFound, Unavailable
from vault.groupcommit import GroupCommit
from vault.models import (
    BlindIndexRow,
    KeyLedgerRow,
    RecordRow,
    RetentionBucketRow,
    RightsRequestRow,
    ShredReceiptRow,
    SubjectRow,
)
from vault.private_files import create_private_file, tighten

ACTIVE = "active"
CLOSED = "closed"
SHREDDING = "shredding"
HELD = "held"
SHREDDED = "shredded"
#: States whose records may be written (and read, purposes permitting).
WRITABLE = (ACTIVE, CLOSED)

SCHEME_SUBJECT = "subject"
SCHEME_EXPIRY = "expiry"
SCHEME_HOLD = "hold"

BUCKET_ACTIVE = "active"
BUCKET_DESTROYING = "destroying"
BUCKET_DESTROYED = "destroyed"


def make_engine(url: str) -> Engine:
    """Engine with the settings oubli relies on for each backend.

    A SQLite database file is created 0600 before SQLite opens it (its ``-wal`` and
    ``-shm`` then get the same mode); an existing one open to others is tightened.
    """
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            # Pooled: opening a connection (and its PRAGMAs) per transaction cost more
            # than the transaction itself (put 2.9 -> 1.3 ms, get 1.4 -> 0.5 ms).
            pool_size=16,
            max_overflow=16,
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


def _private_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return  # in memory, or a URI whose options SQLite interprets: left to SQLite
    path = Path(database)
    if path.parent.is_dir():  # else SQLite reports the missing directory, as before
        create_private_file(path)
        tighten(Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm"))


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """The database seam's one translation of SQLAlchemy errors into domain errors
    (the exception class only: a driver's message may quote a value)."""
    try:
        yield
    except IntegrityError as e:
        raise AlreadyExists("a row with the same unique key exists") from e
    except DBAPIError as e:
        raise Unavailable(f"database error: {type(e.orig).__name__}") from e
    except SQLAlchemyError as e:
        raise Unavailable(f"database error: {type(e).__name__}") from e


_WRITERS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_WRITERS_GUARD = threading.Lock()


@contextmanager
def sqlite_writer(engine: Engine) -> Iterator[None]:
    """Queue this process's SQLite writers on a lock before ``BEGIN IMMEDIATE``.

    SQLite has one write lock; a writer that finds it taken sleeps in its busy handler
    (1, 2, 5, 10 … ms) and polls again, so concurrent writers of one process — audit
    appends beside record inserts — lose milliseconds each. Waiting on a lock here
    wakes them the moment the writer before them commits. Other processes still meet
    at SQLite's own lock. A no-op for other databases.
    """
    if engine.dialect.name != "sqlite":
        yield
        return
    with _WRITERS_GUARD:
        lock = _WRITERS.setdefault(engine, threading.Lock())
    with lock:
        yield


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
    """A subject's row: state, key, and the flags every access is checked against."""

    subject_id: str
    tenant: str
    state: str
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


def _subject(row: Any) -> SubjectKeyInfo:
    """From an ORM row or a Core row of the subjects table (same attribute names)."""
    return SubjectKeyInfo(
        row.subject_id,
        row.tenant,
        row.state,
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
    key_scheme: str = SCHEME_SUBJECT
    bucket_id: str | None = None
    retain_until: datetime | None = None


#: The records table for Core statements (batches and exports skip the ORM's per-row cost).
RECORDS = cast(Table, RecordRow.__table__)
SUBJECTS = cast(Table, SubjectRow.__table__)
SHRED_RECEIPTS = cast(Table, ShredReceiptRow.__table__)
KEY_LEDGER = cast(Table, KeyLedgerRow.__table__)
BLIND_INDEX = cast(Table, BlindIndexRow.__table__)


def _subject_and_record() -> Any:
    """Built once (a fresh statement per call cost more to compile than to run)."""
    record = RECORDS.alias("r")
    live = (
        select(RetentionBucketRow.bucket_id)
        .where(
            RetentionBucketRow.bucket_id == record.c.bucket_id,
            RetentionBucketRow.state == BUCKET_ACTIVE,
        )
        .exists()
    )
    joined = SUBJECTS.outerjoin(
        record,
        and_(
            record.c.subject_id == SUBJECTS.c.subject_id,
            record.c.record_id == bindparam("record_id"),
            or_(record.c.bucket_id.is_(None), live),
        ),
    )
    columns = [c.label(f"r_{c.name}") for c in record.c if c.name != "subject_id"]
    return (
        select(SUBJECTS, *columns)
        .select_from(joined)
        .where(SUBJECTS.c.subject_id == bindparam("subject_id"))
    )


_SUBJECT_AND_RECORD = _subject_and_record()
_SUBJECT = select(SUBJECTS).where(SUBJECTS.c.subject_id == bindparam("subject_id"))

#: Ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits.
IN_CHUNK = 500


def _chunks(values: Sequence[str], size: int = IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _record(row: Any) -> StoredRecord:
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
        row.key_scheme,
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


def _receipt(row: Any) -> Receipt:
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
    kind: str
    category: str
    month: str
    destroy_at: datetime
    key_id: str
    wrapped_dek: bytes | None
    key_version: int
    state: str


def _bucket(row: RetentionBucketRow) -> BucketInfo:
    return BucketInfo(
        row.bucket_id,
        row.kind,
        row.category,
        row.month,
        row.destroy_at,
        row.key_id,
        row.wrapped_dek,
        row.key_version,
        row.state,
    )


@dataclass(frozen=True, slots=True)
class RightsRequest:
    request_id: str
    subject_id: str
    kind: str
    status: str
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None


def _request(row: RightsRequestRow) -> RightsRequest:
    return RightsRequest(
        row.request_id,
        row.subject_id,
        row.kind,
        row.status,
        row.received_at,
        row.due_at,
        row.completed_at,
    )


def _readable() -> Any:
    """Records whose bucket (if any) still has its key: rows of a destroyed bucket
    are deleted right after, but a reader must not see them in between."""
    live = select(RetentionBucketRow.bucket_id).where(
        RetentionBucketRow.bucket_id == RecordRow.bucket_id,
        RetentionBucketRow.state == BUCKET_ACTIVE,
    )
    return or_(RecordRow.bucket_id.is_(None), live.exists())


class _Changed(Exception):
    """A compare-and-set inside a transaction found a row changed: roll back."""


def _unchanged(read: StoredRecord) -> tuple[Any, ...]:
    """Conditions: the record row is as ``read`` saw it (version, key scheme, bucket)."""
    return (
        RECORDS.c.version == read.version,
        RECORDS.c.key_scheme == read.key_scheme,
        RECORDS.c.bucket_id.is_not_distinct_from(read.bucket_id),
    )


def _holds_key(c: Connection, subject_id: str, key_id: str) -> bool:
    """Share-lock the subject row (PostgreSQL) and say whether the subject is still
    writable under ``key_id``: a re-key or a shred then waits for this transaction."""
    row = c.execute(
        select(SUBJECTS.c.key_id, SUBJECTS.c.state)
        .where(SUBJECTS.c.subject_id == subject_id)
        .with_for_update(read=True)
    ).first()
    return row is not None and row.key_id == key_id and row.state in WRITABLE


def replace_index_rows(
    c: Connection, subject_id: str, record_id: str, tags: Mapping[str, int]
) -> None:
    """Replace a record's blind-index rows with ``tags`` ({kind: tag}, computed by
    vault.lookup), inside the caller's transaction."""
    c.execute(
        delete(BLIND_INDEX).where(
            BLIND_INDEX.c.subject_id == subject_id, BLIND_INDEX.c.record_id == record_id
        )
    )
    if tags:
        c.execute(
            insert(BLIND_INDEX),
            [
                {"subject_id": subject_id, "record_id": record_id, "kind": kind, "tag": tag}
                for kind, tag in sorted(tags.items())
            ],
        )


#: A record to insert, its singleton (profile categories) and the subject's key id.
_Insert = tuple["StoredRecord", str | None, str]


class Storage:
    """Repository over the oubli schema. Returns plain dataclasses, never ORM rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._inserts: GroupCommit[_Insert, bool | OubliError] = GroupCommit(self._insert_group)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with translate_db_errors(), self._sessions.begin() as session:
            yield session

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A Core transaction (no Session): the hot paths' reads and batch writes. Same
        error translation as :meth:`_session`."""
        with translate_db_errors(), self.engine.begin() as connection:
            yield connection

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
                    restricted=False,
                    objections="[]",
                    consents="{}",
                )
            )

    def subject(self, subject_id: str) -> SubjectKeyInfo:
        with self._connection() as c:
            row = c.execute(_SUBJECT, {"subject_id": subject_id}).first()
            if row is None:
                raise SubjectNotFound("subject not found", subject_id=subject_id)
            return _subject(row)

    def subject_and_record(
        self, subject_id: str, record_id: str
    ) -> tuple[SubjectKeyInfo, StoredRecord | None]:
        """The subject and one of its readable records, in one statement (the read
        path: one round trip instead of two)."""
        params = {"subject_id": subject_id, "record_id": record_id}
        with self._connection() as c:
            row = c.execute(_SUBJECT_AND_RECORD, params).first()
            if row is None:
                raise SubjectNotFound("subject not found", subject_id=subject_id)
            subject = _subject(row)
            if row.r_record_id is None:
                return subject, None
            return subject, StoredRecord(
                row.subject_id,
                row.r_record_id,
                row.r_category,
                row.r_version,
                row.r_ciphertext,
                row.r_origin,
                row.r_created_at,
                row.r_updated_at,
                row.r_key_scheme,
                row.r_bucket_id,
                row.r_retain_until,
            )

    def record_count(self, subject_id: str) -> int:
        with self._session() as s:
            query = select(func.count()).select_from(RecordRow)
            count = s.scalar(query.where(RecordRow.subject_id == subject_id, _readable()))
            return int(count or 0)

    def update_subject(
        self, subject_id: str, now: datetime, *, states: Sequence[str], **values: Any
    ) -> bool:
        """Change a subject's flags if it is in one of ``states``; False otherwise."""
        if "objections" in values:
            values["objections"] = json.dumps(sorted(values["objections"]))
        if "consents" in values:
            values["consents"] = json.dumps(values["consents"], sort_keys=True)
        with self._session() as s:
            result = s.execute(
                update(SubjectRow)
                .where(SubjectRow.subject_id == subject_id, SubjectRow.state.in_(states))
                .values(updated_at=now, **values)
            )
            return bool(getattr(result, "rowcount", 0))

    def change_flags(
        self,
        subject_id: str,
        now: datetime,
        change: Callable[[SubjectKeyInfo], SubjectFlags],
    ) -> SubjectKeyInfo | None:
        """Read-modify-write of a writable subject's flags under its row lock (``FOR
        UPDATE``; SQLite: ``BEGIN IMMEDIATE``): ``change`` gets the row as it stands in
        this transaction, so two concurrent changes (a consent granted while another is
        withdrawn) both land. Returns the subject as changed; None when it is not
        writable (absent, erased or being erased)."""
        with sqlite_writer(self.engine), self._session() as s:
            c = s.connection()
            if c.dialect.name == "sqlite":
                c.exec_driver_sql("BEGIN IMMEDIATE")
            row = s.get(SubjectRow, subject_id, with_for_update=True)
            if row is None or row.state not in WRITABLE:
                return None
            flags = change(_subject(row))
            if flags.restricted is not None:
                row.restricted = flags.restricted
            if flags.objections is not None:
                row.objections = json.dumps(sorted(flags.objections))
            if flags.consents is not None:
                row.consents = json.dumps(dict(flags.consents), sort_keys=True)
            row.updated_at = now
            s.flush()
            return _subject(row)

    def mark_shredding(self, subject_id: str, now: datetime) -> None:
        self.update_subject(subject_id, now, states=WRITABLE, state=SHREDDING)

    def mark_shredding_many(self, subject_ids: Collection[str], now: datetime) -> None:
        """:meth:`mark_shredding` for many subjects, in one transaction."""
        with self._session() as s:
            for chunk in _chunks(sorted(set(subject_ids))):
                s.execute(
                    update(SubjectRow)
                    .where(SubjectRow.subject_id.in_(chunk), SubjectRow.state.in_(WRITABLE))
                    .values(state=SHREDDING, updated_at=now)
                )

    def subjects_with_records(
        self, subject_ids: Collection[str], categories: Sequence[str], scheme: str
    ) -> set[str]:
        """Which of ``subject_ids`` have records of ``categories`` under ``scheme``."""
        found: set[str] = set()
        with self._connection() as c:
            for chunk in _chunks(sorted(set(subject_ids))):
                query = (
                    select(RecordRow.subject_id)
                    .where(
                        RecordRow.subject_id.in_(chunk),
                        RecordRow.category.in_(categories),
                        RecordRow.key_scheme == scheme,
                    )
                    .distinct()
                )
                found.update(c.execute(query).scalars())
        return found

    def finish_shred(
        self,
        subject_id: str,
        kms_backend: str,
        now: datetime,
        hold_bucket_id: str | None = None,
        hold_until: datetime | None = None,
    ) -> Receipt:
        """Delete what may go, keep what is held, forget the wrapped DEK, write the
        receipt and the key ledger: one transaction."""
        with self._session() as s:
            return self._finish_shred(s, subject_id, kms_backend, now, hold_bucket_id, hold_until)

    def finish_shreds(
        self, subject_ids: Sequence[str], kms_backend: str, now: datetime
    ) -> dict[str, Receipt]:
        """:meth:`finish_shred` for many subjects whose keys are destroyed and who hold
        nothing under a legal hold: one transaction of set-wide statements (a few per
        500 subjects, not a few per subject). A subject found holding records after all
        is finished one by one, in the same transaction."""
        receipts: dict[str, Receipt] = {}
        with sqlite_writer(self.engine), self._session() as s:
            c = s.connection()
            if c.dialect.name == "sqlite":
                c.exec_driver_sql("BEGIN IMMEDIATE")
            for chunk in _chunks(list(dict.fromkeys(subject_ids))):
                keys = dict(
                    c.execute(
                        select(SubjectRow.subject_id, SubjectRow.key_id)
                        .where(SubjectRow.subject_id.in_(chunk))
                        .with_for_update()
                    ).all()
                )
                for row in c.execute(
                    select(SHRED_RECEIPTS).where(ShredReceiptRow.subject_id.in_(chunk))
                ):
                    receipts[row.subject_id] = _receipt(row)
                todo = [sid for sid in chunk if sid in keys and sid not in receipts]
                counts = dict(
                    c.execute(
                        select(RecordRow.subject_id, func.count())
                        .where(RecordRow.subject_id.in_(todo))
                        .group_by(RecordRow.subject_id)
                    ).all()
                )
                held = set(
                    c.execute(
                        select(RecordRow.subject_id)
                        .where(RecordRow.subject_id.in_(todo), RecordRow.key_scheme == SCHEME_HOLD)
                        .distinct()
                    ).scalars()
                )
                for sid in held:  # not expected here; the full path handles it
                    receipts[sid] = self._finish_shred(s, sid, kms_backend, now)
                todo = [sid for sid in todo if sid not in held]
                if not todo:
                    continue
                c.execute(delete(RecordRow).where(RecordRow.subject_id.in_(todo)))
                made = [
                    Receipt(sid, keys[sid], kms_backend, int(counts.get(sid, 0)), now, 0, None)
                    for sid in todo
                ]
                c.execute(
                    insert(SHRED_RECEIPTS),
                    [
                        {
                            "subject_id": r.subject_id,
                            "key_id": r.key_id,
                            "kms_backend": r.kms_backend,
                            "records_deleted": r.records_deleted,
                            "shredded_at": now,
                            "records_retained": 0,
                            "retained_until": None,
                        }
                        for r in made
                    ],
                )
                ledgered = set(
                    c.execute(
                        select(KeyLedgerRow.key_id).where(
                            KeyLedgerRow.key_id.in_([keys[sid] for sid in todo])
                        )
                    ).scalars()
                )
                rows = [
                    {"key_id": keys[sid], "kind": "subject", "recorded_at": now, "subject_id": sid}
                    for sid in todo
                    if keys[sid] not in ledgered
                ]
                if rows:
                    c.execute(insert(KEY_LEDGER), rows)
                c.execute(
                    update(SubjectRow)
                    .where(SubjectRow.subject_id.in_(todo))
                    .values(
                        state=SHREDDED,
                        hold_bucket_id=None,
                        hold_until=None,
                        wrapped_dek=None,
                        scheduled_shred_at=None,
                        updated_at=now,
                    )
                )
                receipts.update({r.subject_id: r for r in made})
        return receipts

    def _finish_shred(
        self,
        s: Session,
        subject_id: str,
        kms_backend: str,
        now: datetime,
        hold_bucket_id: str | None = None,
        hold_until: datetime | None = None,
    ) -> Receipt:
        row = s.get(SubjectRow, subject_id, with_for_update=True)
        if row is None:
            raise SubjectNotFound("subject not found", subject_id=subject_id)
        existing = s.get(ShredReceiptRow, subject_id)
        if existing is not None:
            return _receipt(existing)
        deleted = s.execute(
            delete(RecordRow).where(
                RecordRow.subject_id == subject_id, RecordRow.key_scheme != SCHEME_HOLD
            )
        )
        retained = int(
            s.scalar(
                select(func.count())
                .select_from(RecordRow)
                .where(RecordRow.subject_id == subject_id)
            )
            or 0
        )
        receipt = ShredReceiptRow(
            subject_id=subject_id,
            key_id=row.key_id,
            kms_backend=kms_backend,
            records_deleted=int(getattr(deleted, "rowcount", 0) or 0),
            shredded_at=now,
            records_retained=retained,
            retained_until=hold_until if retained else None,
        )
        s.add(receipt)
        self._ledger(s, row.key_id, "subject", now, subject_id)
        row.state = HELD if retained else SHREDDED
        row.hold_bucket_id = hold_bucket_id if retained else None
        row.hold_until = hold_until if retained else None
        row.wrapped_dek = None
        row.scheduled_shred_at = None
        row.updated_at = now
        return _receipt(receipt)

    def receipt(self, subject_id: str) -> Receipt | None:
        with self._session() as s:
            row = s.get(ShredReceiptRow, subject_id)
            return None if row is None else _receipt(row)

    def due_erasures(
        self, now: datetime, kept_categories: Sequence[str], limit: int = 10_000
    ) -> list[tuple[str, datetime, int]]:
        """Closed accounts whose erasure is due, and erasures interrupted mid-way: per
        subject, when it became due and how many records its erasure deletes (all but
        held ones and those of ``kept_categories``, which move to a hold bucket)."""
        erasable = and_(
            RecordRow.subject_id == SubjectRow.subject_id,
            RecordRow.key_scheme != SCHEME_HOLD,
            RecordRow.category.not_in(kept_categories),
        )
        query = (
            select(
                SubjectRow.subject_id,
                SubjectRow.scheduled_shred_at,
                SubjectRow.updated_at,
                func.count(RecordRow.record_id),
            )
            .outerjoin(RecordRow, erasable)
            .where(
                or_(
                    and_(SubjectRow.state == CLOSED, SubjectRow.scheduled_shred_at <= now),
                    SubjectRow.state == SHREDDING,
                )
            )
            .group_by(SubjectRow.subject_id, SubjectRow.scheduled_shred_at, SubjectRow.updated_at)
            .order_by(SubjectRow.subject_id)
            .limit(limit)
        )
        with self._session() as s:
            return [(row[0], row[1] or row[2], int(row[3] or 0)) for row in s.execute(query)]

    # --- key ledger -----------------------------------------------------------------

    @staticmethod
    def _ledger(
        s: Session, key_id: str, kind: str, now: datetime, subject_id: str | None = None
    ) -> None:
        if s.get(KeyLedgerRow, key_id) is None:
            s.add(KeyLedgerRow(key_id=key_id, kind=kind, recorded_at=now, subject_id=subject_id))

    def ledger_key_ids(self, subject_id: str | None = None) -> list[str]:
        """Key ids oubli destroyed (for reconcile after a KMS restore), all or one
        subject's."""
        query = select(KeyLedgerRow.key_id).order_by(KeyLedgerRow.key_id)
        if subject_id is not None:
            query = query.where(KeyLedgerRow.subject_id == subject_id)
        with self._session() as s:
            return list(s.scalars(query))

    # --- records --------------------------------------------------------------------

    def subjects(self, subject_ids: Collection[str]) -> dict[str, SubjectKeyInfo]:
        """The subjects among ``subject_ids`` that exist, by id (one query per 500)."""
        found: dict[str, SubjectKeyInfo] = {}
        with self._connection() as c:
            for chunk in _chunks(sorted(set(subject_ids))):
                query = select(SUBJECTS).where(SubjectRow.subject_id.in_(chunk))
                for row in c.execute(query):  # Core: no ORM loading per row
                    found[row.subject_id] = _subject(row)
        return found

    def records_by_id(
        self, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], StoredRecord]:
        """The readable records among (subject_id, record_id) ``keys``, by key."""
        wanted = set(keys)
        found: dict[tuple[str, str], StoredRecord] = {}
        table = RecordRow.__table__
        with self._connection() as c:
            for chunk in _chunks(sorted({record_id for _, record_id in wanted})):
                query = select(table).where(RecordRow.record_id.in_(chunk), _readable())
                for row in c.execute(query):
                    if (row.subject_id, row.record_id) in wanted:
                        found[(row.subject_id, row.record_id)] = _record(row)
        return found

    def records_page(
        self, subject_id: str, category: str, after_record_id: str, limit: int
    ) -> Sequence[RecordLike]:
        """One page of a subject's records of one category in record-id order, as
        database rows (no ORM object, no dataclass per row: exports read hundreds of
        thousands of them)."""
        c = RECORDS.c
        query = (
            select(
                c.subject_id,
                c.record_id,
                c.category,
                c.version,
                c.ciphertext,
                c.origin,
                c.created_at,
                c.updated_at,
                c.key_scheme,
                c.bucket_id,
            )
            .where(
                RecordRow.subject_id == subject_id,
                RecordRow.category == category,
                RecordRow.record_id > after_record_id,
                _readable(),
            )
            .order_by(RecordRow.record_id)
            .limit(limit)
        )
        with self._connection() as connection:
            return cast(Sequence[RecordLike], connection.execute(query).all())

    def record_categories(self, subject_id: str) -> list[str]:
        """The categories the subject has readable records in, sorted."""
        query = (
            select(RecordRow.category)
            .where(RecordRow.subject_id == subject_id, _readable())
            .distinct()
            .order_by(RecordRow.category)
        )
        with self._session() as s:
            return list(s.scalars(query))

    def existing_singletons(self, pairs: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (subject id, category) pairs already hold their one record."""
        found: set[tuple[str, str]] = set()
        if not pairs:
            return found
        wanted = set(pairs)
        with self._connection() as c:
            for chunk in _chunks(sorted({subject_id for subject_id, _ in wanted})):
                query = select(RecordRow.subject_id, RecordRow.singleton).where(
                    RecordRow.subject_id.in_(chunk), RecordRow.singleton.is_not(None)
                )
                found.update(
                    (row.subject_id, row.singleton)
                    for row in c.execute(query)
                    if (row.subject_id, row.singleton) in wanted
                )
        return found

    def insert_records(
        self, records: Sequence[tuple[StoredRecord, str | None]], key_ids: Mapping[str, str]
    ) -> list[str]:
        """Insert ``records`` (each with its singleton) in one transaction, if and only
        if every subject is still writable under the key it was sealed with
        (``key_ids``: subject id -> key id).

        Returns the subjects whose state or key changed meanwhile; nothing is inserted
        then. The subject rows are locked first (share lock on PostgreSQL, the write
        lock on SQLite), so a shred or re-key waits for this insert or goes first.
        """
        with sqlite_writer(self.engine), self._connection() as c:
            if c.dialect.name == "sqlite":
                c.exec_driver_sql("BEGIN IMMEDIATE")
            current: dict[str, tuple[str, str]] = {}
            for chunk in _chunks(sorted(key_ids)):
                query = (
                    select(SubjectRow.subject_id, SubjectRow.key_id, SubjectRow.state)
                    .where(SubjectRow.subject_id.in_(chunk))
                    .with_for_update(read=True)
                )
                for row in c.execute(query):
                    current[row.subject_id] = (row.key_id, row.state)
            stale = [
                subject_id
                for subject_id, key_id in key_ids.items()
                if subject_id not in current
                or current[subject_id][0] != key_id
                or current[subject_id][1] not in WRITABLE
            ]
            if stale:
                return stale
            # Core executemany (not the ORM's bulk insert): a batch's rows are plain dicts.
            c.execute(
                insert(RECORDS),
                [
                    {
                        "subject_id": r.subject_id,
                        "record_id": r.record_id,
                        "category": r.category,
                        "singleton": singleton,
                        "version": r.version,
                        "ciphertext": r.ciphertext,
                        "origin": r.origin,
                        "created_at": r.created_at,
                        "updated_at": r.updated_at,
                        "key_scheme": r.key_scheme,
                        "bucket_id": r.bucket_id,
                        "retain_until": r.retain_until,
                    }
                    for r, singleton in records
                ],
            )
            return []

    def insert_record(self, record: StoredRecord, singleton: str | None, key_id: str) -> bool:
        """Insert a record if, and only if, its subject is still writable under ``key_id``
        (see :meth:`insert_records`). Returns False when the subject's state or key
        changed.

        Concurrent inserts are group-committed (:mod:`vault.groupcommit`): the records
        of calls that queue while one insert is written go in the next transaction
        together. Each call still gets its own answer: a batch that cannot go as one
        (a stale subject, a duplicate profile record) is retried without the stale
        subjects, then item by item.
        """
        [result] = self._inserts.submit([(record, singleton, key_id)])
        if isinstance(result, OubliError):
            raise result
        return result

    def _insert_group(self, items: list[_Insert]) -> list[bool | OubliError]:
        key_ids: dict[str, str] = {}
        if len(items) == 1 or any(
            key_ids.setdefault(record.subject_id, key_id) != key_id for record, _, key_id in items
        ):
            return [self._insert_alone(item) for item in items]
        try:
            stale = set(self.insert_records([(r, one) for r, one, _ in items], key_ids))
        except OubliError:  # e.g. one duplicate profile record: each gets its own answer
            return [self._insert_alone(item) for item in items]
        if not stale:
            return [True] * len(items)
        # Nothing was written: again without the subjects whose state or key changed.
        fresh = [item for item in items if item[0].subject_id not in stale]
        done = iter(self._insert_group(fresh) if fresh else [])
        return [False if item[0].subject_id in stale else next(done) for item in items]

    def _insert_alone(self, item: _Insert) -> bool | OubliError:
        record, singleton, key_id = item
        try:
            return not self.insert_records([(record, singleton)], {record.subject_id: key_id})
        except OubliError as e:
            return e

    def record(self, subject_id: str, record_id: str) -> StoredRecord | None:
        query = select(RecordRow).where(
            RecordRow.subject_id == subject_id, RecordRow.record_id == record_id, _readable()
        )
        with self._session() as s:
            row = s.scalars(query).first()
            return None if row is None else _record(row)

    def records(
        self,
        subject_id: str,
        *,
        categories: Sequence[str] | None = None,
        after_record_id: str = "",
        limit: int | None = None,
        scheme: str | None = None,
    ) -> Sequence[StoredRecord]:
        query = (
            select(RecordRow)
            .where(
                RecordRow.subject_id == subject_id,
                RecordRow.record_id > after_record_id,
                _readable(),
            )
            .order_by(RecordRow.record_id)
        )
        if categories is not None:
            query = query.where(RecordRow.category.in_(categories))
        if scheme is not None:
            query = query.where(RecordRow.key_scheme == scheme)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as s:
            return [_record(row) for row in s.scalars(query)]

    def subject_with_records(self, subject_id: str) -> tuple[SubjectKeyInfo, list[StoredRecord]]:
        """The subject and all its readable records as of one moment, so every record
        read is sealed under the key the subject row names: the subject row is
        share-locked first on PostgreSQL (a re-key cannot switch the key until this
        read ends), and SQLite reads both in one transaction (one snapshot)."""
        query = (
            select(RECORDS)
            .where(RECORDS.c.subject_id == subject_id, _readable())
            .order_by(RECORDS.c.record_id)
        )
        with self._connection() as c:
            if c.dialect.name == "sqlite":
                c.exec_driver_sql("BEGIN")  # pysqlite would not begin before a SELECT
            row = c.execute(_SUBJECT.with_for_update(read=True), {"subject_id": subject_id}).first()
            if row is None:
                raise SubjectNotFound("subject not found", subject_id=subject_id)
            return _subject(row), [_record(r) for r in c.execute(query)]

    def update_record(
        self,
        record: StoredRecord,
        expected: StoredRecord,
        key_id: str,
        index_tags: Mapping[str, int] | None = None,
    ) -> bool:
        """Compare-and-set: write ``record`` over the row ``expected`` (as the caller read
        it: same version, key scheme and bucket) if the subject is still writable under
        ``key_id``, the key ``record`` was sealed with. False when anything changed.

        ``index_tags`` (for an indexed category) replace the record's blind-index rows in
        the same transaction: the index holds the tags of the content stored, whatever
        order concurrent writers commit in.

        The subject row is share-locked and its key checked first, in its own statement
        (PostgreSQL; SQLite's write lock serializes the whole transaction): a re-key holds
        that row ``FOR UPDATE`` until it commits, so this write lands wholly before the
        re-key reads the records or sees the new key and writes nothing. A single UPDATE
        checking the key in a subquery is not enough on READ COMMITTED: after waiting on
        the record's row lock, PostgreSQL re-checks the record row only, not the subject
        row the subquery read before the wait.
        """
        with sqlite_writer(self.engine), self._connection() as c:
            if c.dialect.name == "sqlite":
                c.exec_driver_sql("BEGIN IMMEDIATE")
            if not _holds_key(c, record.subject_id, key_id):
                return False
            result = c.execute(
                update(RECORDS)
                .where(
                    RECORDS.c.subject_id == record.subject_id,
                    RECORDS.c.record_id == record.record_id,
                    *_unchanged(expected),
                )
                .values(
                    version=record.version,
                    ciphertext=record.ciphertext,
                    origin=record.origin,
                    updated_at=record.updated_at,
                    key_scheme=record.key_scheme,
                    bucket_id=record.bucket_id,
                    retain_until=record.retain_until,
                )
            )
            if not getattr(result, "rowcount", 0):
                return False
            if index_tags is not None:
                replace_index_rows(c, record.subject_id, record.record_id, index_tags)
            return True

    def delete_record(self, subject_id: str, record_id: str) -> bool:
        with self._session() as s:
            result = s.execute(
                delete(RecordRow).where(
                    RecordRow.subject_id == subject_id, RecordRow.record_id == record_id
                )
            )
            return bool(getattr(result, "rowcount", 0))

    def move_records(self, moved: Sequence[StoredRecord]) -> bool:
        """Replace ciphertext and key scheme of records (re-encryption), one transaction,
        all or nothing: each record's ``version`` must still be the one read (a move does
        not change it). False, and nothing written, when one changed or went meanwhile.
        """
        try:
            with sqlite_writer(self.engine), self._connection() as c:
                if c.dialect.name == "sqlite":
                    c.exec_driver_sql("BEGIN IMMEDIATE")
                for record in moved:
                    result = c.execute(
                        update(RECORDS)
                        .where(
                            RECORDS.c.subject_id == record.subject_id,
                            RECORDS.c.record_id == record.record_id,
                            RECORDS.c.version == record.version,
                        )
                        .values(
                            ciphertext=record.ciphertext,
                            key_scheme=record.key_scheme,
                            bucket_id=record.bucket_id,
                            retain_until=record.retain_until,
                        )
                    )
                    if getattr(result, "rowcount", 0) != 1:
                        raise _Changed
        except _Changed:
            return False
        return True

    def rekey(
        self,
        subject_id: str,
        old_key_id: str,
        new_key_id: str,
        wrapped_dek: bytes,
        key_version: int,
        reencrypted: Sequence[StoredRecord],
        deleted_record_ids: Sequence[str],
        now: datetime,
        *,
        withdrawn_consent: str | None = None,
    ) -> bool:
        """Switch a subject to a new key with its records re-encrypted, in one
        transaction; the old key goes into the ledger (to be destroyed next).
        ``withdrawn_consent`` is taken off the subject's consents as they stand in this
        transaction (not as the caller read them: a consent granted meanwhile stays).

        ``reencrypted`` carry the version, key scheme and bucket they were read with:
        if any record was written, moved or added since (or the subject's key or state
        changed), nothing is written and the answer is False: the caller reads again.
        The subject row is locked ``FOR UPDATE`` first (SQLite: ``BEGIN IMMEDIATE``),
        and every rewrite takes it ``FOR SHARE`` before writing (:meth:`update_record`,
        :meth:`insert_records`), so no write slips between this check and the commit.
        """
        try:
            with sqlite_writer(self.engine), self._session() as s:
                c = s.connection()
                if c.dialect.name == "sqlite":
                    c.exec_driver_sql("BEGIN IMMEDIATE")
                row = s.get(SubjectRow, subject_id, with_for_update=True)
                if row is None or row.key_id != old_key_id or row.state not in WRITABLE:
                    return False
                # Readable records only, as the caller listed them: rows of a bucket being
                # destroyed are unreadable already and go with their bucket.
                current = {
                    r.record_id: (r.version, r.key_scheme, r.bucket_id)
                    for r in s.execute(
                        select(
                            RecordRow.record_id,
                            RecordRow.version,
                            RecordRow.key_scheme,
                            RecordRow.bucket_id,
                        ).where(RecordRow.subject_id == subject_id, _readable())
                    )
                }
                read = {r.record_id: (r.version, r.key_scheme, r.bucket_id) for r in reencrypted}
                if set(current) != set(read) | set(deleted_record_ids) or any(
                    current[record_id] != seen for record_id, seen in read.items()
                ):
                    return False  # written meanwhile: the caller starts again
                if deleted_record_ids:
                    s.execute(
                        delete(RecordRow).where(
                            RecordRow.subject_id == subject_id,
                            RecordRow.record_id.in_(deleted_record_ids),
                        )
                    )
                for record in reencrypted:
                    result = s.execute(
                        update(RecordRow)
                        .where(
                            RecordRow.subject_id == subject_id,
                            RecordRow.record_id == record.record_id,
                            *_unchanged(record),
                        )
                        .values(ciphertext=record.ciphertext)
                    )
                    if getattr(result, "rowcount", 0) != 1:  # a delete takes no subject lock
                        raise _Changed
                row.key_id = new_key_id
                row.wrapped_dek = wrapped_dek
                row.key_version = key_version
                row.updated_at = now
                if withdrawn_consent is not None:
                    consents = _subject(row).consents
                    consents.pop(withdrawn_consent, None)
                    row.consents = json.dumps(consents, sort_keys=True)
                self._ledger(s, old_key_id, "retired", now, subject_id)
                return True
        except _Changed:
            return False

    # --- retention buckets ----------------------------------------------------------

    def bucket(self, bucket_id: str) -> BucketInfo | None:
        with self._session() as s:
            row = s.get(RetentionBucketRow, bucket_id)
            return None if row is None else _bucket(row)

    def insert_bucket(self, info: BucketInfo, now: datetime) -> None:
        with self._session() as s:
            s.add(
                RetentionBucketRow(
                    bucket_id=info.bucket_id,
                    kind=info.kind,
                    category=info.category,
                    month=info.month,
                    destroy_at=info.destroy_at,
                    key_id=info.key_id,
                    wrapped_dek=info.wrapped_dek,
                    key_version=info.key_version,
                    state=info.state,
                    created_at=now,
                )
            )

    def due_buckets(self, now: datetime) -> list[BucketInfo]:
        query = (
            select(RetentionBucketRow)
            .where(
                RetentionBucketRow.state.in_((BUCKET_ACTIVE, BUCKET_DESTROYING)),
                RetentionBucketRow.destroy_at <= now,
            )
            .order_by(RetentionBucketRow.destroy_at, RetentionBucketRow.bucket_id)
        )
        with self._session() as s:
            return [_bucket(row) for row in s.scalars(query)]

    def bucket_record_count(self, bucket_id: str) -> int:
        with self._session() as s:
            query = select(func.count()).select_from(RecordRow)
            return int(s.scalar(query.where(RecordRow.bucket_id == bucket_id)) or 0)

    def mark_bucket_destroying(self, bucket_id: str) -> None:
        with self._session() as s:
            s.execute(
                update(RetentionBucketRow)
                .where(
                    RetentionBucketRow.bucket_id == bucket_id,
                    RetentionBucketRow.state == BUCKET_ACTIVE,
                )
                .values(state=BUCKET_DESTROYING)
            )

    def finish_bucket(self, bucket_id: str, now: datetime) -> tuple[int, int]:
        """After the bucket's key is destroyed: delete its (unreadable) records, close
        the subjects that only had held records in it. Returns (records, subjects)."""
        with self._session() as s:
            row = s.get(RetentionBucketRow, bucket_id, with_for_update=True)
            if row is None or row.state == BUCKET_DESTROYED:
                return 0, 0
            deleted = s.execute(delete(RecordRow).where(RecordRow.bucket_id == bucket_id))
            finished = s.execute(
                update(SubjectRow)
                .where(SubjectRow.state == HELD, SubjectRow.hold_bucket_id == bucket_id)
                .values(state=SHREDDED, hold_bucket_id=None, hold_until=None, updated_at=now)
            )
            row.state = BUCKET_DESTROYED
            row.wrapped_dek = None
            row.destroyed_at = now
            self._ledger(s, row.key_id, "bucket", now)
            return (
                int(getattr(deleted, "rowcount", 0) or 0),
                int(getattr(finished, "rowcount", 0) or 0),
            )

    # --- rights requests ------------------------------------------------------------

    def insert_request(self, request: RightsRequest) -> None:
        with self._session() as s:
            s.add(
                RightsRequestRow(
                    request_id=request.request_id,
                    subject_id=request.subject_id,
                    kind=request.kind,
                    status=request.status,
                    received_at=request.received_at,
                    due_at=request.due_at,
                    completed_at=request.completed_at,
                )
            )

    def request(self, request_id: str) -> RightsRequest | None:
        with self._session() as s:
            row = s.get(RightsRequestRow, request_id)
            return None if row is None else _request(row)

    def close_request(self, request_id: str, status: str, now: datetime) -> bool:
        with self._session() as s:
            result = s.execute(
                update(RightsRequestRow)
                .where(RightsRequestRow.request_id == request_id, RightsRequestRow.status == "open")
                .values(status=status, completed_at=now)
            )
            return bool(getattr(result, "rowcount", 0))

    def requests(
        self,
        *,
        subject_id: str | None = None,
        status: str | None = None,
        due_before: datetime | None = None,
    ) -> list[RightsRequest]:
        query = select(RightsRequestRow).order_by(
            RightsRequestRow.due_at, RightsRequestRow.request_id
        )
        if subject_id is not None:
            query = query.where(RightsRequestRow.subject_id == subject_id)
        if status is not None:
            query = query.where(RightsRequestRow.status == status)
        if due_before is not None:
            query = query.where(RightsRequestRow.due_at < due_before)
        with self._session() as s:
            return [_request(row) for row in s.scalars(query)]
