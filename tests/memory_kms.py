"""In-memory KMS for unit tests only: same contract, nothing persisted."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from kms._wrap import DEK_LEN, unwrap_dek, wrap_dek, wrapped_key_version
from kms.base import DataKey, KeyDestroyed, KeyManager, KmsError, KmsUnavailable
from kms.names import check_key_id
from kms.signatures import (
    PRIVATE_KEY_LEN,
    local_public_key,
    local_sign,
    local_signature_version,
    verify_offline,
)


class InMemoryKeyManager(KeyManager):
    backend_name = "memory"

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self._random_bytes = random_bytes
        self._keys: dict[str, bytes] = {}
        #: Signing keys: key id -> raw Ed25519 private key (one version).
        self._signing_keys: dict[str, bytes] = {}
        self._lock = threading.Lock()
        #: Tests set this to simulate an unreachable KMS.
        self.unavailable = False

    def _enter(self) -> None:
        self._count()
        if self.unavailable:
            raise KmsUnavailable("in-memory KMS is switched off")

    def _kek(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise KeyDestroyed("key does not exist", key_id=key_id) from None

    def create_key(self, key_id: str) -> None:
        check_key_id(key_id)
        self._enter()
        with self._lock:
            if key_id in self._keys or key_id in self._signing_keys:
                raise KmsError("key already exists", key_id=key_id)
            self._keys[key_id] = self._random_bytes(32)

    def generate_data_key(self, key_id: str) -> DataKey:
        check_key_id(key_id)
        self._enter()
        kek = self._kek(key_id)
        dek = self._random_bytes(DEK_LEN)
        return DataKey(dek, wrap_dek(key_id, kek, 1, dek, self._random_bytes), 1)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        check_key_id(key_id)
        self._enter()
        wrapped_key_version(key_id, wrapped)
        return unwrap_dek(key_id, self._kek(key_id), wrapped)

    def destroy_key(self, key_id: str) -> None:
        check_key_id(key_id)
        self._enter()
        with self._lock:
            self._keys.pop(key_id, None)
            self._signing_keys.pop(key_id, None)

    def key_exists(self, key_id: str) -> bool:
        check_key_id(key_id)
        self._enter()
        return key_id in self._keys or key_id in self._signing_keys

    def create_signing_key(self, key_id: str) -> None:
        check_key_id(key_id)
        self._enter()
        with self._lock:
            if key_id in self._keys or key_id in self._signing_keys:
                raise KmsError("key already exists", key_id=key_id)
            self._signing_keys[key_id] = self._random_bytes(PRIVATE_KEY_LEN)

    def _signing_key(self, key_id: str) -> bytes:
        try:
            return self._signing_keys[key_id]
        except KeyError:
            if key_id in self._keys:
                raise KmsError("key is not a signing key", key_id=key_id) from None
            raise KeyDestroyed("key does not exist", key_id=key_id) from None

    def sign(self, key_id: str, data: bytes) -> bytes:
        check_key_id(key_id)
        self._enter()
        return local_sign(self._signing_key(key_id), 1, data)

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        check_key_id(key_id)
        self._enter()
        private_key = self._signing_key(key_id)
        if local_signature_version(signature) != 1:
            return False
        return verify_offline(local_public_key(private_key), data, signature)

    def public_key(self, key_id: str) -> bytes:
        check_key_id(key_id)
        self._enter()
        return local_public_key(self._signing_key(key_id))
