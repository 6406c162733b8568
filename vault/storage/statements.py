"""SQL shared by the repositories: Core tables, prepared statements, the compare-and-set
conditions and the subject share lock."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from vault.storage.prepared import PreparedRead
from vault.storage.rows import StoredRecord
from vault.storage.tables import (
    BlindIndexRow,
    KeyLedgerRow,
    LedgerPositionRow,
    RecordRow,
    RetentionBucketRow,
    ServiceKeyRow,
    ShredReceiptRow,
    SubjectRow,
)
from vault.vocabulary import WRITABLE, BucketState

#: The records table for Core statements (batches and exports skip the ORM's per-row cost).
RECORDS = cast(Table, RecordRow.__table__)
SUBJECTS = cast(Table, SubjectRow.__table__)
SHRED_RECEIPTS = cast(Table, ShredReceiptRow.__table__)
KEY_LEDGER = cast(Table, KeyLedgerRow.__table__)
BLIND_INDEX = cast(Table, BlindIndexRow.__table__)
LEDGER_POSITION = cast(Table, LedgerPositionRow.__table__)
SERVICE_KEYS = cast(Table, ServiceKeyRow.__table__)


def _subject_and_record() -> Any:
    """Built once (a fresh statement per call cost more to compile than to run)."""
    record = RECORDS.alias("r")
    live = (
        select(RetentionBucketRow.bucket_id)
        .where(
            RetentionBucketRow.bucket_id == record.c.bucket_id,
            RetentionBucketRow.state == BucketState.ACTIVE,
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


#: The read path's reads: compiled once, run on the driver's cursor (vault.storage.prepared).
SUBJECT_AND_RECORD = PreparedRead(_subject_and_record())
SUBJECT_BY_ID = PreparedRead(
    select(SUBJECTS).where(SUBJECTS.c.subject_id == bindparam("subject_id"))
)

#: Ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits.
IN_CHUNK = 500


def chunks(values: Sequence[str], size: int = IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def live_bucket_or_none() -> Any:
    """Records whose bucket (if any) still has its key: rows of a destroyed bucket
    are deleted right after, but a reader must not see them in between."""
    live = select(RetentionBucketRow.bucket_id).where(
        RetentionBucketRow.bucket_id == RecordRow.bucket_id,
        RetentionBucketRow.state == BucketState.ACTIVE,
    )
    return or_(RecordRow.bucket_id.is_(None), live.exists())


class Changed(Exception):
    """A compare-and-set inside a transaction found a row changed: roll back."""


def unchanged(read: StoredRecord) -> tuple[Any, ...]:
    """Conditions: the record row is as ``read`` saw it (version, key scheme, bucket)."""
    return (
        RECORDS.c.version == read.version,
        RECORDS.c.key_scheme == read.key_scheme,
        RECORDS.c.bucket_id.is_not_distinct_from(read.bucket_id),
    )


def holds_key(c: Connection, subject_id: str, key_id: str) -> bool:
    """Share-lock the subject row (PostgreSQL) and say whether the subject is still
    writable under ``key_id``: a re-key or a shred then waits for this transaction."""
    row = c.execute(
        select(SUBJECTS.c.key_id, SUBJECTS.c.state)
        .where(SUBJECTS.c.subject_id == subject_id)
        .with_for_update(read=True)
    ).first()
    return row is not None and row.key_id == key_id and row.state in WRITABLE


#: The index key of generation 1 is the service key of this name; generation N > 1 is
#: "lookup-index.N" (vault.crypto.blind_index keeps the keys, these statements only
#: read which generations are live).
INDEX_KEY_NAME = "lookup-index"


def index_key_name(generation: int) -> str:
    """The ``service_keys`` name of the index key of ``generation`` (>= 1)."""
    if generation < 1:
        raise ValueError("index key generations start at 1")
    return INDEX_KEY_NAME if generation == 1 else f"{INDEX_KEY_NAME}.{generation}"


def index_key_generation(name: str) -> int | None:
    """The generation a ``service_keys`` name holds, or None if it is not an index key."""
    if name == INDEX_KEY_NAME:
        return 1
    prefix, dot, number = name.partition(".")
    if prefix != INDEX_KEY_NAME or not dot or not number.isdigit() or number.startswith("0"):
        return None
    generation = int(number)
    return generation if generation > 1 else None


class IndexGenerationsChanged(Exception):
    """The index key generations live in ``service_keys`` are not the ones a writer or a
    lookup computed tags for (another replica rotated the index key): roll back, load
    the keys again and retry."""

    def __init__(self, live: frozenset[int]) -> None:
        super().__init__(f"live index key generations: {sorted(live)}")
        self.live = live


def live_index_generations(c: Connection, *, lock: bool = False) -> frozenset[int]:
    """The index key generations whose keys are in ``service_keys``, in the caller's
    transaction; ``{1}`` while no index key exists yet (the first one is generation 1).

    ``lock``: key-share-lock their rows (PostgreSQL ``FOR KEY SHARE``, the lock a
    foreign key check takes), so that a rotation retiring one of them (a DELETE) waits
    for this transaction, and this one waits for a retirement under way.
    """
    query = select(SERVICE_KEYS.c.name).where(
        SERVICE_KEYS.c.name.startswith(INDEX_KEY_NAME, autoescape=True)
    )
    if lock:
        query = query.with_for_update(read=True, key_share=True)
    found = {index_key_generation(name) for name in c.execute(query).scalars()}
    live = frozenset(g for g in found if g is not None)
    return live or frozenset({1})


def replace_index_rows(
    c: Connection,
    subject_id: str,
    record_id: str,
    tags: Mapping[int, Mapping[str, int]],
) -> None:
    """Replace a record's blind-index rows with ``tags`` ({generation: {kind: tag}},
    computed by vault.crypto.blind_index), inside the caller's transaction.

    ``tags`` must name exactly the generations live in ``service_keys``, read here
    under a share lock: otherwise nothing is written and IndexGenerationsChanged is
    raised (the caller's transaction rolls back, the writer loads the keys again). So
    a writer that does not know a new generation cannot leave a record without its
    tags, and one that still knows a retired generation cannot write its rows back.
    """
    live = live_index_generations(c, lock=True)
    if live != frozenset(tags):
        raise IndexGenerationsChanged(live)
    c.execute(
        delete(BLIND_INDEX).where(
            BLIND_INDEX.c.subject_id == subject_id, BLIND_INDEX.c.record_id == record_id
        )
    )
    rows = [
        {
            "subject_id": subject_id,
            "record_id": record_id,
            "kind": kind,
            "generation": generation,
            "tag": tag,
        }
        for generation, by_kind in sorted(tags.items())
        for kind, tag in sorted(by_kind.items())
    ]
    if rows:
        c.execute(insert(BLIND_INDEX), rows)


def rewrite_record(
    c: Connection,
    record: StoredRecord,
    expected: StoredRecord,
    index_tags: Mapping[int, Mapping[str, int]] | None,
) -> bool:
    """Write ``record`` over its row if the row is still as ``expected`` (version, key
    scheme, bucket), and replace its blind-index rows with ``index_tags`` (when given)
    in the caller's transaction; False, with nothing written, when the row changed."""
    result = c.execute(
        update(RECORDS)
        .where(
            RECORDS.c.subject_id == record.subject_id,
            RECORDS.c.record_id == record.record_id,
            *unchanged(expected),
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
    if getattr(result, "rowcount", 0) != 1:
        return False
    if index_tags is not None:
        replace_index_rows(c, record.subject_id, record.record_id, index_tags)
    return True


#: A record to insert, its singleton (profile categories) and the subject's key id.


def add_to_key_ledger(
    s: Session, key_id: str, kind: str, now: datetime, subject_id: str | None = None
) -> None:
    """Record, in the caller's transaction, that oubli destroyed ``key_id`` (reconcile
    destroys it again after a KMS restore)."""
    if s.get(KeyLedgerRow, key_id) is None:
        s.add(KeyLedgerRow(key_id=key_id, kind=kind, recorded_at=now, subject_id=subject_id))


def raise_ledger_position(c: Connection, seq: int) -> None:
    """Move this database's erasure-ledger high-water mark up to ``seq`` (never down),
    in the caller's transaction."""
    if seq > 0:
        c.execute(
            update(LEDGER_POSITION)
            .where(LEDGER_POSITION.c.id == 1, LEDGER_POSITION.c.seq < seq)
            .values(seq=seq)
        )
