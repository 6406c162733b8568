"""The embedded default KMS: subject keys in their own SQLite file.

The keystore file must never be the data database (a database backup must not carry
keys). It is created with mode 0600 (SQLite gives its ``-wal`` and ``-shm`` the same
mode) and missing directories above it 0700, whatever the umask (``oubli serve`` also
tightens an existing one: vault/app/server.py). A destroyed key must really be gone from
disk: SQLite leaves deleted rows in free pages and old pages in the WAL, so the keystore
runs with ``secure_delete=ON`` (deleted content is overwritten with zeros) in WAL mode, and
every destroy ends with ``wal_checkpoint(TRUNCATE)`` so neither the file nor its
journal keeps the key's bytes. Several processes may share one keystore file.

Signing keys (Ed25519, for the audit log's checkpoints) live in their own table as raw
32-byte private keys; their signatures use the format of :mod:`kms.signatures`. Subject
and signing keys share one namespace of key ids, as in Transit.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_keys (
    key_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    key_bytes BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (key_id, version)
)
"""
#: Per key: the lowest version still allowed to unwrap (or verify), raised by rotation;
#: no row means every version is allowed. Trimmed versions are simply deleted rows.
_LIMITS_SCHEMA = """
CREATE TABLE IF NOT EXISTS key_limits (
    key_id TEXT PRIMARY KEY,
    min_decryption INTEGER NOT NULL
)
"""
_SIGNING_SCHEMA = """
CREATE TABLE IF NOT EXISTS signing_keys (
    key_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    private_key BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (key_id, version)
)
"""


