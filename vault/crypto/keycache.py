"""Bounded, TTL'd, in-process cache of plaintext DEKs.

Never a shared cache: a DEK lives only in the memory of the process that unwrapped it,
for at most ``ttl_seconds`` (capped at 60 s). The cache does not decide whether a
subject may be read — the caller checks the subject's state in the database on every
access, so a shred through another replica is honoured at once even while a DEK is
still cached here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cachetools import TTLCache

MAX_TTL_SECONDS = 60.0


class DataKeyCache:
    def __init__(
        self,
        max_entries: int = 10_000,
        ttl_seconds: float = MAX_TTL_SECONDS,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"DEK cache TTL must be in (0, {MAX_TTL_SECONDS}] seconds")
        if max_entries < 1:
            raise ValueError("DEK cache needs room for at least one key")
        # key id -> {key version: DEK}; one entry per subject so eviction is O(1).
        self._cache: TTLCache[str, dict[int, bytes]] = TTLCache(
            maxsize=max_entries, ttl=ttl_seconds, timer=timer
        )
        self._lock = threading.Lock()

    def get(self, key_id: str, key_version: int) -> bytes | None:
        with self._lock:
            versions = self._cache.get(key_id)
            return None if versions is None else versions.get(key_version)

    def put(self, key_id: str, key_version: int, dek: bytes) -> None:
        with self._lock:
            versions = self._cache.get(key_id)
            if versions is None:
                self._cache[key_id] = {key_version: dek}
            else:
                # In place, not re-inserted: adding a version must not restart the TTL
                # of the versions already cached (each DEK lives at most ttl_seconds).
                versions[key_version] = dek

    def evict(self, key_id: str) -> None:
        with self._lock:
            self._cache.pop(key_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)
