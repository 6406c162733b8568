"""oubli's own keys, by name (``service_keys``): the lookup index key's wrapped DEK,
the audit signing key's id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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


class ServiceKeyRepository(Repository):
    """The ``service_keys`` table: a key is written once and never changes."""

    def service_key(self, name: str) -> ServiceKey | None:
        with self._session() as s:
            row = s.get(ServiceKeyRow, name)
            if row is None:
                return None
            return ServiceKey(
                row.name, row.key_id, row.wrapped_dek, row.key_version, row.created_at
            )

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
                )
            )
