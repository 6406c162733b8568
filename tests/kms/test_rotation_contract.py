"""The KeyManager rotation contract (rotate, rewrap, versions, minimum decryption version,
trim, public keys of every version), run on every backend: memory, local keystore and
real OpenBao."""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kms.base import KeyDestroyed, KeyManager, KeyVersions, KmsError, KmsUnavailable
from kms.local_keystore import LocalKeystore
from kms.signatures import PUBLIC_KEY_LEN, signature_key_version, verify_offline
from tests.kms.test_contract import INVALID_KEY_IDS


def new_key_id() -> str:
    return "k" + secrets.token_hex(12)


def assert_refused(kms: KeyManager, key_id: str, wrapped: bytes) -> None:
    """``wrapped`` no longer unwraps (nor rewraps): a refused version, not a missing key."""
    for operation in (kms.unwrap, kms.rewrap):
        with pytest.raises(KmsError) as caught:
            operation(key_id, wrapped)
        assert not isinstance(caught.value, KeyDestroyed | KmsUnavailable), operation.__name__
        assert caught.value.key_id == key_id


def rotated_key(kms: KeyManager) -> tuple[str, bytes, bytes]:
    """A subject key rotated once: its id, a DEK wrapped under v1, and that DEK."""
    key_id = new_key_id()
    kms.create_key(key_id)
    old = kms.generate_data_key(key_id)
    assert old.key_version == 1
    assert kms.rotate_key(key_id) == 2
    return key_id, old.wrapped, old.plaintext


