"""In-memory KMS for unit tests only: same contract, nothing persisted."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from kms._wrap import DEK_LEN, unwrap_dek, wrap_dek, wrapped_key_version
from kms.base import DataKey, KeyDestroyed, KeyManager, KmsError, KmsUnavailable
from kms.names import check_key_id


class InMemoryKeyManager(KeyManager):
    backend_name = "memory"

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self._random_bytes = random_bytes
        self._keys: dict[str, bytes] = {}
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
            if key_id in self._keys:
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

    def key_exists(self, key_id: str) -> bool:
        check_key_id(key_id)
        self._enter()
        return key_id in self._keys
