"""Rotation of the audit signing key (SigningKeyRotation), and everything it signed
before still verifying afterwards: audit checkpoints, the erasure ledger's signed heads,
shred receipts — through the KMS and offline against each version's public key. On the
in-memory KMS, the local keystore and real OpenBao."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kms.base import KeyManager, KeyVersions
from kms.signatures import signature_key_version, verify_offline
from tests.clock import FakeClock
from tests.memory_kms import InMemoryKeyManager
from vault.audit.chain import AuditLog
from vault.audit.entries import AuditEvent
from vault.audit.recorder import SIGNING_KEY_NAME, signing_key_id
from vault.audit.signing import SigningKey
from vault.errors import FailedPrecondition
from vault.storage import Storage, make_engine, migrate
from vault.storage.erasure_ledger import NewLedgerEntry
from vault.usecases.erasure_ledger import SUBJECT, ErasureLedger, head_message
from vault.usecases.key_rotation import RotationKind, RotationReport
from vault.usecases.receipts import (
    ReceiptInvalid,
    ReceiptSigner,
    ShredReceipt,
    receipt_text,
    verify_receipt_against,
    verify_receipt_text,
)
from vault.usecases.signing_rotation import SigningKeyRotation

START = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
CRYPTOPERIOD = timedelta(days=365)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def kms() -> InMemoryKeyManager:
    return InMemoryKeyManager()


def chosen_key(storage: Storage, kms: KeyManager, clock: FakeClock) -> str:
    """The audit signing key as a server leaves it: its row, and the key in the KMS."""
    key_id = signing_key_id(storage, clock)
    SigningKey(kms, key_id).ensure()
    return key_id


def rotated_at(storage: Storage) -> datetime | None:
    row = storage.service_key(SIGNING_KEY_NAME)
    assert row is not None
    return row.rotated_at


def test_a_key_younger_than_its_cryptoperiod_is_not_due(
    storage: Storage, kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    key_id = chosen_key(storage, kms, clock)
    clock.set(START + CRYPTOPERIOD - timedelta(seconds=1))

    for dry_run in (True, False):
        report = SigningKeyRotation(storage, kms, clock).rotate(
            dry_run=dry_run, force=False, cryptoperiod=CRYPTOPERIOD
        )
        assert report == RotationReport(RotationKind.SIGNING, dry_run)
    assert kms.key_versions(key_id) == KeyVersions(1, 1, 1)
    assert rotated_at(storage) == START


def test_a_due_key_is_rotated_once_and_its_age_starts_again(
    storage: Storage, kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    key_id = chosen_key(storage, kms, clock)
    rotation = SigningKeyRotation(storage, kms, clock)
    clock.set(START + CRYPTOPERIOD)

    report = rotation.rotate(dry_run=False, force=False, cryptoperiod=CRYPTOPERIOD)

    assert (report.kind, report.dry_run) == (RotationKind.SIGNING, False)
    assert (report.due, report.rotated, report.trimmed, report.failed) == (1, 1, 0, 0)
    assert report.remaining == 0
    assert report.kms_calls >= 1
    assert kms.key_versions(key_id) == KeyVersions(2, 1, 1)
    assert signature_key_version(kms.sign(key_id, b"head")) == 2
    assert rotated_at(storage) == START + CRYPTOPERIOD
    # Done: the next pass finds nothing due until another cryptoperiod has passed.
    again = rotation.rotate(dry_run=False, force=False, cryptoperiod=CRYPTOPERIOD)
    assert (again.due, again.rotated, again.kms_calls) == (0, 0, 0)
    clock.set(START + 2 * CRYPTOPERIOD)
    assert rotation.rotate(dry_run=False, force=False, cryptoperiod=CRYPTOPERIOD).rotated == 1
    assert kms.key_versions(key_id).latest == 3


def test_a_dry_run_reports_what_is_due_and_changes_nothing(
    storage: Storage, kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    key_id = chosen_key(storage, kms, clock)
    clock.set(START + 2 * CRYPTOPERIOD)
    calls = kms.calls

    report = SigningKeyRotation(storage, kms, clock).rotate(
        dry_run=True, force=False, cryptoperiod=CRYPTOPERIOD
    )

    assert report == RotationReport(RotationKind.SIGNING, True, due=1, remaining=1)
    assert kms.calls == calls
    assert kms.key_versions(key_id) == KeyVersions(1, 1, 1)
    assert rotated_at(storage) == START
    forced = SigningKeyRotation(storage, kms, clock).rotate(
        dry_run=True, force=True, cryptoperiod=CRYPTOPERIOD
    )
    assert (forced.due, forced.rotated) == (1, 0)
    assert kms.key_versions(key_id).latest == 1


def test_force_rotates_a_fresh_key(
    storage: Storage, kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    key_id = chosen_key(storage, kms, clock)
    clock.set(START + timedelta(minutes=5))

    report = SigningKeyRotation(storage, kms, clock).rotate(
        dry_run=False, force=True, cryptoperiod=CRYPTOPERIOD
    )

    assert (report.due, report.rotated) == (1, 1)
    assert kms.key_versions(key_id).latest == 2
    assert rotated_at(storage) == START + timedelta(minutes=5)


def test_older_versions_are_never_trimmed_nor_refused(
    storage: Storage, kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    key_id = chosen_key(storage, kms, clock)
    first = kms.sign(key_id, b"head")
    rotation = SigningKeyRotation(storage, kms, clock)

    for _ in range(3):
        clock.advance(days=CRYPTOPERIOD.days)
        report = rotation.rotate(dry_run=False, force=False, cryptoperiod=CRYPTOPERIOD)
        assert (report.rotated, report.trimmed) == (1, 0)

    assert kms.key_versions(key_id) == KeyVersions(4, 1, 1)
    assert sorted(kms.public_keys(key_id)) == [1, 2, 3, 4]
    assert kms.verify(key_id, b"head", first)


def test_without_a_signing_key_nothing_is_due(
    storage: Storage, kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    report = SigningKeyRotation(storage, kms, clock).rotate(
        dry_run=False, force=True, cryptoperiod=CRYPTOPERIOD
    )
    assert report == RotationReport(RotationKind.SIGNING, False)
    assert storage.service_key(SIGNING_KEY_NAME) is None


def test_an_unreachable_kms_leaves_the_key_as_it_was(
    storage: Storage, kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    key_id = chosen_key(storage, kms, clock)
    clock.set(START + CRYPTOPERIOD)
    kms.unavailable = True

    report = SigningKeyRotation(storage, kms, clock).rotate(
        dry_run=False, force=False, cryptoperiod=CRYPTOPERIOD
    )

    assert (report.due, report.rotated, report.failed, report.remaining) == (1, 0, 1, 1)
    assert report.kms_calls == 1
    kms.unavailable = False
    assert kms.key_versions(key_id).latest == 1
    assert rotated_at(storage) == START


def test_a_signing_key_gone_from_the_kms_is_a_failed_precondition(
    storage: Storage, kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    key_id = chosen_key(storage, kms, clock)
    kms.destroy_key(key_id)

    with pytest.raises(FailedPrecondition) as caught:
        SigningKeyRotation(storage, kms, clock).rotate(
            dry_run=False, force=True, cryptoperiod=CRYPTOPERIOD
        )

    assert caught.value.reason == "AUDIT_SIGNING_KEY_MISSING"
    assert rotated_at(storage) == START


# --- what was signed before a rotation still verifies ------------------------------------


@pytest.fixture
def sqlite_storage(tmp_path: Path) -> Iterator[Storage]:
    engine = make_engine(f"sqlite:///{tmp_path / 'oubli.db'}")
    migrate(engine)
    yield Storage(engine)
    engine.dispose()


def _event(n: int) -> AuditEvent:
    return AuditEvent(caller="billing", action="GetRecord", outcome="OK", request_id=f"r{n}")


def _receipt(n: int) -> ShredReceipt:
    return ShredReceipt(
        subject_id=f"{n:026d}",
        key_id=f"k{n:025d}",
        shredded_at=START,
        records_deleted=n,
        kms_backend="memory",
        residual_risk="",
        residual_copies_expire_at=START + timedelta(days=35),
        ledger_position=n,
    )


def test_checkpoints_ledger_heads_and_receipts_signed_before_a_rotation_still_verify(
    any_kms: KeyManager, sqlite_storage: Storage, clock: FakeClock, tmp_path: Path
) -> None:
    storage = sqlite_storage
    key_id = chosen_key(storage, any_kms, clock)
    audit = AuditLog(storage, any_kms, clock, key_id)
    key = SigningKey(any_kms, key_id)
    ledger = ErasureLedger(f"sqlite:///{tmp_path / 'ledger' / 'erasures.db'}", clock=clock)
    signer = ReceiptSigner(key)

    # Signed with version 1.
    for n in range(3):
        audit.append(_event(n))
    old_checkpoint = audit.checkpoint()
    ledger.append([NewLedgerEntry(SUBJECT, "k-one", "subject-one")])
    old_head = ledger.sign_head(key)
    old_receipt = receipt_text(signer.sign(_receipt(1)))

    clock.advance(days=CRYPTOPERIOD.days)
    report = SigningKeyRotation(storage, any_kms, clock).rotate(
        dry_run=False, force=False, cryptoperiod=CRYPTOPERIOD
    )
    assert report.rotated == 1

    # Signed with version 2.
    for n in range(3, 6):
        audit.append(_event(n))
    new_checkpoint = audit.checkpoint()  # checks the v1 checkpoint before it signs
    ledger.append([NewLedgerEntry(SUBJECT, "k-two", "subject-two")])
    new_head = ledger.sign_head(key)
    new_receipt = receipt_text(signer.sign(_receipt(2)))
    assert old_checkpoint is not None and new_checkpoint is not None
    assert old_head is not None and new_head is not None
    assert (old_checkpoint.key_version, new_checkpoint.key_version) == (1, 2)
    assert old_checkpoint.key_id == new_checkpoint.key_id == key_id
    assert signature_key_version(old_head.signature) == 1
    assert signature_key_version(new_head.signature) == 2

    # Through the KMS: every version it holds verifies.
    result = audit.verify(full=True, exported=[old_checkpoint, new_checkpoint])
    assert (result.ok, result.reason, result.exported_checked) == (True, "OK", 2)
    assert key.problem(old_checkpoint) is None and key.problem(new_checkpoint) is None
    assert ledger.verify(key).ok
    assert len(list(ledger.rows.signed_heads())) == 2

    # Offline: each version's public key verifies what that version signed, only that.
    keys = key.public_keys()
    assert sorted(keys) == [1, 2]
    for checkpoint, version in ((old_checkpoint, 1), (new_checkpoint, 2)):
        assert verify_offline(keys[version], checkpoint.message, checkpoint.signature)
        assert not verify_offline(keys[3 - version], checkpoint.message, checkpoint.signature)
    for head, version in ((old_head, 1), (new_head, 2)):
        message = head_message(head.seq, head.hash)
        assert verify_offline(keys[version], message, head.signature)
        assert not verify_offline(keys[3 - version], message, head.signature)
    published = [keys[1], keys[2]]
    assert verify_receipt_against(old_receipt, published)[1] == 0
    assert verify_receipt_against(new_receipt, published)[1] == 1
    assert verify_receipt_text(old_receipt, keys[1])["ledger_position"] == 1
    with pytest.raises(ReceiptInvalid, match="this public key"):
        verify_receipt_text(old_receipt, keys[2])
    with pytest.raises(ReceiptInvalid, match="this public key"):
        verify_receipt_against(new_receipt, [keys[1]])
    changed = new_receipt.replace('"records_deleted": 2', '"records_deleted": 3')
    assert changed != new_receipt
    with pytest.raises(ReceiptInvalid, match="any of 2 public keys"):
        verify_receipt_against(changed, published)

    # The checks can fail: once version 1 is refused, what it signed no longer verifies.
    any_kms.set_min_decryption_version(key_id, 2)
    assert key.problem(old_checkpoint) == "CHECKPOINT_SIGNATURE_INVALID"
    assert key.problem(new_checkpoint) is None
    verdict = ledger.verify(key)
    assert (verdict.ok, verdict.reason, verdict.first_broken_seq) == (
        False,
        "HEAD_SIGNATURE_INVALID",
        old_head.seq,
    )
    forged = replace(new_checkpoint, signature=old_checkpoint.signature)
    assert key.problem(forged) == "CHECKPOINT_SIGNATURE_INVALID"
    ledger.close()
