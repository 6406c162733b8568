"""The local keystore: a destroyed key's bytes are really gone from disk."""

from __future__ import annotations

import secrets
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kms.base import KeyDestroyed, KmsError, KmsUnavailable
from kms.local_keystore import LocalKeystore


def new_key_id() -> str:
    return "k" + secrets.token_hex(12)


@pytest.fixture
def keystore_path(tmp_path: Path) -> Path:
    return tmp_path / "keystore" / "keys.db"


@pytest.fixture
def keystore(keystore_path: Path) -> Iterator[LocalKeystore]:
    kms = LocalKeystore(keystore_path)
    yield kms
    kms.close()


def raw_key_bytes(path: Path, key_id: str) -> list[bytes]:
    """Every stored version of ``key_id``, read behind the keystore's back."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT key_bytes FROM subject_keys WHERE key_id = ? ORDER BY version", (key_id,)
        ).fetchall()
    db.close()
    return [bytes(row[0]) for row in rows]


def disk_bytes(directory: Path) -> dict[str, bytes]:
    """The keystore file and everything beside it (-wal, -shm, -journal)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def files_holding(directory: Path, needle: bytes) -> list[str]:
    return [name for name, content in disk_bytes(directory).items() if needle in content]


def test_destroyed_key_bytes_leave_the_disk(keystore: LocalKeystore, keystore_path: Path) -> None:
    key_id = new_key_id()
    keystore.create_key(key_id)
    keystore.generate_data_key(key_id)
    [key_bytes] = raw_key_bytes(keystore_path, key_id)
    assert len(key_bytes) == 32
    # The check below can fail: before the shred the bytes are on disk.
    assert files_holding(keystore_path.parent, key_bytes)

    keystore.destroy_key(key_id)

    assert files_holding(keystore_path.parent, key_bytes) == []
    assert keystore.key_exists(key_id) is False


def test_destroy_among_many_keys_scrubs_only_the_destroyed(
    keystore: LocalKeystore, keystore_path: Path
) -> None:
    # Enough keys to fill several pages, so deletes leave free space inside pages.
    key_ids = [new_key_id() for _ in range(300)]
    for key_id in key_ids:
        keystore.create_key(key_id)
    key_bytes = {key_id: raw_key_bytes(keystore_path, key_id)[0] for key_id in key_ids}
    doomed = set(key_ids[::3])

    for key_id in doomed:
        keystore.destroy_key(key_id)

    on_disk = b"".join(disk_bytes(keystore_path.parent).values())
    for key_id in key_ids:
        if key_id in doomed:
            assert key_bytes[key_id] not in on_disk, key_id
        else:
            assert key_bytes[key_id] in on_disk, key_id
            assert keystore.key_exists(key_id)


def test_destroy_scrubs_while_another_instance_is_open(keystore_path: Path) -> None:
    writer = LocalKeystore(keystore_path)
    reader = LocalKeystore(keystore_path)
    try:
        key_id = new_key_id()
        writer.create_key(key_id)
        data_key = writer.generate_data_key(key_id)
        assert reader.unwrap(key_id, data_key.wrapped) == data_key.plaintext
        [key_bytes] = raw_key_bytes(keystore_path, key_id)

        writer.destroy_key(key_id)

        assert files_holding(keystore_path.parent, key_bytes) == []
        with pytest.raises(KeyDestroyed):
            reader.unwrap(key_id, data_key.wrapped)
    finally:
        reader.close()
        writer.close()


def test_keystore_file_is_private(keystore: LocalKeystore, keystore_path: Path) -> None:
    keystore.create_key(new_key_id())
    assert stat.S_IMODE(keystore_path.stat().st_mode) == 0o600
    # SQLite gives its side files the main file's permissions.
    for side in keystore_path.parent.iterdir():
        assert stat.S_IMODE(side.stat().st_mode) & 0o077 == 0, side.name


def test_two_instances_share_keys_and_destroys(keystore_path: Path) -> None:
    first = LocalKeystore(keystore_path)
    second = LocalKeystore(keystore_path)
    try:
        key_id = new_key_id()
        first.create_key(key_id)
        assert second.key_exists(key_id)

        data_key = second.generate_data_key(key_id)
        assert first.unwrap(key_id, data_key.wrapped) == data_key.plaintext

        with pytest.raises(KmsError) as caught:
            second.create_key(key_id)
        assert not isinstance(caught.value, KmsUnavailable)

        second.destroy_key(key_id)

        assert first.key_exists(key_id) is False
        with pytest.raises(KeyDestroyed):
            first.unwrap(key_id, data_key.wrapped)
        with pytest.raises(KeyDestroyed):
            first.generate_data_key(key_id)
    finally:
        second.close()
        first.close()


