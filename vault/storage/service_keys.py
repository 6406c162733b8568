"""oubli's own keys, by name (``service_keys``): the lookup index key's wrapped DEK,
the audit signing key's id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update

from vault.storage.base import Repository
from vault.storage.tables import ServiceKeyRow


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """A service key's row: a KMS key id and the DEK it wraps (empty for a signing key)."""

    name: str
    key_id: str
    wrapped_dek: bytes
    key_version: int
    created_at: datetime
    #: When the KMS key got its latest version (creation, or the last rotation).
    rotated_at: datetime | None = None
    #: From then on the KMS key's older versions may be trimmed (None: nothing pending).
    kek_trim_after: datetime | None = None


class ServiceKeyRepository(Repository):
    """The ``service_keys`` table: by name; a rotation re-wraps the DEK and records when."""

    def service_key(self, name: str) -> ServiceKey | None:
        with self._session() as s:
            row = s.get(ServiceKeyRow, name)
            if row is None:
                return None
            return _service_key(row)

    def service_keys(self, prefix: str = "") -> list[ServiceKey]:
        """Every service key whose name starts with ``prefix``, by name."""
        query = select(ServiceKeyRow).order_by(ServiceKeyRow.name)
        if prefix:
            query = query.where(ServiceKeyRow.name.startswith(prefix, autoescape=True))
        with self._session() as s:
            return [_service_key(row) for row in s.scalars(query)]

    def mark_service_key_rotated(
        self,
        name: str,
        rotated_at: datetime,
        trim_after: datetime | None,
        *,
        wrapped_dek: bytes | None = None,
    ) -> bool:
        """Record a rotation of the service key's KMS key (and its DEK re-wrapped under
        the new version, when given); False when no such key."""
        values: dict[str, object] = {"rotated_at": rotated_at, "kek_trim_after": trim_after}
        if wrapped_dek is not None:
            values["wrapped_dek"] = wrapped_dek
        with self._connection() as c:
            result = c.execute(
                update(ServiceKeyRow).where(ServiceKeyRow.name == name).values(**values)
            )
            return bool(result.rowcount)

    def clear_service_key_trim(self, name: str) -> None:
        """The service key's older KMS key versions are trimmed: nothing pending."""
        with self._connection() as c:
            c.execute(
                update(ServiceKeyRow).where(ServiceKeyRow.name == name).values(kek_trim_after=None)
            )

    def delete_service_key(self, name: str) -> bool:
        """Delete the service key's row (its KMS key is destroyed by the caller)."""
        with self._connection() as c:
            return bool(c.execute(delete(ServiceKeyRow).where(ServiceKeyRow.name == name)).rowcount)

    def add_service_key(self, key: ServiceKey) -> None:
        """Raises AlreadyExists when the name (or the key id) is taken: another replica
        chose first."""
        with self._session() as s:
            s.add(
                ServiceKeyRow(
                    name=key.name,
                    key_id=key.key_id,
                    wrapped_dek=key.wrapped_dek,
                    key_version=key.key_version,
                    created_at=key.created_at,
                    rotated_at=key.created_at,
                )
            )


def _service_key(row: ServiceKeyRow) -> ServiceKey:
    return ServiceKey(
        row.name,
        row.key_id,
        row.wrapped_dek,
        row.key_version,
        row.created_at,
        row.rotated_at or row.created_at,
        row.kek_trim_after,
    )
