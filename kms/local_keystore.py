"""The embedded default KMS: subject keys in their own SQLite file.

The keystore file must never be the data database (a database backup must not carry
keys) and is created with mode 0600. A destroyed key must really be gone from disk:
SQLite leaves deleted rows in free pages and old pages in the WAL, so the keystore runs
with ``secure_delete=ON`` (deleted content is overwritten with zeros) in WAL mode, and
every destroy ends with ``wal_checkpoint(TRUNCATE)`` so neither the file nor its
journal keeps the key's bytes. Several processes may share one keystore file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kms._wrap import DEK_LEN, unwrap_dek, wrap_dek, wrapped_key_version
from kms.base import DataKey, KeyDestroyed, KeyManager, KmsError, KmsUnavailable
from kms.names import check_key_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_keys (
    key_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    key_bytes BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (key_id, version)
)
"""


class LocalKeystore(KeyManager):
    backend_name = "local-keystore"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self._random_bytes = random_bytes
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise KmsUnavailable(f"cannot open local keystore: {type(e).__name__}") from e

    def _execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        self._count()
        try:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.IntegrityError as e:
            raise KmsError("key already exists") from e
        except sqlite3.Error as e:
            raise KmsUnavailable(f"local keystore error: {type(e).__name__}") from e

    def _latest(self, key_id: str) -> tuple[int, bytes]:
        rows = self._execute(
            "SELECT version, key_bytes FROM subject_keys WHERE key_id = ? "
            "ORDER BY version DESC LIMIT 1",
            (key_id,),
        )
        if not rows:
            raise KeyDestroyed("key does not exist", key_id=key_id)
        version, key_bytes = rows[0]
        assert isinstance(version, int) and isinstance(key_bytes, bytes)
        return version, key_bytes

    def create_key(self, key_id: str) -> None:
        check_key_id(key_id)
        try:
            self._execute(
                "INSERT INTO subject_keys (key_id, version, key_bytes, created_at) "
                "VALUES (?, 1, ?, ?)",
                (key_id, self._random_bytes(32), self._clock()),
            )
        except KmsError as e:
            e.key_id = key_id
            raise

    def generate_data_key(self, key_id: str) -> DataKey:
        check_key_id(key_id)
        version, kek = self._latest(key_id)
        dek = self._random_bytes(DEK_LEN)
        return DataKey(dek, wrap_dek(key_id, kek, version, dek, self._random_bytes), version)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        check_key_id(key_id)
        version = wrapped_key_version(key_id, wrapped)
        rows = self._execute(
            "SELECT key_bytes FROM subject_keys WHERE key_id = ? AND version = ?",
            (key_id, version),
        )
        if not rows:
            raise KeyDestroyed("key does not exist", key_id=key_id)
        kek = rows[0][0]
        assert isinstance(kek, bytes)
        return unwrap_dek(key_id, kek, wrapped)

    def destroy_key(self, key_id: str) -> None:
        check_key_id(key_id)
        self._execute("DELETE FROM subject_keys WHERE key_id = ?", (key_id,))
        self._scrub_journal()

    def _scrub_journal(self) -> None:
        """Fold the WAL into the (zeroed) main file and truncate it to nothing."""
        for _ in range(50):
            busy = self._execute("PRAGMA wal_checkpoint(TRUNCATE)")[0][0]
            if busy == 0:
                return
            time.sleep(0.02)  # another process is reading; its snapshot ends soon
        raise KmsUnavailable("local keystore busy: destroyed key not yet scrubbed from journal")

    def key_exists(self, key_id: str) -> bool:
        check_key_id(key_id)
        return bool(self._execute("SELECT 1 FROM subject_keys WHERE key_id = ?", (key_id,)))

    def close(self) -> None:
        with self._lock:
            self._db.close()
