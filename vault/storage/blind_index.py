"""Blind-index rows: a record's tags (computed by vault.crypto.blind_index), written
with the record's and subject's share locks, removed, and looked up by tag."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import delete, select

from vault.storage.base import Repository
from vault.storage.engine import sqlite_writer
from vault.storage.statements import replace_index_rows
from vault.storage.tables import BlindIndexRow, RecordRow, SubjectRow
from vault.vocabulary import WRITABLE


class BlindIndexRepository(Repository):
    """The ``blind_index`` table: (subject, record, kind) -> tag."""

    def index_record(
        self,
        subject_id: str,
        record_id: str,
        tags: Mapping[str, int],
        version: int | None = None,
    ) -> bool:
        """Replace the record's rows with ``tags`` ({kind: tag}), in one transaction.

        Writes only while the record exists (at ``version``, when given) and its subject
        is writable, under a share lock on both rows, the subject's first (the order
        every writer locks in; SQLite: ``BEGIN IMMEDIATE``). False, and nothing written,
        otherwise.
        """
        subject = (
            select(SubjectRow.subject_id)
            .where(SubjectRow.subject_id == subject_id, SubjectRow.state.in_(WRITABLE))
            .with_for_update(read=True)
        )
        record = select(RecordRow.record_id).where(
            RecordRow.subject_id == subject_id, RecordRow.record_id == record_id
        )
        if version is not None:
            record = record.where(RecordRow.version == version)
        with sqlite_writer(self.engine), self._connection() as c:
            if c.dialect.name == "sqlite":
                c.exec_driver_sql("BEGIN IMMEDIATE")
            if c.execute(subject).first() is None:
                return False
            if c.execute(record.with_for_update(read=True)).first() is None:
                return False
            replace_index_rows(c, subject_id, record_id, tags)
            return True

    def remove_index_rows(self, subject_id: str, record_id: str | None = None) -> int:
        """Delete the rows of one record (or, without ``record_id``, of every record of
        the subject); returns how many there were."""
        statement = delete(BlindIndexRow).where(BlindIndexRow.subject_id == subject_id)
        if record_id is not None:
            statement = statement.where(BlindIndexRow.record_id == record_id)
        with self._connection() as c:
            return int(c.execute(statement).rowcount or 0)

    def index_candidates(self, kind: str, tag: int) -> list[tuple[str, str]]:
        """(subject_id, record_id) of every row of ``kind`` holding ``tag``, in order."""
        query = (
            select(BlindIndexRow.subject_id, BlindIndexRow.record_id)
            .where(BlindIndexRow.kind == kind, BlindIndexRow.tag == tag)
            .order_by(BlindIndexRow.subject_id, BlindIndexRow.record_id)
        )
        with self._connection() as c:
            return [(row.subject_id, row.record_id) for row in c.execute(query)]
