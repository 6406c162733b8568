"""The KeyManager contract, run on every backend (memory, local keystore, real OpenBao)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from kms.base import DataKey, KeyDestroyed, KeyManager, KmsError, KmsUnavailable


def new_key_id() -> str:
    return "k" + secrets.token_hex(12)


INVALID_KEY_IDS = [
    pytest.param("Alice@example.com", id="email"),
    pytest.param("", id="empty"),
    pytest.param("a" * 65, id="65-chars"),
    pytest.param("UPPER", id="uppercase"),
    pytest.param("../../sys/mounts", id="path-traversal"),
    pytest.param("a b", id="space"),
    pytest.param("a/b", id="slash"),
    pytest.param("abc\n", id="trailing-newline"),
]


def test_round_trip(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    assert any_kms.key_exists(key_id)

    data_key = any_kms.generate_data_key(key_id)

    assert isinstance(data_key, DataKey)
    assert len(data_key.plaintext) == 32
    assert data_key.wrapped != data_key.plaintext
    assert data_key.plaintext not in data_key.wrapped
    assert data_key.key_version >= 1
    assert any_kms.unwrap(key_id, data_key.wrapped) == data_key.plaintext


def test_data_keys_are_fresh(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    first = any_kms.generate_data_key(key_id)
    second = any_kms.generate_data_key(key_id)
    assert first.plaintext != second.plaintext
    assert first.wrapped != second.wrapped
    assert any_kms.unwrap(key_id, first.wrapped) == first.plaintext
    assert any_kms.unwrap(key_id, second.wrapped) == second.plaintext


def test_unwrap_with_another_key_fails(any_kms: KeyManager) -> None:
    owner, stranger = new_key_id(), new_key_id()
    any_kms.create_key(owner)
    any_kms.create_key(stranger)
    data_key = any_kms.generate_data_key(owner)

    with pytest.raises(KmsError) as caught:
        any_kms.unwrap(stranger, data_key.wrapped)

    # The stranger key exists: this is a wrong-key error, not a shredded subject.
    assert not isinstance(caught.value, KeyDestroyed | KmsUnavailable)
    assert data_key.plaintext.hex() not in str(caught.value)
    # The owner can still unwrap it.
    assert any_kms.unwrap(owner, data_key.wrapped) == data_key.plaintext


def test_destroy_makes_the_key_unusable(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    data_key = any_kms.generate_data_key(key_id)

    any_kms.destroy_key(key_id)

    assert any_kms.key_exists(key_id) is False
    with pytest.raises(KeyDestroyed) as caught:
        any_kms.unwrap(key_id, data_key.wrapped)
    assert caught.value.key_id == key_id
    with pytest.raises(KeyDestroyed):
        any_kms.generate_data_key(key_id)


def test_destroy_is_idempotent(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    any_kms.destroy_key(key_id)
    any_kms.destroy_key(key_id)
    assert any_kms.key_exists(key_id) is False


def test_destroy_of_a_never_created_key_succeeds(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.destroy_key(key_id)
    assert any_kms.key_exists(key_id) is False


def test_destroy_leaves_other_keys_alone(any_kms: KeyManager) -> None:
    doomed, survivor = new_key_id(), new_key_id()
    any_kms.create_key(doomed)
    any_kms.create_key(survivor)
    data_key = any_kms.generate_data_key(survivor)

    any_kms.destroy_key(doomed)

    assert any_kms.key_exists(survivor)
    assert any_kms.unwrap(survivor, data_key.wrapped) == data_key.plaintext


def test_create_existing_key_fails(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    data_key = any_kms.generate_data_key(key_id)

    with pytest.raises(KmsError) as caught:
        any_kms.create_key(key_id)

    assert not isinstance(caught.value, KmsUnavailable)
    # The existing key was not replaced: its wrapped DEKs still open.
    assert any_kms.unwrap(key_id, data_key.wrapped) == data_key.plaintext


def test_create_after_destroy_does_not_revive_old_data(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    old = any_kms.generate_data_key(key_id)
    any_kms.destroy_key(key_id)

    any_kms.create_key(key_id)

    with pytest.raises(KmsError):
        any_kms.unwrap(key_id, old.wrapped)


@pytest.mark.parametrize("key_id", INVALID_KEY_IDS)
def test_create_rejects_invalid_key_id(any_kms: KeyManager, key_id: str) -> None:
    with pytest.raises(KmsError) as caught:
        any_kms.create_key(key_id)
    assert not isinstance(caught.value, KmsUnavailable)
    # The id may be personal data: the message must not echo it.
    if key_id:
        assert key_id not in str(caught.value)


OPERATIONS: list[tuple[str, Callable[[KeyManager, str], object]]] = [
    ("generate_data_key", lambda kms, key_id: kms.generate_data_key(key_id)),
    ("unwrap", lambda kms, key_id: kms.unwrap(key_id, b"vault:v1:AAAA")),
    ("destroy_key", lambda kms, key_id: kms.destroy_key(key_id)),
    ("key_exists", lambda kms, key_id: kms.key_exists(key_id)),
]


@pytest.mark.parametrize("key_id", INVALID_KEY_IDS)
@pytest.mark.parametrize(("name", "operation"), OPERATIONS, ids=[name for name, _ in OPERATIONS])
def test_every_operation_rejects_invalid_key_id(
    any_kms: KeyManager,
    key_id: str,
    name: str,
    operation: Callable[[KeyManager, str], object],
) -> None:
    # Key ids end up in KMS request paths: a malformed one must never reach the KMS.
    before = any_kms.calls
    with pytest.raises(KmsError) as caught:
        operation(any_kms, key_id)
    assert not isinstance(caught.value, KmsUnavailable | KeyDestroyed), name
    assert any_kms.calls == before


def test_calls_counts_every_round_trip(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    seen = [any_kms.calls]

    def step() -> None:
        assert any_kms.calls > seen[-1]
        seen.append(any_kms.calls)

    any_kms.create_key(key_id)
    step()
    data_key = any_kms.generate_data_key(key_id)
    step()
    any_kms.unwrap(key_id, data_key.wrapped)
    step()
    any_kms.unwrap_many([(key_id, data_key.wrapped)])
    step()
    any_kms.key_exists(key_id)
    step()
    any_kms.destroy_key(key_id)
    step()


def test_unwrap_many_returns_results_in_order(any_kms: KeyManager) -> None:
    alive_a, doomed, alive_b = new_key_id(), new_key_id(), new_key_id()
    for key_id in (alive_a, doomed, alive_b):
        any_kms.create_key(key_id)
    key_a = any_kms.generate_data_key(alive_a)
    key_doomed = any_kms.generate_data_key(doomed)
    key_b = any_kms.generate_data_key(alive_b)
    any_kms.destroy_key(doomed)

    results = any_kms.unwrap_many(
        [
            (alive_a, key_a.wrapped),
            (doomed, key_doomed.wrapped),
            (alive_b, key_b.wrapped),
            (alive_b, key_a.wrapped),  # wrapped by another key
        ]
    )

    assert len(results) == 4
    assert results[0] == key_a.plaintext
    assert isinstance(results[1], KeyDestroyed)
    assert results[1].key_id == doomed
    assert results[2] == key_b.plaintext
    assert isinstance(results[3], KmsError)
    assert not isinstance(results[3], KeyDestroyed)


def test_unwrap_many_of_nothing(any_kms: KeyManager) -> None:
    assert any_kms.unwrap_many([]) == []


def test_data_key_repr_hides_the_key(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)
    data_key = any_kms.generate_data_key(key_id)

    for text in (repr(data_key), str(data_key), f"{data_key}", f"{data_key!r}"):
        assert data_key.plaintext.hex() not in text
        assert data_key.plaintext.hex().upper() not in text
        assert repr(data_key.plaintext) not in text
        assert str(data_key.plaintext) not in text
    assert "key_version" in repr(data_key)


def test_data_key_repr_hides_fixed_bytes() -> None:
    dek = bytes(range(32))
    data_key = DataKey(dek, b"w" * 60, 3)
    text = repr(data_key)
    assert dek.hex() not in text
    assert repr(dek) not in text
    assert "\\x00\\x01" not in text
    assert "key_version=3" in text
