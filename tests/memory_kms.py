"""In-memory KMS for unit tests only: same contract, nothing persisted."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kms._wrap import DEK_LEN, unwrap_dek, wrap_dek, wrapped_key_version
from kms.base import DataKey, KeyDestroyed, KeyManager, KeyVersions, KmsError, KmsUnavailable
from kms.names import check_key_id
from kms.signatures import (
    PRIVATE_KEY_LEN,
    local_public_key,
    local_sign,
    local_signature_version,
    verify_offline,
)


@dataclass
class _Key:
    """One key's versions: version -> key bytes (a KEK, or an Ed25519 private key)."""

    versions: dict[int, bytes]
    signing: bool
    min_decryption: int = 1
    min_available: int = 1
    latest: int = field(default=1)

    def usable(self, key_id: str, version: int) -> bytes:
        if version < self.min_decryption or version not in self.versions:
            raise KmsError("key version is not allowed for decryption", key_id=key_id)
        return self.versions[version]


class InMemoryKeyManager(KeyManager):
    backend_name = "memory"

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self._random_bytes = random_bytes
        self._store: dict[str, _Key] = {}
        self._lock = threading.Lock()
        #: Tests set this to simulate an unreachable KMS.
        self.unavailable = False

    def _enter(self) -> None:
        self._count()
        if self.unavailable:
            raise KmsUnavailable("in-memory KMS is switched off")

    # Views kept for tests that inspect what the KMS holds.
    @property
    def _keys(self) -> dict[str, bytes]:
        return {k: v.versions[v.latest] for k, v in self._store.items() if not v.signing}

    @property
    def _signing_keys(self) -> dict[str, bytes]:
        return {k: v.versions[v.latest] for k, v in self._store.items() if v.signing}

    def _key(self, key_id: str, *, signing: bool | None = None) -> _Key:
        key = self._store.get(key_id)
        if key is None:
            raise KeyDestroyed("key does not exist", key_id=key_id)
        if signing is True and not key.signing:
            raise KmsError("key is not a signing key", key_id=key_id)
        if signing is False and key.signing:
            raise KmsError("key is a signing key", key_id=key_id)
        return key

    def _create(self, key_id: str, signing: bool, size: int) -> None:
        check_key_id(key_id)
        self._enter()
        with self._lock:
            if key_id in self._store:
                raise KmsError("key already exists", key_id=key_id)
            self._store[key_id] = _Key({1: self._random_bytes(size)}, signing)

    def create_key(self, key_id: str) -> None:
        self._create(key_id, False, 32)

    def generate_data_key(self, key_id: str) -> DataKey:
        check_key_id(key_id)
        self._enter()
        key = self._key(key_id, signing=False)
        dek = self._random_bytes(DEK_LEN)
        version = key.latest
        return DataKey(
            dek, wrap_dek(key_id, key.versions[version], version, dek, self._random_bytes), version
        )

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        check_key_id(key_id)
        self._enter()
        version = wrapped_key_version(key_id, wrapped)
        key = self._key(key_id, signing=False)
        return unwrap_dek(key_id, key.usable(key_id, version), wrapped)

    def destroy_key(self, key_id: str) -> None:
        check_key_id(key_id)
        self._enter()
        with self._lock:
            self._store.pop(key_id, None)

    def key_exists(self, key_id: str) -> bool:
        check_key_id(key_id)
        self._enter()
        return key_id in self._store

    # --- rotation -----------------------------------------------------------------------

    def rotate_key(self, key_id: str) -> int:
        check_key_id(key_id)
        self._enter()
        with self._lock:
            key = self._key(key_id)
            key.latest += 1
            key.versions[key.latest] = self._random_bytes(PRIVATE_KEY_LEN if key.signing else 32)
            return key.latest

    def rewrap(self, key_id: str, wrapped: bytes) -> bytes:
        check_key_id(key_id)
        self._enter()
        version = wrapped_key_version(key_id, wrapped)
        key = self._key(key_id, signing=False)
        dek = unwrap_dek(key_id, key.usable(key_id, version), wrapped)
        return wrap_dek(key_id, key.versions[key.latest], key.latest, dek, self._random_bytes)

    def wrapped_version(self, key_id: str, wrapped: bytes) -> int:
        return wrapped_key_version(key_id, wrapped)

    def key_versions(self, key_id: str) -> KeyVersions:
        check_key_id(key_id)
        self._enter()
        key = self._key(key_id)
        return KeyVersions(key.latest, key.min_decryption, key.min_available)

    def set_min_decryption_version(self, key_id: str, version: int) -> None:
        check_key_id(key_id)
        self._enter()
        with self._lock:
            key = self._key(key_id)
            if not key.min_available <= version <= key.latest:
                raise KmsError("minimum decryption version out of range", key_id=key_id)
            key.min_decryption = version

    def trim_key(self, key_id: str, min_available_version: int) -> None:
        check_key_id(key_id)
        self._enter()
        with self._lock:
            key = self._key(key_id)
            if min_available_version > key.min_decryption:
                raise KmsError("cannot trim above the minimum decryption version", key_id=key_id)
            for version in [v for v in key.versions if v < min_available_version]:
                del key.versions[version]
            key.min_available = max(key.min_available, min_available_version)

    # --- signing keys -------------------------------------------------------------------

    def create_signing_key(self, key_id: str) -> None:
        self._create(key_id, True, PRIVATE_KEY_LEN)

    def sign(self, key_id: str, data: bytes) -> bytes:
        check_key_id(key_id)
        self._enter()
        key = self._key(key_id, signing=True)
        return local_sign(key.versions[key.latest], key.latest, data)

    def sign_many(self, key_id: str, items: Sequence[bytes]) -> list[bytes]:
        """One round trip for the whole batch, as Transit's batch sign."""
        check_key_id(key_id)
        if not items:
            return []  # nothing sent, as Transit
        self._enter()
        key = self._key(key_id, signing=True)
        return [local_sign(key.versions[key.latest], key.latest, data) for data in items]

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        check_key_id(key_id)
        self._enter()
        key = self._key(key_id, signing=True)
        version = local_signature_version(signature)
        if version is None or version < key.min_decryption or version not in key.versions:
            return False
        return verify_offline(local_public_key(key.versions[version]), data, signature)

    def public_key(self, key_id: str) -> bytes:
        check_key_id(key_id)
        self._enter()
        key = self._key(key_id, signing=True)
        return local_public_key(key.versions[key.latest])

    def public_keys(self, key_id: str) -> dict[int, bytes]:
        check_key_id(key_id)
        self._enter()
        key = self._key(key_id, signing=True)
        return {v: local_public_key(k) for v, k in sorted(key.versions.items())}
