"""Erasure: shredding marks, the finish transaction (state, legal hold, receipt, key
ledger), due erasures."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from vault.storage.base import Repository
from vault.storage.engine import sqlite_writer
from vault.storage.rows import Receipt, receipt_of
from vault.storage.statements import (
    KEY_LEDGER,
    LEDGER_POSITION,
    SHRED_RECEIPTS,
    SUBJECTS,
    chunks,
    raise_ledger_position,
)
from vault.storage.tables import (
    KeyLedgerRow,
    RecordRow,
    ShredReceiptRow,
    SubjectRow,
)
from vault.vocabulary import WRITABLE, DestroyedKeyKind, KeyScheme, SubjectState


class ErasureRepository(Repository):
    """Erasure: shredding marks, the finish transaction (state, legal hold, receipt, key
    ledger), due erasures."""

    def mark_shredding(self, subject_ids: Collection[str], now: datetime) -> None:
        """Mark the writable ones among ``subject_ids`` ``shredding``, in one transaction:
        from its commit, every replica refuses them."""
        with self._session() as s:
            for chunk in chunks(sorted(set(subject_ids))):
                s.execute(
                    update(SubjectRow)
                    .where(SubjectRow.subject_id.in_(chunk), SubjectRow.state.in_(WRITABLE))
                    .values(state=SubjectState.SHREDDING, updated_at=now)
                )

    def subjects_with_records(
        self, subject_ids: Collection[str], categories: Sequence[str], scheme: KeyScheme
    ) -> set[str]:
        """Which of ``subject_ids`` have records of ``categories`` under ``scheme``."""
        found: set[str] = set()
        with self._connection() as c:
            for chunk in chunks(sorted(set(subject_ids))):
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

    def finish_shreds(
        self,
        subject_ids: Collection[str],
        kms_backend: str,
        now: datetime,
        holds: Mapping[str, tuple[str, datetime]] | None = None,
        *,
        ledger_seq: int = 0,
    ) -> dict[str, Receipt]:
        """Finish the erasure of subjects whose keys are destroyed: one transaction of
        set-wide statements (a few per 500 subjects, not a few per subject).

        Per subject: every record not under a legal hold is deleted, the wrapped DEK
        forgotten, the receipt and the key ledger written; the subject becomes ``held``
        when held records remain — until the hold bucket ``holds`` names for it
        (bucket id, destroy_at) — else ``shredded``. A subject finished already keeps
        its receipt; an unknown one is left out of the result. The database's erasure
        ledger position rises to ``ledger_seq`` (the ledger entries of these keys) in the
        same transaction.
        """
        holds = holds or {}
        receipts: dict[str, Receipt] = {}
        with self._write_session() as s:
            c = s.connection()
            for chunk in chunks(sorted(set(subject_ids))):
                keys = dict(
                    c.execute(
                        select(SubjectRow.subject_id, SubjectRow.key_id)
                        .where(SubjectRow.subject_id.in_(chunk))
                        .order_by(SubjectRow.subject_id)
                        .with_for_update()
                    ).all()
                )
                for row in c.execute(
                    select(SHRED_RECEIPTS).where(ShredReceiptRow.subject_id.in_(chunk))
                ):
                    receipts[row.subject_id] = receipt_of(row)
                todo = [sid for sid in chunk if sid in keys and sid not in receipts]
                if todo:
                    receipts.update(self._finish(c, todo, keys, kms_backend, now, holds))
            raise_ledger_position(c, ledger_seq)
        return receipts

    @staticmethod
    def _finish(
        c: Connection,
        todo: Sequence[str],
        keys: Mapping[str, str],
        kms_backend: str,
        now: datetime,
        holds: Mapping[str, tuple[str, datetime]],
    ) -> list[tuple[str, Receipt]]:
        """:meth:`finish_shreds` for one chunk of unfinished subjects (``keys``: their
        key ids), inside the caller's transaction."""
        deleted = dict.fromkeys(todo, 0)
        retained = dict.fromkeys(todo, 0)
        for sid, scheme, count in c.execute(
            select(RecordRow.subject_id, RecordRow.key_scheme, func.count())
            .where(RecordRow.subject_id.in_(todo))
            .group_by(RecordRow.subject_id, RecordRow.key_scheme)
        ):
            counts = retained if scheme == KeyScheme.HOLD else deleted
            counts[sid] += int(count)
        c.execute(
            delete(RecordRow).where(
                RecordRow.subject_id.in_(todo), RecordRow.key_scheme != KeyScheme.HOLD
            )
        )
        made = [
            Receipt(
                sid,
                keys[sid],
                kms_backend,
                deleted[sid],
                now,
                retained[sid],
                holds[sid][1] if retained[sid] and sid in holds else None,
            )
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
                    "shredded_at": r.shredded_at,
                    "records_retained": r.records_retained,
                    "retained_until": r.retained_until,
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
        ledger = [
            {
                "key_id": keys[sid],
                "kind": DestroyedKeyKind.SUBJECT,
                "recorded_at": now,
                "subject_id": sid,
            }
            for sid in todo
            if keys[sid] not in ledgered
        ]
        if ledger:
            c.execute(insert(KEY_LEDGER), ledger)
        erased = {
            "wrapped_dek": None,
            "scheduled_shred_at": None,
            "updated_at": now,
        }
        shredded = [sid for sid in todo if not retained[sid]]
        if shredded:
            c.execute(
                update(SUBJECTS)
                .where(SUBJECTS.c.subject_id.in_(shredded))
                .values(state=SubjectState.SHREDDED, hold_bucket_id=None, hold_until=None, **erased)
            )
        held = [sid for sid in todo if retained[sid]]
        if held:
            c.execute(
                update(SUBJECTS)
                .where(SUBJECTS.c.subject_id == bindparam("held_subject"))
                .values(
                    state=SubjectState.HELD,
                    hold_bucket_id=bindparam("held_bucket"),
                    hold_until=bindparam("held_until"),
                    **erased,
                ),
                [
                    {
                        "held_subject": sid,
                        "held_bucket": holds[sid][0] if sid in holds else None,
                        "held_until": holds[sid][1] if sid in holds else None,
                    }
                    for sid in held
                ],
            )
        return [(r.subject_id, r) for r in made]

    def receipt(self, subject_id: str) -> Receipt | None:
        with self._session() as s:
            row = s.get(ShredReceiptRow, subject_id)
            return None if row is None else receipt_of(row)

    def due_erasures(
        self, now: datetime, kept_categories: Sequence[str], limit: int = 10_000
    ) -> list[tuple[str, datetime, int]]:
        """Closed accounts whose erasure is due, and erasures interrupted mid-way: per
        subject, when it became due and how many records its erasure deletes (all but
        held ones and those of ``kept_categories``, which move to a hold bucket)."""
        erasable = and_(
            RecordRow.subject_id == SubjectRow.subject_id,
            RecordRow.key_scheme != KeyScheme.HOLD,
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
                    and_(
                        SubjectRow.state == SubjectState.CLOSED,
                        SubjectRow.scheduled_shred_at <= now,
                    ),
                    SubjectRow.state == SubjectState.SHREDDING,
                )
            )
            .group_by(SubjectRow.subject_id, SubjectRow.scheduled_shred_at, SubjectRow.updated_at)
            .order_by(SubjectRow.subject_id)
            .limit(limit)
        )
        with self._session() as s:
            return [(row[0], row[1] or row[2], int(row[3] or 0)) for row in s.execute(query)]

    # --- key ledger -----------------------------------------------------------------

    def ledger_key_ids(self, subject_id: str | None = None) -> list[str]:
        """Key ids oubli destroyed (for reconcile after a KMS restore), all or one
        subject's."""
        query = select(KeyLedgerRow.key_id).order_by(KeyLedgerRow.key_id)
        if subject_id is not None:
            query = query.where(KeyLedgerRow.subject_id == subject_id)
        with self._session() as s:
            return list(s.scalars(query))

    def key_ledger(self) -> list[tuple[str, str, str | None]]:
        """The key ledger's rows: (key id, kind, subject id or None)."""
        query = select(KeyLedgerRow.key_id, KeyLedgerRow.kind, KeyLedgerRow.subject_id)
        with self._connection() as c:
            return [
                (str(k), str(kind), s)
                for k, kind, s in c.execute(query.order_by(KeyLedgerRow.key_id))
            ]

    def shredding_subject_ids(self) -> list[str]:
        """Subjects whose erasure started and did not finish (a crash, an outage)."""
        query = select(SubjectRow.subject_id).where(SubjectRow.state == SubjectState.SHREDDING)
        with self._connection() as c:
            return list(c.execute(query.order_by(SubjectRow.subject_id)).scalars())

    # --- erasure ledger position ----------------------------------------------------

    def ledger_position(self) -> int:
        """The erasure ledger seq of the last erasure this database finished."""
        with self._connection() as c:
            found = c.execute(select(LEDGER_POSITION.c.seq).where(LEDGER_POSITION.c.id == 1))
            return int(found.scalar() or 0)

    def raise_ledger_position(self, seq: int) -> None:
        """Move the position up to ``seq`` (never down): an erasure finished outside
        :meth:`finish_shreds` (a retired key destroyed after a re-key)."""
        with sqlite_writer(self.engine), self._connection() as c:
            raise_ledger_position(c, seq)

    def reset_ledger_position(self, seq: int) -> None:
        """Set the position to ``seq``, down too: an operator accepted a ledger behind
        this database (lost or restored)."""
        with sqlite_writer(self.engine), self._connection() as c:
            c.execute(update(LEDGER_POSITION).where(LEDGER_POSITION.c.id == 1).values(seq=seq))