def _create_private(path: Path) -> None:
    """Create the missing directories above ``path`` 0700 and ``path`` itself 0600."""
    for directory in reversed([p for p in path.parents if not p.exists()]):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by another process: not ours to chmod
        os.chmod(directory, 0o700)  # the umask may have taken owner bits
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.fchmod(fd, 0o600)
    os.close(fd)


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
            _create_private(self.path)
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._db.execute(_SIGNING_SCHEMA)
            self._db.execute(_LIMITS_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise KmsUnavailable(f"cannot open local keystore: {type(e).__name__}") from e

    def _execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return self._run(sql, params)[0]

    def _run(
        self, sql: str, params: tuple[object, ...] = ()
    ) -> tuple[list[tuple[object, ...]], int]:
        """One statement: its rows and how many rows it changed."""
        self._count()
        try:
            with self._lock:
                cursor = self._db.execute(sql, params)
                return cursor.fetchall(), cursor.rowcount
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
        # One statement, so that a signing key created meanwhile by another process
        # cannot end up sharing the id.
        self._insert_new(
            "INSERT INTO subject_keys (key_id, version, key_bytes, created_at) "
            "SELECT ?, 1, ?, ? WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE key_id = ?)",
            (key_id, self._random_bytes(32), self._clock(), key_id),
            key_id,
        )

    def _insert_new(self, sql: str, params: tuple[object, ...], key_id: str) -> None:
        try:
            _, inserted = self._run(sql, params)
        except KmsError as e:
            e.key_id = key_id
            raise
        if inserted != 1:
            raise KmsError("key already exists", key_id=key_id)

    def generate_data_key(self, key_id: str) -> DataKey:
        check_key_id(key_id)
        version, kek = self._latest(key_id)
        dek = self._random_bytes(DEK_LEN)
        return DataKey(dek, wrap_dek(key_id, kek, version, dek, self._random_bytes), version)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        check_key_id(key_id)
        version = wrapped_key_version(key_id, wrapped)
        return unwrap_dek(key_id, self._usable_kek(key_id, version), wrapped)

    def _usable_kek(self, key_id: str, version: int) -> bytes:
        """Key bytes of ``version``, if it is still allowed to unwrap."""
        rows = self._execute(
            "SELECT key_bytes, COALESCE((SELECT min_decryption FROM key_limits "
            "WHERE key_id = ?), 1) FROM subject_keys WHERE key_id = ? AND version = ?",
            (key_id, key_id, version),
        )
        if not rows:
            if not self._execute("SELECT 1 FROM subject_keys WHERE key_id = ?", (key_id,)):
                raise KeyDestroyed("key does not exist", key_id=key_id)
            raise KmsError("key version is trimmed", key_id=key_id)
        kek, min_decryption = rows[0]
        assert isinstance(kek, bytes) and isinstance(min_decryption, int)
        if version < min_decryption:
            raise KmsError("key version is not allowed for decryption", key_id=key_id)
        return kek

    def destroy_key(self, key_id: str) -> None:
        check_key_id(key_id)
        self._execute("DELETE FROM subject_keys WHERE key_id = ?", (key_id,))
        self._execute("DELETE FROM signing_keys WHERE key_id = ?", (key_id,))
        self._execute("DELETE FROM key_limits WHERE key_id = ?", (key_id,))
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
        return bool(
            self._execute(
                "SELECT 1 FROM subject_keys WHERE key_id = ? "
                "UNION ALL SELECT 1 FROM signing_keys WHERE key_id = ?",
                (key_id, key_id),
            )
        )

    # --- rotation -----------------------------------------------------------------------

    def _table_of(self, key_id: str) -> str:
        if self._execute("SELECT 1 FROM subject_keys WHERE key_id = ? LIMIT 1", (key_id,)):
            return "subject_keys"
        if self._execute("SELECT 1 FROM signing_keys WHERE key_id = ? LIMIT 1", (key_id,)):
            return "signing_keys"
        raise KeyDestroyed("key does not exist", key_id=key_id)

    def rotate_key(self, key_id: str) -> int:
        check_key_id(key_id)
        table = self._table_of(key_id)
        column = "key_bytes" if table == "subject_keys" else "private_key"
        size = 32 if table == "subject_keys" else PRIVATE_KEY_LEN
        # One statement: two rotations at once make two versions, never one twice.
        self._execute(
            f"INSERT INTO {table} (key_id, version, {column}, created_at) "  # noqa: S608
            f"SELECT ?, MAX(version) + 1, ?, ? FROM {table} WHERE key_id = ?",
            (key_id, self._random_bytes(size), self._clock(), key_id),
        )
        return self.key_versions(key_id).latest

    def rewrap(self, key_id: str, wrapped: bytes) -> bytes:
        check_key_id(key_id)
        version = wrapped_key_version(key_id, wrapped)
        dek = unwrap_dek(key_id, self._usable_kek(key_id, version), wrapped)
        latest, kek = self._latest(key_id)
        return wrap_dek(key_id, kek, latest, dek, self._random_bytes)

    def wrapped_version(self, key_id: str, wrapped: bytes) -> int:
        return wrapped_key_version(key_id, wrapped)

    def key_versions(self, key_id: str) -> KeyVersions:
        check_key_id(key_id)
        table = self._table_of(key_id)
        rows = self._execute(
            f"SELECT MAX(version), MIN(version), COALESCE((SELECT min_decryption "  # noqa: S608
            f"FROM key_limits WHERE key_id = ?), 1) FROM {table} WHERE key_id = ?",
            (key_id, key_id),
        )
        latest, lowest, min_decryption = rows[0]
        assert isinstance(latest, int) and isinstance(lowest, int)
        assert isinstance(min_decryption, int)
        return KeyVersions(latest, max(min_decryption, lowest), lowest)

    def set_min_decryption_version(self, key_id: str, version: int) -> None:
        check_key_id(key_id)
        versions = self.key_versions(key_id)
        if not versions.min_available <= version <= versions.latest:
            raise KmsError("minimum decryption version out of range", key_id=key_id)
        self._execute(
            "INSERT INTO key_limits (key_id, min_decryption) VALUES (?, ?) "
            "ON CONFLICT (key_id) DO UPDATE SET min_decryption = excluded.min_decryption",
            (key_id, version),
        )

    def trim_key(self, key_id: str, min_available_version: int) -> None:
        check_key_id(key_id)
        table = self._table_of(key_id)
        versions = self.key_versions(key_id)
        if min_available_version > versions.min_decryption:
            raise KmsError("cannot trim above the minimum decryption version", key_id=key_id)
        _, deleted = self._run(
            f"DELETE FROM {table} WHERE key_id = ? AND version < ?",  # noqa: S608
            (key_id, min_available_version),
        )
        if deleted:
            self._scrub_journal()  # the trimmed versions' bytes leave the WAL too

    def public_keys(self, key_id: str) -> dict[int, bytes]:
        check_key_id(key_id)
        self._signing_key(key_id)  # not a signing key, or missing: raises
        rows = self._execute(
            "SELECT version, private_key FROM signing_keys WHERE key_id = ? ORDER BY version",
            (key_id,),
        )
        keys: dict[int, bytes] = {}
        for version, private_key in rows:
            assert isinstance(version, int) and isinstance(private_key, bytes)
            keys[version] = local_public_key(private_key)
        return keys

    def create_signing_key(self, key_id: str) -> None:
        check_key_id(key_id)
        self._insert_new(
            "INSERT INTO signing_keys (key_id, version, private_key, created_at) "
            "SELECT ?, 1, ?, ? WHERE NOT EXISTS (SELECT 1 FROM subject_keys WHERE key_id = ?)",
            (key_id, self._random_bytes(PRIVATE_KEY_LEN), self._clock(), key_id),
            key_id,
        )

    def _signing_key(self, key_id: str) -> tuple[int, bytes]:
        """The latest version of signing key ``key_id`` and its private key."""
        rows = self._execute(
            "SELECT version, private_key FROM signing_keys WHERE key_id = ? "
            "ORDER BY version DESC LIMIT 1",
            (key_id,),
        )
        if not rows:
            if self._execute("SELECT 1 FROM subject_keys WHERE key_id = ?", (key_id,)):
                raise KmsError("key is not a signing key", key_id=key_id)
            raise KeyDestroyed("key does not exist", key_id=key_id)
        version, private_key = rows[0]
        assert isinstance(version, int) and isinstance(private_key, bytes)
        return version, private_key

    def sign(self, key_id: str, data: bytes) -> bytes:
        check_key_id(key_id)
        version, private_key = self._signing_key(key_id)
        return local_sign(private_key, version, data)

    def sign_many(self, key_id: str, items: Sequence[bytes]) -> list[bytes]:
        check_key_id(key_id)
        if not items:
            return []
        version, private_key = self._signing_key(key_id)  # one lookup for the batch
        return [local_sign(private_key, version, data) for data in items]

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        check_key_id(key_id)
        # The lookup comes first, so that a missing key raises KeyDestroyed whatever
        # the signature holds; then the version the signature names, if still allowed.
        self._signing_key(key_id)
        version = local_signature_version(signature)
        if version is None or version < self.key_versions(key_id).min_decryption:
            return False
        rows = self._execute(
            "SELECT private_key FROM signing_keys WHERE key_id = ? AND version = ?",
            (key_id, version),
        )
        if not rows:
            return False
        private_key = rows[0][0]
        assert isinstance(private_key, bytes)
        return verify_offline(local_public_key(private_key), data, signature)

    def public_key(self, key_id: str) -> bytes:
        check_key_id(key_id)
        return local_public_key(self._signing_key(key_id)[1])

    def close(self) -> None:
        with self._lock:
            self._db.close()