def test_keys_survive_close_and_reopen(keystore_path: Path) -> None:
    kms = LocalKeystore(keystore_path)
    kept, shredded = new_key_id(), new_key_id()
    kms.create_key(kept)
    kms.create_key(shredded)
    kept_key = kms.generate_data_key(kept)
    shredded_key = kms.generate_data_key(shredded)
    kms.destroy_key(shredded)
    kms.close()

    reopened = LocalKeystore(keystore_path)
    try:
        assert reopened.key_exists(kept)
        assert reopened.unwrap(kept, kept_key.wrapped) == kept_key.plaintext
        assert reopened.key_exists(shredded) is False
        with pytest.raises(KeyDestroyed):
            reopened.unwrap(shredded, shredded_key.wrapped)
    finally:
        reopened.close()


def test_injected_randomness_makes_keys_reproducible(tmp_path: Path) -> None:
    def counter_bytes() -> Callable[[int], bytes]:
        state = {"n": 0}

        def random_bytes(n: int) -> bytes:
            state["n"] += 1
            return bytes([state["n"] % 256]) * n

        return random_bytes

    wrapped = []
    for name in ("a.db", "b.db"):
        kms = LocalKeystore(tmp_path / name, random_bytes=counter_bytes())
        kms.create_key("subject")
        wrapped.append(kms.generate_data_key("subject").wrapped)
        kms.close()
    assert wrapped[0] == wrapped[1]


def test_unopenable_keystore_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    with pytest.raises(KmsUnavailable) as caught:
        LocalKeystore(blocker / "keys.db")
    assert caught.value.key_id is None
    assert isinstance(caught.value.__cause__, OSError)


def test_wrapped_key_from_another_keystore_fails(tmp_path: Path) -> None:
    one = LocalKeystore(tmp_path / "one.db")
    two = LocalKeystore(tmp_path / "two.db")
    try:
        one.create_key("same_id")
        two.create_key("same_id")
        data_key = one.generate_data_key("same_id")
        with pytest.raises(KmsError) as caught:
            two.unwrap("same_id", data_key.wrapped)
        assert not isinstance(caught.value, KeyDestroyed | KmsUnavailable)
    finally:
        two.close()
        one.close()


def test_signing_key_is_stored_in_its_own_table(
    keystore: LocalKeystore, keystore_path: Path
) -> None:
    key_id = new_key_id()
    keystore.create_signing_key(key_id)

    with sqlite3.connect(keystore_path) as db:
        rows = db.execute(
            "SELECT version, private_key FROM signing_keys WHERE key_id = ?", (key_id,)
        ).fetchall()
        in_subject_keys = db.execute(
            "SELECT 1 FROM subject_keys WHERE key_id = ?", (key_id,)
        ).fetchall()
    db.close()
    assert [(version, len(private_key)) for version, private_key in rows] == [(1, 32)]
    assert in_subject_keys == []


def test_signing_key_survives_close_and_reopen(keystore_path: Path) -> None:
    kms = LocalKeystore(keystore_path)
    key_id = new_key_id()
    kms.create_signing_key(key_id)
    public_key = kms.public_key(key_id)
    signature = kms.sign(key_id, b"head")
    kms.close()

    reopened = LocalKeystore(keystore_path)
    try:
        assert reopened.public_key(key_id) == public_key
        assert reopened.verify(key_id, b"head", signature)
    finally:
        reopened.close()


def test_destroyed_signing_key_bytes_leave_the_disk(
    keystore: LocalKeystore, keystore_path: Path
) -> None:
    key_id = new_key_id()
    keystore.create_signing_key(key_id)
    with sqlite3.connect(keystore_path) as db:
        [(private_key,)] = db.execute(
            "SELECT private_key FROM signing_keys WHERE key_id = ?", (key_id,)
        ).fetchall()
    db.close()
    assert files_holding(keystore_path.parent, bytes(private_key))

    keystore.destroy_key(key_id)

    assert files_holding(keystore_path.parent, bytes(private_key)) == []
