"""The KeyManager contract, run on every backend (memory, local keystore, real OpenBao)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable

import pytest

from kms.base import DataKey, KeyDestroyed, KeyManager, KmsError, KmsUnavailable
from kms.signatures import PUBLIC_KEY_LEN, raw_ed25519_signature, verify_offline


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
    ("create_signing_key", lambda kms, key_id: kms.create_signing_key(key_id)),
    ("sign", lambda kms, key_id: kms.sign(key_id, b"head")),
    ("sign_many", lambda kms, key_id: kms.sign_many(key_id, [b"head"])),
    ("verify", lambda kms, key_id: kms.verify(key_id, b"head", b"vault:v1:AAAA")),
    ("public_key", lambda kms, key_id: kms.public_key(key_id)),
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

    signing_key_id = new_key_id()
    any_kms.create_signing_key(signing_key_id)
    step()
    signature = any_kms.sign(signing_key_id, b"head")
    step()
    any_kms.sign_many(signing_key_id, [b"head", b"tail"])
    step()
    any_kms.verify(signing_key_id, b"head", signature)
    step()
    any_kms.public_key(signing_key_id)
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


# --- signing keys -------------------------------------------------------------------


def test_sign_and_verify(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    assert any_kms.key_exists(key_id)

    signature = any_kms.sign(key_id, b"seq=7 hash=ab12")

    assert isinstance(signature, bytes)
    assert any_kms.verify(key_id, b"seq=7 hash=ab12", signature) is True


def test_signature_verifies_offline_with_the_public_key(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    signature = any_kms.sign(key_id, b"chain head")

    public_key = any_kms.public_key(key_id)

    assert len(public_key) == PUBLIC_KEY_LEN
    assert any_kms.public_key(key_id) == public_key
    raw = raw_ed25519_signature(signature)
    assert raw is not None and len(raw) == 64
    assert verify_offline(public_key, b"chain head", signature)
    assert not verify_offline(public_key, b"chain heaD", signature)


def test_tampered_message_fails_verification(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    data = b"seq=12 hash=" + b"0" * 64
    signature = any_kms.sign(key_id, data)

    for i in (0, len(data) // 2, len(data) - 1):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        assert any_kms.verify(key_id, bytes(tampered), signature) is False
    assert any_kms.verify(key_id, data + b"\n", signature) is False
    assert any_kms.verify(key_id, b"", signature) is False


def test_tampered_signature_fails_verification(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    signature = any_kms.sign(key_id, b"head")
    raw = raw_ed25519_signature(signature)
    assert raw is not None

    # Flip a bit in each region of the raw signature (R, then S), keeping the format.
    for i in (0, 31, 32, 63):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        forged = signature.replace(raw, bytes(flipped))
        if forged == signature:  # Transit's form is base64: re-encode it
            forged = b"vault:v1:" + base64.b64encode(bytes(flipped))
        assert any_kms.verify(key_id, b"head", forged) is False, i


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"vault:v1:AAAA", id="short-transit"),
        pytest.param(b"vault:v0:" + base64.b64encode(bytes(64)), id="version-0"),
        pytest.param(b"vault:v99:" + base64.b64encode(bytes(64)), id="version-too-new"),
        pytest.param(b"\x01" + bytes(64), id="zero-local"),
        pytest.param(b"\x02" + bytes(64), id="local-unknown-version"),
        pytest.param(b"\xff\xfe not ascii", id="binary"),
    ],
)
def test_malformed_signature_is_not_valid(any_kms: KeyManager, signature: bytes) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    assert any_kms.verify(key_id, b"head", signature) is False


def test_signature_of_another_key_fails(any_kms: KeyManager) -> None:
    signer, other = new_key_id(), new_key_id()
    any_kms.create_signing_key(signer)
    any_kms.create_signing_key(other)
    signature = any_kms.sign(signer, b"head")

    assert any_kms.verify(other, b"head", signature) is False
    assert any_kms.public_key(signer) != any_kms.public_key(other)
    assert not verify_offline(any_kms.public_key(other), b"head", signature)


def test_create_signing_key_twice_fails(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    public_key = any_kms.public_key(key_id)
    signature = any_kms.sign(key_id, b"head")

    with pytest.raises(KmsError) as caught:
        any_kms.create_signing_key(key_id)

    assert not isinstance(caught.value, KmsUnavailable | KeyDestroyed)
    assert caught.value.key_id == key_id
    # The existing key was not replaced.
    assert any_kms.public_key(key_id) == public_key
    assert any_kms.verify(key_id, b"head", signature)


def test_subject_and_signing_keys_share_one_namespace(any_kms: KeyManager) -> None:
    subject_key, signing_key = new_key_id(), new_key_id()
    any_kms.create_key(subject_key)
    any_kms.create_signing_key(signing_key)

    with pytest.raises(KmsError) as caught:
        any_kms.create_signing_key(subject_key)
    assert not isinstance(caught.value, KmsUnavailable | KeyDestroyed)
    with pytest.raises(KmsError) as caught:
        any_kms.create_key(signing_key)
    assert not isinstance(caught.value, KmsUnavailable | KeyDestroyed)


def test_a_subject_key_does_not_sign(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_key(key_id)

    operations: list[Callable[[], object]] = [
        lambda: any_kms.sign(key_id, b"head"),
        lambda: any_kms.verify(key_id, b"head", b"vault:v1:" + base64.b64encode(bytes(64))),
        lambda: any_kms.public_key(key_id),
    ]
    for operation in operations:
        with pytest.raises(KmsError) as caught:
            operation()
        # The key exists: this is a wrong-kind error, not a destroyed key.
        assert not isinstance(caught.value, KmsUnavailable | KeyDestroyed)


def test_signing_with_a_missing_key_raises_key_destroyed(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    operations: list[Callable[[], object]] = [
        lambda: any_kms.sign(key_id, b"head"),
        lambda: any_kms.verify(key_id, b"head", b"vault:v1:" + base64.b64encode(bytes(64))),
        lambda: any_kms.verify(key_id, b"head", b"\xff not even a signature"),
        lambda: any_kms.public_key(key_id),
    ]
    for operation in operations:
        with pytest.raises(KeyDestroyed) as caught:
            operation()
        assert caught.value.key_id == key_id


def test_destroyed_signing_key_no_longer_signs(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    signature = any_kms.sign(key_id, b"head")

    any_kms.destroy_key(key_id)

    assert any_kms.key_exists(key_id) is False
    with pytest.raises(KeyDestroyed):
        any_kms.sign(key_id, b"head")
    with pytest.raises(KeyDestroyed):
        any_kms.verify(key_id, b"head", signature)


def test_sign_many_signs_each_item_in_order(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    messages = [b"receipt %d" % i for i in range(5)]

    signatures = any_kms.sign_many(key_id, messages)

    assert len(signatures) == len(messages)
    for message, signature in zip(messages, signatures, strict=True):
        assert any_kms.verify(key_id, message, signature) is True
        assert verify_offline(any_kms.public_key(key_id), message, signature)
    assert any_kms.verify(key_id, messages[0], signatures[1]) is False  # the order is kept
    # Ed25519 is deterministic: the batch signs as the single call does.
    assert signatures[2] == any_kms.sign(key_id, messages[2])


def test_sign_many_of_nothing_is_nothing(any_kms: KeyManager) -> None:
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    assert any_kms.sign_many(key_id, []) == []


def test_sign_many_with_a_missing_or_wrong_kind_of_key_fails(any_kms: KeyManager) -> None:
    missing, subject_key = new_key_id(), new_key_id()
    any_kms.create_key(subject_key)

    with pytest.raises(KeyDestroyed) as caught:
        any_kms.sign_many(missing, [b"one", b"two"])
    assert caught.value.key_id == missing
    with pytest.raises(KmsError) as refused:
        any_kms.sign_many(subject_key, [b"one", b"two"])
    assert not isinstance(refused.value, KmsUnavailable | KeyDestroyed)


def test_sign_many_batches_under_the_string_limit(any_kms: KeyManager) -> None:
    """A batch shred's 1 000 receipts: OpenBao refuses a batch of 500 (1 000 JSON
    strings), so Transit signs them in calls of 400."""
    key_id = new_key_id()
    any_kms.create_signing_key(key_id)
    messages = [b"receipt %d" % i for i in range(1000)]

    before = any_kms.calls
    signatures = any_kms.sign_many(key_id, messages)

    if any_kms.backend_name == "vault-transit":
        assert any_kms.calls - before == 3
    assert len(signatures) == 1000
    public_key = any_kms.public_key(key_id)
    assert all(verify_offline(public_key, m, s) for m, s in zip(messages, signatures, strict=True))


def test_unwrap_many_batches_each_key_and_keeps_order(any_kms: KeyManager) -> None:
    """Many DEKs of one key go in batches under OpenBao's 1 000-string limit (450 items
    = 2 calls at 400 a call); DEKs of different keys are unwrapped side by side."""
    one = new_key_id()
    any_kms.create_key(one)
    deks = [any_kms.generate_data_key(one) for _ in range(3)]
    others = [new_key_id() for _ in range(12)]
    for key_id in others:
        any_kms.create_key(key_id)
    other_deks = [any_kms.generate_data_key(k) for k in others]

    same_key = [(one, deks[i % 3].wrapped) for i in range(450)]
    before = any_kms.calls
    results = any_kms.unwrap_many(same_key)
    if any_kms.backend_name == "vault-transit":
        assert any_kms.calls - before == 2
    assert results == [deks[i % 3].plaintext for i in range(450)]

    mixed = [(k, d.wrapped) for k, d in zip(others, other_deks, strict=True)]
    assert any_kms.unwrap_many(mixed) == [d.plaintext for d in other_deks]
