"""Support grants (``support_grants``), and the metadata support sees of a subject's
records without one: per-category SQL aggregates, never a value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from vault.storage.base import Repository
from vault.storage.statements import live_bucket_or_none
from vault.storage.tables import RecordRow, SupportGrantRow


@dataclass(frozen=True, slots=True)
class StoredGrant:
    """A grant's row: ids and times only."""

    grant_id: str
    subject_id: str
    ticket_record_id: str
    granted_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    ended_reason: str | None


@dataclass(frozen=True, slots=True)
class CategorySummary:
    """One category of a subject's records, without any content."""

    category: str
    record_count: int
    #: Total size of the records' ciphertexts (an upper bound of the content's size).
    ciphertext_bytes: int
    oldest_created_at: datetime
    newest_updated_at: datetime


def _stored_grant(row: SupportGrantRow) -> StoredGrant:
    return StoredGrant(
        row.grant_id,
        row.subject_id,
        row.ticket_record_id,
        row.granted_by,
        row.created_at,
        row.expires_at,
        row.revoked_at,
        row.ended_reason,
    )


class SupportGrantRepository(Repository):
    """Grants: insert, read, list, end (compare-and-set); the records' summary."""

    def insert_grant(self, grant: StoredGrant) -> None:
        with self._session() as s:
            s.add(
                SupportGrantRow(
                    grant_id=grant.grant_id,
                    subject_id=grant.subject_id,
                    ticket_record_id=grant.ticket_record_id,
                    granted_by=grant.granted_by,
                    created_at=grant.created_at,
                    expires_at=grant.expires_at,
                    revoked_at=grant.revoked_at,
                    ended_reason=grant.ended_reason,
                )
            )

    def support_grant(self, grant_id: str) -> StoredGrant | None:
        with self._session() as s:
            row = s.get(SupportGrantRow, grant_id)
            return None if row is None else _stored_grant(row)

    def support_grants(self, subject_id: str) -> list[StoredGrant]:
        """Every grant of the subject, oldest first."""
        query = (
            select(SupportGrantRow)
            .where(SupportGrantRow.subject_id == subject_id)
            .order_by(SupportGrantRow.created_at, SupportGrantRow.grant_id)
        )
        with self._session() as s:
            return [_stored_grant(row) for row in s.scalars(query)]

    def end_grant(self, grant_id: str, reason: str, revoked_at: datetime | None = None) -> bool:
        """Compare-and-set: end a grant that has not ended yet; False if it had."""
        with self._session() as s:
            result = s.execute(
                update(SupportGrantRow)
                .where(
                    SupportGrantRow.grant_id == grant_id,
                    SupportGrantRow.ended_reason.is_(None),
                    SupportGrantRow.revoked_at.is_(None),
                )
                .values(ended_reason=reason, revoked_at=revoked_at)
            )
            return bool(getattr(result, "rowcount", 0))

    def category_summaries(self, subject_id: str) -> list[CategorySummary]:
        """Per category of the subject's readable records: count, ciphertext bytes,
        oldest creation, newest update. Aggregates only: no content is read."""
        query = (
            select(
                RecordRow.category,
                func.count(),
                func.coalesce(func.sum(func.length(RecordRow.ciphertext)), 0),
                func.min(RecordRow.created_at),
                func.max(RecordRow.updated_at),
            )
            # Rows of a destroyed bucket are unreadable already (as every read).
            .where(RecordRow.subject_id == subject_id, live_bucket_or_none())
            .group_by(RecordRow.category)
            .order_by(RecordRow.category)
        )
        with self._session() as s:
            rows = s.execute(query).all()
        return [
            CategorySummary(category, int(count), int(size), oldest, newest)
            for category, count, size, oldest, newest in rows
        ]
