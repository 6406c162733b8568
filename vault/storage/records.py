"""Records: reads (by id, page, categories), inserts (group commit), rewrites, deletes,
moves."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import cast

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    bindparam,
    delete,
    select,
    type_coerce,
    update,
)

from vault.errors import OubliError
from vault.storage.audit_log import AuditRide, committed, current_ride, write_rides
from vault.storage.base import Repository
from vault.storage.bulk_insert import insert_record_rows
from vault.storage.groupcommit import GroupCommit
from vault.storage.pair_lookup import rows_by_keys
from vault.storage.rows import RecordLike, StoredRecord, stored_record
from vault.storage.statements import (
    RECORDS,
    Changed,
    chunks,
    holds_key,
    live_bucket_or_none,
    rewrite_record,
)
from vault.storage.tables import (
    RecordRow,
    SubjectRow,
)
from vault.vocabulary import WRITABLE, KeyScheme

#: A record to insert, its singleton (profile categories), the subject's key id and the
#: audit ride of the call that inserts it (vault.storage.audit_log.AuditRide).
_Insert = tuple["StoredRecord", str | None, str, AuditRide | None]

#: Built once (every put runs them): the subjects' key and state, share-locked.
_SUBJECT_KEYS = select(SubjectRow.subject_id, SubjectRow.key_id, SubjectRow.state)
_LOCK_SUBJECT_KEYS = _SUBJECT_KEYS.where(
    SubjectRow.subject_id.in_(bindparam("subject_ids", expanding=True))
).with_for_update(read=True)
_LOCK_SUBJECT_KEY = _SUBJECT_KEYS.where(
    SubjectRow.subject_id == bindparam("subject_id")
).with_for_update(read=True)


class RecordRepository(Repository):
    """Records: reads (by id, page, categories), inserts (group commit), rewrites, deletes,
    moves."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._inserts: GroupCommit[_Insert, bool | OubliError] = GroupCommit(self._insert_group)

    def records_by_id(
        self, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], StoredRecord]:
        """The readable records among (subject_id, record_id) ``keys``, by key: one
        statement joining the pairs on the primary key (vault.storage.pair_lookup)."""
        with self._connection() as c:
            return {
                (row.subject_id, row.record_id): stored_record(row) for row in rows_by_keys(c, keys)
            }

    def records_page(
        self, subject_id: str, category: str, after_record_id: str, limit: int
    ) -> Sequence[RecordLike]:
        """One page of a subject's records of one category in record-id order, as
        database rows (no ORM object, no dataclass per row: exports read hundreds of
        thousands of them). Their times are naive UTC, as stored: no time zone is
        attached per row (the export writes them as UTC text, once per distinct time)."""
        c = RECORDS.c
        query = (
            select(
                c.subject_id,
                c.record_id,
                c.category,
                c.version,
                c.ciphertext,
                c.origin,
                type_coerce(c.created_at, DateTime()).label("created_at"),
                type_coerce(c.updated_at, DateTime()).label("updated_at"),
                c.key_scheme,
                c.bucket_id,
            )
            .where(
                RecordRow.subject_id == subject_id,
                RecordRow.category == category,
                RecordRow.record_id > after_record_id,
                live_bucket_or_none(),
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
            .where(RecordRow.subject_id == subject_id, live_bucket_or_none())
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
            for chunk in chunks(sorted({subject_id for subject_id, _ in wanted})):
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
        self,
        records: Sequence[tuple[StoredRecord, str | None]],
        key_ids: Mapping[str, str],
        rides: Sequence[AuditRide | None] = (),
    ) -> list[str]:
        """Insert ``records`` (each with its singleton) in one transaction, if and only
        if every subject is still writable under the key it was sealed with
        (``key_ids``: subject id -> key id), with the audit entries of ``rides`` (the
        calls that made them): records and entries commit together or not at all.

        Returns the subjects whose state or key changed meanwhile; nothing is inserted
        then. The subject rows are locked first (share lock on PostgreSQL, the write
        lock on SQLite), so a shred or re-key waits for this insert or goes first.
        """
        with self._write_connection() as c:
            stale = self._insert_if_writable(c, records, key_ids)
            written = [] if stale else write_rides(c, rides)
        committed(written)
        return stale

    @staticmethod
    def _insert_if_writable(
        c: Connection,
        records: Sequence[tuple[StoredRecord, str | None]],
        key_ids: Mapping[str, str],
    ) -> list[str]:
        current: dict[str, tuple[str, str]] = {}
        # A unary put locks its one subject without an IN list to expand.
        for statement, params in (
            [(_LOCK_SUBJECT_KEY, {"subject_id": next(iter(key_ids))})]
            if len(key_ids) == 1
            else [
                (_LOCK_SUBJECT_KEYS, {"subject_ids": list(chunk)})
                for chunk in chunks(sorted(key_ids))
            ]
        ):
            for row in c.execute(statement, params):
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
        # One COPY (PostgreSQL) / prepared executemany (SQLite): see bulk_insert.
        insert_record_rows(c, records)
        return []

    def insert_record(self, record: StoredRecord, singleton: str | None, key_id: str) -> bool:
        """Insert a record if, and only if, its subject is still writable under ``key_id``
        (see :meth:`insert_records`). Returns False when the subject's state or key
        changed.

        Concurrent inserts are group-committed (:mod:`vault.storage.groupcommit`): the records
        of calls that queue while one insert is written go in the next transaction
        together. Each call still gets its own answer: a batch that cannot go as one
        (a stale subject, a duplicate profile record) is retried without the stale
        subjects, then item by item.
        """
        [result] = self._inserts.submit([(record, singleton, key_id, current_ride())])
        if isinstance(result, OubliError):
            raise result
        return result

    def _insert_group(self, items: list[_Insert]) -> list[bool | OubliError]:
        key_ids: dict[str, str] = {}
        if len(items) == 1 or any(
            key_ids.setdefault(r.subject_id, key_id) != key_id for r, _, key_id, _ in items
        ):
            return [self._insert_alone(item) for item in items]
        try:
            stale = set(
                self.insert_records(
                    [(r, one) for r, one, _, _ in items], key_ids, [ride for *_, ride in items]
                )
            )
        except OubliError:  # e.g. one duplicate profile record: each gets its own answer
            return [self._insert_alone(item) for item in items]
        if not stale:
            return [True] * len(items)
        # Nothing was written: again without the subjects whose state or key changed.
        fresh = [item for item in items if item[0].subject_id not in stale]
        done = iter(self._insert_group(fresh) if fresh else [])
        return [False if item[0].subject_id in stale else next(done) for item in items]

    def _insert_alone(self, item: _Insert) -> bool | OubliError:
        record, singleton, key_id, ride = item
        try:
            return not self.insert_records(
                [(record, singleton)], {record.subject_id: key_id}, [ride]
            )
        except OubliError as e:
            return e

    def record(self, subject_id: str, record_id: str) -> StoredRecord | None:
        query = select(RecordRow).where(
            RecordRow.subject_id == subject_id,
            RecordRow.record_id == record_id,
            live_bucket_or_none(),
        )
        with self._session() as s:
            row = s.scalars(query).first()
            return None if row is None else stored_record(row)

    def records(
        self,
        subject_id: str,
        *,
        categories: Sequence[str] | None = None,
        after_record_id: str = "",
        limit: int | None = None,
        scheme: KeyScheme | None = None,
    ) -> Sequence[StoredRecord]:
        query = (
            select(RecordRow)
            .where(
                RecordRow.subject_id == subject_id,
                RecordRow.record_id > after_record_id,
                live_bucket_or_none(),
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
            return [stored_record(row) for row in s.scalars(query)]

    def update_record(
        self,
        record: StoredRecord,
        expected: StoredRecord,
        key_id: str,
        index_tags: Mapping[int, Mapping[str, int]] | None = None,
    ) -> bool:
        """Compare-and-set: write ``record`` over the row ``expected`` (as the caller read
        it: same version, key scheme and bucket) if the subject is still writable under
        ``key_id``, the key ``record`` was sealed with. False when anything changed.

        ``index_tags`` (for an indexed category: {generation: {kind: tag}}) replace the
        record's blind-index rows in the same transaction: the index holds the tags of
        the content stored, whatever order concurrent writers commit in. When they are
        not for exactly the live index key generations, IndexGenerationsChanged is
        raised and nothing is written (statements.replace_index_rows).

        The subject row is share-locked and its key checked first, in its own statement
        (PostgreSQL; SQLite's write lock serializes the whole transaction): a re-key holds
        that row ``FOR UPDATE`` until it commits, so this write lands wholly before the
        re-key reads the records or sees the new key and writes nothing. A single UPDATE
        checking the key in a subquery is not enough on READ COMMITTED: after waiting on
        the record's row lock, PostgreSQL re-checks the record row only, not the subject
        row the subquery read before the wait.

        The current call's audit ride (vault.storage.audit_log) is written in the same
        transaction when the record is.
        """
        with self._write_connection() as c:
            if not holds_key(c, record.subject_id, key_id):
                return False
            if not rewrite_record(c, record, expected, index_tags):
                return False
            written = write_rides(c, [current_ride()])
        committed(written)
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
            with self._write_connection() as c:
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
                        raise Changed
        except Changed:
            return False
        return True
