"""A KeyManager for a process that has no KMS: every call is refused.

The ``oubli token`` commands append token lifecycle events to the audit trail, which
needs the database only, and never sign a checkpoint. They must run without the KMS's
credentials and while it is down: revoking a leaked bearer token cannot wait for Vault.
"""

from __future__ import annotations

from typing import NoReturn

from kms.base import DataKey, KeyManager, KeyVersions, KmsError


class AbsentKeyManager(KeyManager):
    backend_name = "none"

    @staticmethod
    def _refuse() -> NoReturn:
        raise KmsError("no key management service in this process")

    def create_key(self, key_id: str) -> None:
        self._refuse()

    def generate_data_key(self, key_id: str) -> DataKey:
        self._refuse()

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        self._refuse()

    def destroy_key(self, key_id: str) -> None:
        self._refuse()

    def key_exists(self, key_id: str) -> bool:
        self._refuse()

    def create_signing_key(self, key_id: str) -> None:
        self._refuse()

    def sign(self, key_id: str, data: bytes) -> bytes:
        self._refuse()

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        self._refuse()

    def public_key(self, key_id: str) -> bytes:
        self._refuse()

    def rotate_key(self, key_id: str) -> int:
        self._refuse()

    def rewrap(self, key_id: str, wrapped: bytes) -> bytes:
        self._refuse()

    def wrapped_version(self, key_id: str, wrapped: bytes) -> int:
        self._refuse()

    def key_versions(self, key_id: str) -> KeyVersions:
        self._refuse()

    def set_min_decryption_version(self, key_id: str, version: int) -> None:
        self._refuse()

    def trim_key(self, key_id: str, min_available_version: int) -> None:
        self._refuse()

    def public_keys(self, key_id: str) -> dict[int, bytes]:
        self._refuse()
