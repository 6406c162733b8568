"""Retention buckets: find, insert, due, destroy (state, then rows)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    delete,
    func,
    select,
    update,
)

from vault.storage.base import Repository
from vault.storage.rows import BucketInfo, bucket_info
from vault.storage.statements import add_to_key_ledger, raise_ledger_position
from vault.storage.tables import (
    RecordRow,
    RetentionBucketRow,
    SubjectRow,
)
from vault.vocabulary import BucketState, DestroyedKeyKind, SubjectState


class BucketRepository(Repository):
    """Retention buckets: find, insert, due, destroy (state, then rows)."""

    # --- retention buckets ----------------------------------------------------------

    def bucket(self, bucket_id: str) -> BucketInfo | None:
        with self._session() as s:
            row = s.get(RetentionBucketRow, bucket_id)
            return None if row is None else bucket_info(row)

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
                    kek_rotated_at=now,
                )
            )

    def due_buckets(self, now: datetime) -> list[BucketInfo]:
        query = (
            select(RetentionBucketRow)
            .where(
                RetentionBucketRow.state.in_((BucketState.ACTIVE, BucketState.DESTROYING)),
                RetentionBucketRow.destroy_at <= now,
            )
            .order_by(RetentionBucketRow.destroy_at, RetentionBucketRow.bucket_id)
        )
        with self._session() as s:
            return [bucket_info(row) for row in s.scalars(query)]

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
                    RetentionBucketRow.state == BucketState.ACTIVE,
                )
                .values(state=BucketState.DESTROYING)
            )

    def finish_bucket(
        self, bucket_id: str, now: datetime, *, ledger_seq: int = 0
    ) -> tuple[int, int]:
        """After the bucket's key is destroyed: delete its (unreadable) records, close
        the subjects that only had held records in it, raise the erasure ledger
        position to ``ledger_seq``. Returns (records, subjects)."""
        with self._session() as s:
            row = s.get(RetentionBucketRow, bucket_id, with_for_update=True)
            if row is None or row.state == BucketState.DESTROYED:
                return 0, 0
            deleted = s.execute(delete(RecordRow).where(RecordRow.bucket_id == bucket_id))
            finished = s.execute(
                update(SubjectRow)
                .where(
                    SubjectRow.state == SubjectState.HELD, SubjectRow.hold_bucket_id == bucket_id
                )
                .values(
                    state=SubjectState.SHREDDED,
                    hold_bucket_id=None,
                    hold_until=None,
                    updated_at=now,
                )
            )
            row.state = BucketState.DESTROYED
            row.wrapped_dek = None
            row.destroyed_at = now
            add_to_key_ledger(s, row.key_id, DestroyedKeyKind.BUCKET, now)
            raise_ledger_position(s.connection(), ledger_seq)
            return (
                int(getattr(deleted, "rowcount", 0) or 0),
                int(getattr(finished, "rowcount", 0) or 0),
            )
