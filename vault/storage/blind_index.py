"""Blind-index rows: a record's tags (computed by vault.crypto.blind_index), written
with the record's and subject's share locks, removed, and looked up by tag; and the
index key rotation's statements: the records still lacking a generation's tags, and
the retirement of the older generations.

Every row carries the index key generation its tag was computed with. Writes and
lookups check, in their transaction, that they computed tags for exactly the
generations live in ``service_keys`` (:func:`~vault.storage.statements.replace_index_rows`,
:class:`IndexGenerationsChanged`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update

from vault.storage.base import Repository
from vault.storage.rows import StoredRecord, stored_record
from vault.storage.statements import (
    BLIND_INDEX,
    INDEX_KEY_NAME,
    Changed,
    IndexGenerationsChanged,
    add_to_key_ledger,
    index_key_generation,
    index_key_name,
    live_bucket_or_none,
    live_index_generations,
    replace_index_rows,
)
from vault.storage.tables import BlindIndexRow, RecordRow, ServiceKeyRow, SubjectRow
from vault.vocabulary import WRITABLE, DestroyedKeyKind

__all__ = [
    "INDEX_KEY_NAME",
    "BlindIndexRepository",
    "IndexGenerationsChanged",
    "index_key_generation",
    "index_key_name",
]


class BlindIndexRepository(Repository):
    """The ``blind_index`` table: (subject, record, kind, generation) -> tag."""

    def index_record(
        self,
        subject_id: str,
        record_id: str,
        tags: Mapping[int, Mapping[str, int]],
        version: int | None = None,
    ) -> bool:
        """Replace the record's rows with ``tags`` ({generation: {kind: tag}}), in one
        transaction.

        Writes only while the record exists (at ``version``, when given) and its subject
        is writable, under a share lock on both rows, the subject's first (the order
        every writer locks in; SQLite: ``BEGIN IMMEDIATE``). False, and nothing written,
        otherwise.

        Raises:
            IndexGenerationsChanged: ``tags`` are not for exactly the live generations
                (nothing written).
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
        with self._write_connection() as c:
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

    def index_candidates(self, kind: str, tags: Mapping[int, int]) -> list[tuple[str, str]]:
        """(subject_id, record_id) of every row of ``kind`` holding the tag of its
        generation (``tags``: {generation: tag}), in order, each pair once.

        Raises:
            IndexGenerationsChanged: ``tags`` are not for exactly the live generations.
        """
        query = (
            select(BlindIndexRow.subject_id, BlindIndexRow.record_id)
            .where(
                BlindIndexRow.kind == kind,
                or_(
                    *(
                        and_(BlindIndexRow.generation == generation, BlindIndexRow.tag == tag)
                        for generation, tag in sorted(tags.items())
                    )
                ),
            )
            .distinct()
            .order_by(BlindIndexRow.subject_id, BlindIndexRow.record_id)
        )
        with self._connection() as c:
            live = live_index_generations(c)
            if live != frozenset(tags):
                raise IndexGenerationsChanged(live)
            return [(row.subject_id, row.record_id) for row in c.execute(query)]

    # --- rotation ---------------------------------------------------------------------

    def index_backlog(
        self,
        generation: int,
        categories: Collection[str],
        *,
        after: tuple[str, str] = ("", ""),
        limit: int = 500,
    ) -> list[StoredRecord]:
        """Records that still lack rows of ``generation``: of a writable subject, in
        ``categories``, readable (no destroyed bucket), with rows of another
        generation and none of this one. In (subject_id, record_id) order, after
        ``after``, at most ``limit`` (keyset pagination: bounded memory)."""
        subject_id, record_id = after
        query = (
            select(RecordRow)
            .where(
                *_backlog(generation, categories),
                or_(
                    RecordRow.subject_id > subject_id,
                    and_(RecordRow.subject_id == subject_id, RecordRow.record_id > record_id),
                ),
            )
            .order_by(RecordRow.subject_id, RecordRow.record_id)
            .limit(limit)
        )
        with self._session() as s:
            return [stored_record(row) for row in s.scalars(query)]

    def index_backlog_count(self, generation: int, categories: Collection[str]) -> int:
        """How many records :meth:`index_backlog` would list from the start."""
        query = select(func.count()).select_from(RecordRow).where(*_backlog(generation, categories))
        with self._connection() as c:
            return int(c.execute(query).scalar() or 0)

    def retire_index_generations(
        self,
        retired: Mapping[int, str],
        keep: int,
        categories: Collection[str],
        now: datetime,
    ) -> bool:
        """Retire the index key generations ``retired`` ({generation: KMS key id}) in
        one transaction: their ``service_keys`` rows and every row of theirs in
        ``blind_index`` deleted, their KMS keys put in the key ledger (``retired``, no
        subject) to be destroyed next.

        The ``service_keys`` rows go first: in PostgreSQL the delete waits for every
        writer that checked the live generations (``FOR KEY SHARE``) to commit, and
        writers after it see them gone. Then, in the same transaction, no record of
        ``categories`` (of a writable subject, readable) may still lack rows of
        ``keep``. False, and nothing changed, when one does (a writer that did not know
        ``keep`` yet committed meanwhile: re-index it, then retire again), when
        ``keep`` is not live, or when a generation is no longer live (another replica
        retired it).
        """
        names = {index_key_name(generation): key_id for generation, key_id in retired.items()}
        try:
            with self._write_session() as s:
                c = s.connection()
                gone = s.execute(
                    delete(ServiceKeyRow).where(
                        or_(
                            *(
                                and_(ServiceKeyRow.name == name, ServiceKeyRow.key_id == key_id)
                                for name, key_id in sorted(names.items())
                            )
                        )
                    )
                )
                if getattr(gone, "rowcount", 0) != len(names):
                    raise Changed
                if keep not in live_index_generations(c) or keep in retired:
                    raise Changed
                lacking = select(RecordRow.record_id).where(*_backlog(keep, categories)).limit(1)
                if s.execute(lacking).first() is not None:
                    raise Changed
                s.execute(delete(BLIND_INDEX).where(BLIND_INDEX.c.generation.in_(list(retired))))
                for key_id in sorted(retired.values()):
                    add_to_key_ledger(s, key_id, DestroyedKeyKind.RETIRED, now)
                return True
        except Changed:
            return False

    def drop_index_generations(self, lost: Mapping[int, str]) -> int:
        """Forget the index key generations ``lost`` ({generation: KMS key id}) whose KMS
        keys no longer exist (a database copy restored from before their retirement),
        in one transaction: their ``service_keys`` rows go, and their rows are kept
        under the negative of their generation — never live, so no lookup reads them,
        while they still mark their records as indexed once (the backlog of the new
        generation: :meth:`index_backlog`); re-indexing a record replaces them. Returns
        how many generations were dropped (0 when another replica dropped them first)."""
        names = {index_key_name(generation): key_id for generation, key_id in lost.items()}
        with self._write_session() as s:
            gone = s.execute(
                delete(ServiceKeyRow).where(
                    or_(
                        *(
                            and_(ServiceKeyRow.name == name, ServiceKeyRow.key_id == key_id)
                            for name, key_id in sorted(names.items())
                        )
                    )
                )
            )
            s.execute(
                update(BLIND_INDEX)
                .where(BLIND_INDEX.c.generation.in_(list(lost)))
                .values(generation=-BLIND_INDEX.c.generation)
            )
            return int(getattr(gone, "rowcount", 0) or 0)


def _backlog(generation: int, categories: Collection[str]) -> Sequence[Any]:
    """Conditions on RecordRow: the record lacks rows of ``generation`` and has others
    (see :meth:`BlindIndexRepository.index_backlog`)."""
    rows = select(BlindIndexRow.record_id).where(
        BlindIndexRow.subject_id == RecordRow.subject_id,
        BlindIndexRow.record_id == RecordRow.record_id,
    )
    writable = select(SubjectRow.subject_id).where(
        SubjectRow.subject_id == RecordRow.subject_id, SubjectRow.state.in_(WRITABLE)
    )
    return (
        RecordRow.category.in_(sorted(categories)),
        writable.exists(),
        live_bucket_or_none(),
        rows.where(BlindIndexRow.generation != generation).exists(),
        ~rows.where(BlindIndexRow.generation == generation).exists(),
    )