def test_a_new_key_has_one_version(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    assert any_kms.key_versions(key_id) == KeyVersions(1, 1, 1)
    signing = new_key_id()
    any_kms.create_signing_key(signing)
    assert any_kms.key_versions(signing) == KeyVersions(1, 1, 1)


def test_rotate_adds_a_version_and_new_wraps_use_it(any_kms: KeyManager) -> None:
    key_id, old_wrapped, old_dek = rotated_key(any_kms)

    assert any_kms.key_versions(key_id) == KeyVersions(2, 1, 1)
    fresh = any_kms.generate_data_key(key_id)
    assert fresh.key_version == 2
    assert any_kms.unwrap(key_id, fresh.wrapped) == fresh.plaintext
    # The DEK wrapped under v1 still unwraps.
    assert any_kms.unwrap(key_id, old_wrapped) == old_dek
    assert any_kms.unwrap_many([(key_id, old_wrapped), (key_id, fresh.wrapped)]) == [
        old_dek,
        fresh.plaintext,
    ]

    assert any_kms.rotate_key(key_id) == 3
    assert any_kms.key_versions(key_id) == KeyVersions(3, 1, 1)
    assert any_kms.generate_data_key(key_id).key_version == 3


def test_rewrap_gives_the_same_dek_under_the_latest_version(any_kms: KeyManager) -> None:
    key_id, old_wrapped, old_dek = rotated_key(any_kms)

    rewrapped = any_kms.rewrap(key_id, old_wrapped)

    assert rewrapped != old_wrapped
    assert old_dek not in rewrapped
    assert any_kms.unwrap(key_id, rewrapped) == old_dek
    # It names version 2: it survives v1 being refused.
    any_kms.set_min_decryption_version(key_id, 2)
    assert any_kms.unwrap(key_id, rewrapped) == old_dek


def test_rewrap_with_another_key_fails(any_kms: KeyManager) -> None:
    _, old_wrapped, _ = rotated_key(any_kms)
    stranger = new_key_id()
    any_kms.create_key(stranger)
    assert_refused(any_kms, stranger, old_wrapped)
    with pytest.raises(KeyDestroyed):
        any_kms.rewrap(new_key_id(), old_wrapped)


def test_min_decryption_refuses_older_wraps_until_lowered(any_kms: KeyManager) -> None:
    key_id, old_wrapped, old_dek = rotated_key(any_kms)
    rewrapped = any_kms.rewrap(key_id, old_wrapped)

    any_kms.set_min_decryption_version(key_id, 2)

    assert any_kms.key_versions(key_id) == KeyVersions(2, 2, 1)
    assert_refused(any_kms, key_id, old_wrapped)
    [result] = any_kms.unwrap_many([(key_id, old_wrapped)])
    assert isinstance(result, KmsError) and not isinstance(result, KeyDestroyed)
    assert any_kms.unwrap(key_id, rewrapped) == old_dek
    assert any_kms.key_exists(key_id)

    # An operator restoring an older database copy lowers it again: v1 is back.
    any_kms.set_min_decryption_version(key_id, 1)

    assert any_kms.key_versions(key_id) == KeyVersions(2, 1, 1)
    assert any_kms.unwrap(key_id, old_wrapped) == old_dek


@pytest.mark.parametrize("version", [0, 3])
def test_min_decryption_out_of_range_is_refused(any_kms: KeyManager, version: int) -> None:
    key_id, old_wrapped, old_dek = rotated_key(any_kms)
    with pytest.raises(KmsError) as caught:
        any_kms.set_min_decryption_version(key_id, version)
    assert not isinstance(caught.value, KeyDestroyed | KmsUnavailable)
    assert any_kms.key_versions(key_id) == KeyVersions(2, 1, 1)
    assert any_kms.unwrap(key_id, old_wrapped) == old_dek


def test_trim_removes_older_versions_for_good(any_kms: KeyManager) -> None:
    key_id, old_wrapped, old_dek = rotated_key(any_kms)
    rewrapped = any_kms.rewrap(key_id, old_wrapped)
    any_kms.set_min_decryption_version(key_id, 2)

    any_kms.trim_key(key_id, 2)

    assert any_kms.key_versions(key_id) == KeyVersions(2, 2, 2)
    assert_refused(any_kms, key_id, old_wrapped)
    assert any_kms.unwrap(key_id, rewrapped) == old_dek
    assert any_kms.generate_data_key(key_id).key_version == 2
    # Lowering the minimum cannot bring v1 back: it is gone.
    with pytest.raises(KmsError) as caught:
        any_kms.set_min_decryption_version(key_id, 1)
    assert not isinstance(caught.value, KeyDestroyed | KmsUnavailable)
    assert_refused(any_kms, key_id, old_wrapped)
    # Trimming as far again is a no-op; rotation goes on from the trimmed key.
    any_kms.trim_key(key_id, 2)
    any_kms.trim_key(key_id, 1)
    assert any_kms.key_versions(key_id) == KeyVersions(2, 2, 2)
    assert any_kms.rotate_key(key_id) == 3
    assert any_kms.unwrap(key_id, any_kms.rewrap(key_id, rewrapped)) == old_dek


def test_trim_above_min_decryption_is_refused(any_kms: KeyManager) -> None:
    key_id, old_wrapped, old_dek = rotated_key(any_kms)

    with pytest.raises(KmsError) as caught:
        any_kms.trim_key(key_id, 2)

    assert not isinstance(caught.value, KeyDestroyed | KmsUnavailable)
    assert any_kms.key_versions(key_id) == KeyVersions(2, 1, 1)
    assert any_kms.unwrap(key_id, old_wrapped) == old_dek


def test_a_second_rotation_and_trim_cycle(any_kms: KeyManager) -> None:
    """Trim, rotate again, trim again: the second trim must not trip over settings the
    first one left (Transit's minimum encryption version)."""
    key_id, old_wrapped, old_dek = rotated_key(any_kms)
    wrapped = any_kms.rewrap(key_id, old_wrapped)
    any_kms.set_min_decryption_version(key_id, 2)
    any_kms.trim_key(key_id, 2)

    assert any_kms.rotate_key(key_id) == 3
    assert any_kms.rotate_key(key_id) == 4
    assert any_kms.generate_data_key(key_id).key_version == 4
    wrapped_v4 = any_kms.rewrap(key_id, wrapped)
    any_kms.set_min_decryption_version(key_id, 4)
    any_kms.trim_key(key_id, 4)

    assert any_kms.key_versions(key_id) == KeyVersions(4, 4, 4)
    assert any_kms.unwrap(key_id, wrapped_v4) == old_dek
    assert_refused(any_kms, key_id, wrapped)
    assert any_kms.generate_data_key(key_id).key_version == 4


def test_rotation_operations_on_a_missing_key_raise_key_destroyed(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    wrapped = any_kms.generate_data_key(key_id).wrapped
    any_kms.destroy_key(key_id)
    operations = [
        lambda: any_kms.rotate_key(key_id),
        lambda: any_kms.rewrap(key_id, wrapped),
        lambda: any_kms.key_versions(key_id),
        lambda: any_kms.set_min_decryption_version(key_id, 1),
        lambda: any_kms.trim_key(key_id, 1),
        lambda: any_kms.public_keys(key_id),
    ]
    for operation in operations:
        with pytest.raises(KeyDestroyed) as caught:
            operation()
        assert caught.value.key_id == key_id


def test_destroy_of_a_rotated_key_removes_every_version(any_kms: KeyManager) -> None:
    key_id, old_wrapped, _ = rotated_key(any_kms)
    fresh = any_kms.generate_data_key(key_id)

    any_kms.destroy_key(key_id)

    assert any_kms.key_exists(key_id) is False
    for wrapped in (old_wrapped, fresh.wrapped):
        with pytest.raises(KeyDestroyed):
            any_kms.unwrap(key_id, wrapped)


ROTATION_OPERATIONS: list[tuple[str, Callable[[KeyManager, str], object]]] = [
    ("rotate_key", lambda kms, key_id: kms.rotate_key(key_id)),
    ("rewrap", lambda kms, key_id: kms.rewrap(key_id, b"vault:v1:AAAA")),
    ("key_versions", lambda kms, key_id: kms.key_versions(key_id)),
    ("set_min_decryption_version", lambda kms, key_id: kms.set_min_decryption_version(key_id, 1)),
    ("trim_key", lambda kms, key_id: kms.trim_key(key_id, 1)),
    ("public_keys", lambda kms, key_id: kms.public_keys(key_id)),
]


@pytest.mark.parametrize("key_id", INVALID_KEY_IDS)
@pytest.mark.parametrize(
    ("name", "operation"), ROTATION_OPERATIONS, ids=[name for name, _ in ROTATION_OPERATIONS]
)
def test_every_rotation_operation_rejects_invalid_key_id(
    any_kms: KeyManager, key_id: str, name: str, operation: Callable[[KeyManager, str], object]
) -> None:
    before = any_kms.calls
    with pytest.raises(KmsError) as caught:
        operation(any_kms, key_id)
    assert not isinstance(caught.value, KmsUnavailable | KeyDestroyed), name
    assert any_kms.calls == before


def test_rotation_calls_are_counted(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    wrapped = any_kms.generate_data_key(key_id).wrapped
    signing = new_key_id()
    any_kms.create_signing_key(signing)
    operations = [
        lambda: any_kms.rotate_key(key_id),
        lambda: any_kms.rewrap(key_id, wrapped),
        lambda: any_kms.key_versions(key_id),
        lambda: any_kms.set_min_decryption_version(key_id, 2),
        lambda: any_kms.trim_key(key_id, 2),
        lambda: any_kms.public_keys(signing),
    ]
    for operation in operations:
        before = any_kms.calls
        operation()
        assert any_kms.calls > before
    if any_kms.backend_name == "vault-transit":
        # Transit: a minimum decryption version is one request, and so is a trim's
        # after it (a read, then the trim: the minimum encryption version is set).
        any_kms.rotate_key(key_id)
        any_kms.rotate_key(key_id)
        before = any_kms.calls
        any_kms.set_min_decryption_version(key_id, 4)
        assert any_kms.calls - before == 1
        before = any_kms.calls
        any_kms.trim_key(key_id, 4)
        assert any_kms.calls - before == 2


# --- signing keys -------------------------------------------------------------------


def test_a_rotated_signing_key_signs_with_the_latest_and_verifies_both(
    any_kms: KeyManager,
) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    old = any_kms.sign(key_id, b"seq=1")
    assert signature_key_version(old) == 1

    assert any_kms.rotate_key(key_id) == 2

    new = any_kms.sign(key_id, b"seq=2")
    assert signature_key_version(new) == 2
    assert any_kms.key_versions(key_id) == KeyVersions(2, 1, 1)
    assert any_kms.verify(key_id, b"seq=1", old) is True
    assert any_kms.verify(key_id, b"seq=2", new) is True
    assert any_kms.verify(key_id, b"seq=2", old) is False
    assert any_kms.verify(key_id, b"seq=1", new) is False


def test_public_keys_of_every_version_verify_their_own_signatures_offline(
    any_kms: KeyManager,
) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    assert any_kms.public_keys(key_id) == {1: any_kms.public_key(key_id)}
    old = any_kms.sign(key_id, b"head one")
    any_kms.rotate_key(key_id)
    new = any_kms.sign(key_id, b"head two")

    keys = any_kms.public_keys(key_id)

    assert sorted(keys) == [1, 2]
    assert all(len(key) == PUBLIC_KEY_LEN for key in keys.values())
    assert keys[1] != keys[2]
    assert keys[2] == any_kms.public_key(key_id)
    assert verify_offline(keys[1], b"head one", old)
    assert verify_offline(keys[2], b"head two", new)
    # Each signature checks against its own version's key only.
    assert not verify_offline(keys[2], b"head one", old)
    assert not verify_offline(keys[1], b"head two", new)


def test_min_decryption_refuses_older_signatures_until_lowered(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    old = any_kms.sign(key_id, b"head")
    any_kms.rotate_key(key_id)
    new = any_kms.sign(key_id, b"head")

    any_kms.set_min_decryption_version(key_id, 2)

    assert any_kms.verify(key_id, b"head", old) is False
    assert any_kms.verify(key_id, b"head", new) is True
    any_kms.set_min_decryption_version(key_id, 1)
    assert any_kms.verify(key_id, b"head", old) is True


def test_a_trimmed_signing_version_no_longer_verifies_nor_publishes(
    any_kms: KeyManager,
) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    old = any_kms.sign(key_id, b"head")
    any_kms.rotate_key(key_id)
    new = any_kms.sign(key_id, b"head")
    any_kms.set_min_decryption_version(key_id, 2)

    any_kms.trim_key(key_id, 2)

    assert any_kms.key_versions(key_id) == KeyVersions(2, 2, 2)
    assert list(any_kms.public_keys(key_id)) == [2]
    assert any_kms.verify(key_id, b"head", old) is False
    assert any_kms.verify(key_id, b"head", new) is True
    with pytest.raises(KmsError):
        any_kms.set_min_decryption_version(key_id, 1)
    assert any_kms.verify(key_id, b"head", old) is False


def test_public_keys_of_a_subject_key_is_refused(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    with pytest.raises(KmsError) as caught:
        any_kms.public_keys(key_id)
    assert not isinstance(caught.value, KeyDestroyed | KmsUnavailable)


# --- the local keystore: trimmed versions leave the disk --------------------------------


def _stored(path: Path, table: str, column: str, key_id: str) -> dict[int, bytes]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            f"SELECT version, {column} FROM {table} WHERE key_id = ?",
            (key_id,),
        ).fetchall()
    db.close()
    return {int(version): bytes(value) for version, value in rows}


def _files_holding(directory: Path, needle: bytes) -> list[str]:
    """The keystore file and its -wal/-shm holding ``needle``."""
    return [p.name for p in directory.iterdir() if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize(
    ("signing", "table", "column"),
    [(False, "subject_keys", "key_bytes"), (True, "signing_keys", "private_key")],
    ids=["subject", "signing"],
)
def test_trimmed_versions_leave_the_keystore_files(
    tmp_path: Path, signing: bool, table: str, column: str
) -> None:
    path = tmp_path / "keystore" / "keys.db"
    keystore = LocalKeystore(path)
    try:
        key_id = new_key_id()
        (keystore.create_signing_key if signing else keystore.create_key)(key_id)
        keystore.rotate_key(key_id)
        keystore.rotate_key(key_id)
        versions = _stored(path, table, column, key_id)
        assert sorted(versions) == [1, 2, 3]
        # The checks below can fail: before the trim every version is on disk.
        for value in versions.values():
            assert _files_holding(path.parent, value)

        keystore.set_min_decryption_version(key_id, 3)
        keystore.trim_key(key_id, 3)

        assert _files_holding(path.parent, versions[1]) == []
        assert _files_holding(path.parent, versions[2]) == []
        assert _files_holding(path.parent, versions[3])
        assert sorted(_stored(path, table, column, key_id)) == [3]
        wal = path.with_name(path.name + "-wal")
        assert not wal.exists() or versions[1] not in wal.read_bytes()
    finally:
        keystore.close()


def test_rotations_racing_from_two_keystore_instances_each_add_a_version(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keystore" / "keys.db"
    first, second = LocalKeystore(path), LocalKeystore(path)
    try:
        first.create_signing_key("race")
        failures: list[Exception] = []

        def rotate(keystore: LocalKeystore) -> None:
            for _ in range(10):
                try:
                    keystore.rotate_key("race")
                except KmsError as e:
                    failures.append(e)

        threads = [threading.Thread(target=rotate, args=(k,)) for k in (first, second) * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert failures == []
        assert first.key_versions("race") == KeyVersions(41, 1, 1)
        assert sorted(second.public_keys("race")) == list(range(1, 42))
    finally:
        second.close()
        first.close()
