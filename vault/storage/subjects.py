"""Subjects: insert, read (alone, with a record, many), flags, state changes."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from datetime import datetime

from sqlalchemy import (
    func,
    select,
    update,
)

from vault.errors import SubjectNotFound
from vault.storage.audit_log import committed, current_ride, write_rides
from vault.storage.base import Repository
from vault.storage.rows import (
    StoredRecord,
    SubjectFlags,
    SubjectKeyInfo,
    stored_record,
    subject_info,
)
from vault.storage.statements import (
    RECORDS,
    SUBJECT_AND_RECORD,
    SUBJECT_BY_ID,
    SUBJECTS,
    chunks,
    live_bucket_or_none,
)
from vault.storage.tables import (
    RecordRow,
    SubjectRow,
)
from vault.vocabulary import WRITABLE, SubjectState


class SubjectRepository(Repository):
    """Subjects: insert, read (alone, with a record, many), flags, state changes."""

    def insert_subject(self, info: SubjectKeyInfo) -> None:
        """Insert the subject's row, with the current call's audit ride (one transaction:
        vault.storage.audit_log)."""
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
                    dek_created_at=info.created_at,
                    kek_rotated_at=info.created_at,
                    restricted=False,
                    objections="[]",
                    consents="{}",
                )
            )
            s.flush()  # the subject first: a failed insert writes no entry
            written = write_rides(s.connection(), [current_ride()])
        committed(written)

    def subject(self, subject_id: str) -> SubjectKeyInfo:
        row = SUBJECT_BY_ID.first(self.engine, {"subject_id": subject_id})
        if row is None:
            raise SubjectNotFound("subject not found", subject_id=subject_id)
        return subject_info(row)

    def subject_and_record(
        self, subject_id: str, record_id: str
    ) -> tuple[SubjectKeyInfo, StoredRecord | None]:
        """The subject and one of its readable records, in one statement (the read
        path: one round trip instead of two)."""
        params = {"subject_id": subject_id, "record_id": record_id}
        row = SUBJECT_AND_RECORD.first(self.engine, params)
        if row is None:
            raise SubjectNotFound("subject not found", subject_id=subject_id)
        subject = subject_info(row)
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
            count = s.scalar(query.where(RecordRow.subject_id == subject_id, live_bucket_or_none()))
            return int(count or 0)

    def close_account(self, subject_id: str, now: datetime, erase_at: datetime) -> bool:
        """An active subject becomes closed, its erasure scheduled at ``erase_at``;
        False when it is not active."""
        with self._session() as s:
            result = s.execute(
                update(SubjectRow)
                .where(SubjectRow.subject_id == subject_id, SubjectRow.state == SubjectState.ACTIVE)
                .values(
                    state=SubjectState.CLOSED,
                    closed_at=now,
                    scheduled_shred_at=erase_at,
                    updated_at=now,
                )
            )
            return bool(getattr(result, "rowcount", 0))

    def reopen_account(self, subject_id: str, now: datetime) -> bool:
        """A closed subject becomes active again, its scheduled erasure dropped; False
        when it is not closed."""
        with self._session() as s:
            result = s.execute(
                update(SubjectRow)
                .where(SubjectRow.subject_id == subject_id, SubjectRow.state == SubjectState.CLOSED)
                .values(
                    state=SubjectState.ACTIVE,
                    closed_at=None,
                    scheduled_shred_at=None,
                    updated_at=now,
                )
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
        with self._write_session() as s:
            row = s.get(SubjectRow, subject_id, with_for_update=True)
            if row is None or row.state not in WRITABLE:
                return None
            flags = change(subject_info(row))
            if flags.restricted is not None:
                row.restricted = flags.restricted
            if flags.objections is not None:
                row.objections = json.dumps(sorted(flags.objections))
            if flags.consents is not None:
                row.consents = json.dumps(dict(flags.consents), sort_keys=True)
            row.updated_at = now
            s.flush()
            return subject_info(row)

    def subjects(self, subject_ids: Collection[str]) -> dict[str, SubjectKeyInfo]:
        """The subjects among ``subject_ids`` that exist, by id (one query per 500)."""
        found: dict[str, SubjectKeyInfo] = {}
        with self._connection() as c:
            for chunk in chunks(sorted(set(subject_ids))):
                query = select(SUBJECTS).where(SubjectRow.subject_id.in_(chunk))
                for row in c.execute(query):  # Core: no ORM loading per row
                    found[row.subject_id] = subject_info(row)
        return found

    def subject_with_records(self, subject_id: str) -> tuple[SubjectKeyInfo, list[StoredRecord]]:
        """The subject and all its readable records as of one moment, so every record
        read is sealed under the key the subject row names: the subject row is
        share-locked first on PostgreSQL (a re-key cannot switch the key until this
        read ends), and SQLite reads both in one transaction (one snapshot)."""
        query = (
            select(RECORDS)
            .where(RECORDS.c.subject_id == subject_id, live_bucket_or_none())
            .order_by(RECORDS.c.record_id)
        )
        with self._connection() as c:
            if c.dialect.name == "sqlite":
                c.exec_driver_sql("BEGIN")  # pysqlite would not begin before a SELECT
            row = c.execute(
                SUBJECT_BY_ID.statement.with_for_update(read=True), {"subject_id": subject_id}
            ).first()
            if row is None:
                raise SubjectNotFound("subject not found", subject_id=subject_id)
            return subject_info(row), [stored_record(r) for r in c.execute(query)]
