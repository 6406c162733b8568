"""Shred receipts: the document and its canonical bytes, signing with the KMS signing key,
verification offline (any byte changed, another key, another format: refused), and the
receipts Erasure returns (ledger position, signature, the retry's receipt)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kms.signatures import verify_ed25519
from tests.memory_kms import InMemoryKeyManager
from vault.audit.signing import SigningKey
from vault.errors import InvalidArgument, Unavailable
from vault.storage import Storage
from vault.usecases.erasure import Erasure
from vault.usecases.receipts import (
    CONTEXT,
    FORMAT,
    ReceiptInvalid,
    ReceiptSigner,
    ShredReceipt,
    canonical_bytes,
    document,
    receipt_text,
    verify_receipt_text,
)
from vault.usecases.service import VaultService

SHRED_TIME = datetime(2026, 3, 10, 14, 30, 5, 123456, tzinfo=UTC)
SUBJECT = "01hzsubject0000000000000aa"


def _receipt(**changes: object) -> ShredReceipt:
    receipt = ShredReceipt(
        subject_id=SUBJECT,
        key_id="subject-key-0001",
        shredded_at=SHRED_TIME,
        records_deleted=3,
        kms_backend="local-keystore",
        residual_risk="backups hold the key until they expire",
        residual_copies_expire_at=SHRED_TIME + timedelta(days=7),
        records_retained=1,
        retained_until=datetime(2036, 3, 10, tzinfo=UTC),
        ledger_position=42,
        signing_key_id="receipt-signing",
    )
    return replace(receipt, **changes)  # type: ignore[arg-type]


def _signer(name: str = "receipt-signing") -> tuple[ReceiptSigner, bytes]:
    key = SigningKey(InMemoryKeyManager(), name)
    key.ensure()
    return ReceiptSigner(key), key.public_key()


def test_the_document_names_ids_counts_times_and_the_ledger_position() -> None:
    doc = document(_receipt())
    assert doc == {
        "format": FORMAT,
        "subject_id": SUBJECT,
        "key_id": "subject-key-0001",
        "shred_time": "2026-03-10T14:30:05.123456Z",
        "records_deleted": 3,
        "records_retained": 1,
        "retained_until": "2036-03-10T00:00:00.000000Z",
        "kms_backend": "local-keystore",
        "residual_copies_expire_time": "2026-03-17T14:30:05.123456Z",
        "ledger_position": 42,
        "signing_key_id": "receipt-signing",
    }
    assert document(_receipt(retained_until=None))["retained_until"] is None
    # naive times are UTC; other offsets are converted
    naive = _receipt(shredded_at=SHRED_TIME.replace(tzinfo=None))
    assert document(naive)["shred_time"] == doc["shred_time"]
    plus_two = SHRED_TIME.astimezone(timezone(timedelta(hours=2)))
    assert document(_receipt(shredded_at=plus_two))["shred_time"] == doc["shred_time"]


def test_canonical_bytes_are_the_context_and_sorted_compact_ascii_json() -> None:
    doc = document(_receipt())
    data = canonical_bytes(doc)
    assert data.startswith(CONTEXT)
    body = data[len(CONTEXT) :]
    assert body == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")
    assert canonical_bytes(dict(reversed(list(doc.items())))) == data  # order-free
    assert body.isascii() and b" " not in body


def test_a_signed_receipt_verifies_offline_with_the_public_key() -> None:
    signer, public_key = _signer()
    signed = signer.sign(_receipt())
    assert signed.signing_key_id == "receipt-signing"
    assert len(signed.signature) == 64  # the bare Ed25519 signature
    assert verify_ed25519(public_key, canonical_bytes(document(signed)), signed.signature)
    text = receipt_text(signed)
    assert verify_receipt_text(text, public_key) == document(signed)
    assert verify_receipt_text(text.rstrip("\n"), public_key) == document(signed)
    assert json.loads(text)["signing_key_id"] == "receipt-signing"


def test_one_byte_changed_anywhere_in_the_file_fails() -> None:
    signer, public_key = _signer()
    data = receipt_text(signer.sign(_receipt())).encode("ascii")
    for position in range(len(data)):
        for flip in (0x01, 0x20):
            changed = bytearray(data)
            changed[position] ^= flip
            with pytest.raises(ReceiptInvalid):
                verify_receipt_text(bytes(changed).decode("latin-1"), public_key)
    spaced = data.replace(b'": ', b'":\t', 1)  # still JSON, same values: another layout
    with pytest.raises(ReceiptInvalid, match="laid out"):
        verify_receipt_text(spaced.decode("ascii"), public_key)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("subject_id", SUBJECT[:-1] + "b"),
        ("key_id", "subject-key-0002"),
        ("shred_time", "2026-03-10T14:30:05.123457Z"),
        ("records_deleted", 2),
        ("records_retained", 0),
        ("retained_until", None),
        ("kms_backend", "vault-transit"),
        ("residual_copies_expire_time", "2026-03-18T14:30:05.123456Z"),
        ("ledger_position", 41),
        ("signing_key_id", "other-signing"),
    ],
)
def test_a_field_changed_fails_its_signature(name: str, value: object) -> None:
    signer, public_key = _signer()
    signed = json.loads(receipt_text(signer.sign(_receipt())))
    signed[name] = value
    text = json.dumps(signed, sort_keys=True, indent=2) + "\n"
    with pytest.raises(ReceiptInvalid, match="signature does not match") as refused:
        verify_receipt_text(text, public_key)
    assert SUBJECT not in str(refused.value)  # never a value in the message


def test_a_signature_changed_by_one_byte_or_made_by_another_key_fails() -> None:
    signer, public_key = _signer()
    signed = signer.sign(_receipt())
    for position in (0, 31, 63):
        changed = bytearray(signed.signature)
        changed[position] ^= 0x01
        with pytest.raises(ReceiptInvalid, match="signature does not match"):
            verify_receipt_text(receipt_text(replace(signed, signature=bytes(changed))), public_key)
    other, other_public = _signer("other-signing")
    by_other = other.sign(_receipt())
    with pytest.raises(ReceiptInvalid, match="signature does not match"):
        verify_receipt_text(receipt_text(by_other), public_key)
    assert verify_receipt_text(receipt_text(by_other), other_public)


def test_another_format_a_missing_or_extra_field_or_a_field_twice_fails() -> None:
    signer, public_key = _signer()
    signed = json.loads(receipt_text(signer.sign(_receipt())))

    def text(value: dict[str, object]) -> str:
        return json.dumps(value, sort_keys=True, indent=2) + "\n"

    with pytest.raises(ReceiptInvalid, match="unknown receipt format"):
        verify_receipt_text(text({**signed, "format": "oubli.shred_receipt.v2"}), public_key)
    with pytest.raises(ReceiptInvalid, match="lacks ledger_position"):
        lacking = {k: v for k, v in signed.items() if k != "ledger_position"}
        verify_receipt_text(text(lacking), public_key)
    with pytest.raises(ReceiptInvalid, match="does not define"):
        verify_receipt_text(text({**signed, "note": "erased"}), public_key)
    twice = text(signed).replace('"key_id"', '"key_id": "x",\n  "key_id"', 1)
    with pytest.raises(ReceiptInvalid, match="twice"):
        verify_receipt_text(twice, public_key)
    with pytest.raises(ReceiptInvalid, match="not JSON"):
        verify_receipt_text("receipt", public_key)
    with pytest.raises(ReceiptInvalid, match="not a JSON object"):
        verify_receipt_text("[]", public_key)
    unpadded = base64.b64encode(base64.b64decode(signed["signature"])).decode().rstrip("=")
    with pytest.raises(ReceiptInvalid, match="base64"):
        verify_receipt_text(text({**signed, "signature": unpadded}), public_key)


@pytest.fixture
def vault(storage: Storage, memory_kms: InMemoryKeyManager, make_vault: object) -> VaultService:
    return make_vault(storage, memory_kms)  # type: ignore[operator, no-any-return]


def test_erasure_signs_each_receipt_with_its_ledger_position(
    vault: VaultService, erasure: Erasure, memory_kms: InMemoryKeyManager
) -> None:
    key = SigningKey(memory_kms, "audit-signing")
    key.ensure()
    signer = ReceiptSigner(key)
    public_key = key.public_key()
    subjects = [vault.create_subject().subject_id for _ in range(3)]
    unsigned = erasure.shred(subjects[0])
    assert unsigned.signature == b"" and unsigned.ledger_position > 0

    results = erasure.shred_many(subjects, signer)

    receipts = [r for r in results if isinstance(r, ShredReceipt)]
    assert len(receipts) == 3
    ledger = {e.key_id: e.seq for e in vault.ledger.entries()}
    for receipt in receipts:
        assert receipt.ledger_position == ledger[receipt.key_id]
        assert receipt.signing_key_id == "audit-signing"
        assert verify_receipt_text(receipt_text(receipt), public_key)
    assert receipts[0].ledger_position == unsigned.ledger_position  # the retry's receipt
    assert len({r.ledger_position for r in receipts}) == 3
    again = erasure.shred(subjects[1], signer)
    assert again == receipts[1]  # Ed25519 is deterministic: the same signed receipt


def test_a_receipt_that_cannot_be_signed_is_an_error_and_a_retry_signs_it(
    vault: VaultService, erasure: Erasure, memory_kms: InMemoryKeyManager
) -> None:
    key = SigningKey(memory_kms, "audit-signing")
    key.ensure()
    signer = ReceiptSigner(key)
    sids = [vault.create_subject().subject_id for _ in range(3)]
    real_sign_many = memory_kms.sign_many

    def refuse(key_id: str, items: Sequence[bytes]) -> list[bytes]:
        memory_kms.unavailable = True
        try:
            return real_sign_many(key_id, items)
        finally:
            memory_kms.unavailable = False

    memory_kms.sign_many = refuse  # type: ignore[method-assign]
    failed = erasure.shred_many([*sids, "not-an-id"], signer)
    memory_kms.sign_many = real_sign_many  # type: ignore[method-assign]
    assert all(isinstance(f, Unavailable) for f in failed[:3])  # each has the batch's error
    assert isinstance(failed[3], InvalidArgument)  # its own error, untouched
    for sid in sids:
        assert vault.storage.receipt(sid) is not None  # erased all the same
    retried = erasure.shred_many(sids, signer)
    for receipt in retried:
        assert isinstance(receipt, ShredReceipt)
        assert verify_receipt_text(receipt_text(receipt), key.public_key())


def test_a_batch_signs_its_receipts_in_one_kms_call(
    vault: VaultService, erasure: Erasure, memory_kms: InMemoryKeyManager
) -> None:
    key = SigningKey(memory_kms, "audit-signing")
    key.ensure()
    signer = ReceiptSigner(key)
    sids = [vault.create_subject().subject_id for _ in range(12)]
    signs: list[int] = []
    real_sign, real_sign_many = memory_kms.sign, memory_kms.sign_many

    def sign(key_id: str, data: bytes) -> bytes:
        signs.append(1)
        return real_sign(key_id, data)

    def sign_many(key_id: str, items: Sequence[bytes]) -> list[bytes]:
        signs.append(len(items))
        return real_sign_many(key_id, items)

    memory_kms.sign, memory_kms.sign_many = sign, sign_many  # type: ignore[method-assign]
    results = erasure.shred_many(sids, signer)

    assert signs == [12]
    assert [r.subject_id for r in results if isinstance(r, ShredReceipt)] == sids
