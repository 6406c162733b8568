"""Key rotation's rows: which KMS keys are due (by age), the compare-and-set that stores
a DEK re-wrapped under a key's new version, pending trims, and the oldest key of each
kind (for the key-age metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, func, select, update

from vault.storage.base import Repository
from vault.storage.engine import sqlite_writer
from vault.storage.tables import RetentionBucketRow, ServiceKeyRow, SubjectRow
from vault.vocabulary import WRITABLE, BucketState


class KeyOwner(StrEnum):
    """Whose wrapped DEKs a KEK rotation re-wraps."""

    SUBJECTS = "subjects"
    BUCKETS = "buckets"


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A live KMS key and the DEK stored wrapped by it."""

    #: The subject id or bucket id.
    owner_id: str
    key_id: str
    wrapped_dek: bytes


def _columns(owner: KeyOwner) -> tuple[Any, Any, Any, Any, Any, ColumnElement[bool]]:
    """(table, id, key id, wrapped DEK, rotated-at, trim-after) and the live condition."""
    if owner == KeyOwner.SUBJECTS:
        return (
            SubjectRow,
            SubjectRow.subject_id,
            SubjectRow.wrapped_dek,
            SubjectRow.kek_rotated_at,
            SubjectRow.kek_trim_after,
            SubjectRow.state.in_(WRITABLE) & SubjectRow.wrapped_dek.is_not(None),
        )
    return (
        RetentionBucketRow,
        RetentionBucketRow.bucket_id,
        RetentionBucketRow.wrapped_dek,
        RetentionBucketRow.kek_rotated_at,
        RetentionBucketRow.kek_trim_after,
        (RetentionBucketRow.state == BucketState.ACTIVE)
        & RetentionBucketRow.wrapped_dek.is_not(None),
    )


class KeyRotationRepository(Repository):
    """Rows of the keys a rotation visits. Every write is a compare-and-set on the
    wrapped DEK read: a re-key, an erasure or another replica's rotation meanwhile
    makes it write nothing (False)."""

    def keks_due(self, owner: KeyOwner, rotated_before: datetime, limit: int) -> list[WrappedKey]:
        """Live keys whose latest version is older than ``rotated_before``, oldest
        first, at most ``limit``."""
        table, ident, wrapped, rotated, _, live = _columns(owner)
        query = (
            select(ident, table.key_id, wrapped)
            .where(live, rotated < rotated_before)
            .order_by(rotated, ident)
            .limit(limit)
        )
        with self._connection() as c:
            return [WrappedKey(r[0], r[1], bytes(r[2])) for r in c.execute(query)]

    def count_keks_due(self, owner: KeyOwner, rotated_before: datetime) -> int:
        table, _, _, rotated, _, live = _columns(owner)
        query = select(func.count()).select_from(table).where(live, rotated < rotated_before)
        with self._connection() as c:
            return int(c.execute(query).scalar_one())

    def store_rewrapped(
        self,
        owner: KeyOwner,
        key: WrappedKey,
        rewrapped: bytes,
        now: datetime,
        trim_after: datetime,
    ) -> bool:
        """Replace the wrapped DEK by its re-wrap under the key's new version, if the
        row still holds ``key`` (same key, same wrapped DEK, still live)."""
        table, ident, wrapped, _, _, live = _columns(owner)
        statement = (
            update(table)
            .where(ident == key.owner_id, table.key_id == key.key_id, wrapped == key.wrapped_dek)
            .where(live)
            .values(wrapped_dek=rewrapped, kek_rotated_at=now, kek_trim_after=trim_after)
        )
        with sqlite_writer(self.engine), self._connection() as c:
            return bool(c.execute(statement).rowcount)

    def trims_due(self, owner: KeyOwner, now: datetime, limit: int) -> list[WrappedKey]:
        """Live keys rotated long enough ago that their older versions may go."""
        table, ident, wrapped, _, trim_after, live = _columns(owner)
        query = (
            select(ident, table.key_id, wrapped)
            .where(live, trim_after <= now)
            .order_by(trim_after, ident)
            .limit(limit)
        )
        with self._connection() as c:
            return [WrappedKey(r[0], r[1], bytes(r[2])) for r in c.execute(query)]

    def count_trims_due(self, owner: KeyOwner, now: datetime) -> int:
        table, _, _, _, trim_after, live = _columns(owner)
        query = select(func.count()).select_from(table).where(live, trim_after <= now)
        with self._connection() as c:
            return int(c.execute(query).scalar_one())

    def trim_done(self, owner: KeyOwner, key: WrappedKey) -> bool:
        """Nothing left to trim for ``key`` (if its row still holds that wrapped DEK)."""
        table, ident, wrapped, _, _, _ = _columns(owner)
        statement = (
            update(table)
            .where(ident == key.owner_id, table.key_id == key.key_id, wrapped == key.wrapped_dek)
            .values(kek_trim_after=None)
        )
        with sqlite_writer(self.engine), self._connection() as c:
            return bool(c.execute(statement).rowcount)

    def deks_due(self, created_before: datetime, limit: int) -> list[str]:
        """Writable subjects whose DEK was made before ``created_before``, oldest first."""
        query = (
            select(SubjectRow.subject_id)
            .where(SubjectRow.state.in_(WRITABLE), SubjectRow.dek_created_at < created_before)
            .order_by(SubjectRow.dek_created_at, SubjectRow.subject_id)
            .limit(limit)
        )
        with self._connection() as c:
            return [r[0] for r in c.execute(query)]

    def count_deks_due(self, created_before: datetime) -> int:
        query = (
            select(func.count())
            .select_from(SubjectRow)
            .where(SubjectRow.state.in_(WRITABLE), SubjectRow.dek_created_at < created_before)
        )
        with self._connection() as c:
            return int(c.execute(query).scalar_one())

    def oldest_keys(self, service_key_names: dict[str, str]) -> dict[str, datetime | None]:
        """When the oldest live key of each kind got its current version: subject KEKs
        (``subjects``), bucket KEKs (``buckets``), subject DEKs (``deks``), and each
        service key of ``service_key_names`` ({kind: name prefix}: the newest key of
        that prefix counts, e.g. the current index key generation)."""
        subjects_live = SubjectRow.state.in_(WRITABLE) & SubjectRow.wrapped_dek.is_not(None)
        with self._connection() as c:
            ages: dict[str, datetime | None] = {
                "subjects": c.execute(
                    select(func.min(SubjectRow.kek_rotated_at)).where(subjects_live)
                ).scalar_one(),
                "buckets": c.execute(
                    select(func.min(RetentionBucketRow.kek_rotated_at)).where(
                        RetentionBucketRow.state == BucketState.ACTIVE
                    )
                ).scalar_one(),
                "deks": c.execute(
                    select(func.min(SubjectRow.dek_created_at)).where(subjects_live)
                ).scalar_one(),
            }
            for kind, prefix in service_key_names.items():
                ages[kind] = c.execute(
                    select(
                        func.max(func.coalesce(ServiceKeyRow.rotated_at, ServiceKeyRow.created_at))
                    ).where(ServiceKeyRow.name.startswith(prefix, autoescape=True))
                ).scalar_one()
        return ages
