"""Rights requests: open, read, close, list."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    select,
    update,
)

from vault.storage.base import Repository
from vault.storage.rows import RightsRequest, rights_request
from vault.storage.tables import (
    RightsRequestRow,
)
from vault.vocabulary import RequestState


class RightsRequestRepository(Repository):
    """Rights requests: open, read, close, list."""

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
            return None if row is None else rights_request(row)

    def close_request(self, request_id: str, status: RequestState, now: datetime) -> bool:
        with self._session() as s:
            result = s.execute(
                update(RightsRequestRow)
                .where(
                    RightsRequestRow.request_id == request_id,
                    RightsRequestRow.status == RequestState.OPEN,
                )
                .values(status=status, completed_at=now)
            )
            return bool(getattr(result, "rowcount", 0))

    def requests(
        self,
        *,
        subject_id: str | None = None,
        status: RequestState | None = None,
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
            return [rights_request(row) for row in s.scalars(query)]
