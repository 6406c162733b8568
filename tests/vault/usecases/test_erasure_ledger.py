"""The erasure ledger: appended before a key is destroyed, hash-chained, its head signed;
a tampered entry is detected; concurrent appends share one commit; its own database
(SQLite file, or a PostgreSQL database of its own)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.memory_kms import InMemoryKeyManager
from tests.stack import erasure_of, vault_service
from vault.audit.signing import SigningKey
from vault.storage import Storage
from vault.storage.erasure_ledger import ENTRIES, NewLedgerEntry
from vault.usecases.erasure_ledger import RETIRED, SUBJECT, ErasureLedger
from vault.usecases.rights import RightsService


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ledger database of its own: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger' / 'erasures.db'}"
    url: str = request.getfixturevalue("pg_ledger_url")
    return url


def _signing_key() -> SigningKey:
    key = SigningKey(InMemoryKeyManager(), "ledger-signing")
    key.ensure()
    return key


def test_the_chain_and_its_signed_head_verify_and_a_tampered_entry_is_detected(
    ledger_url: str,
) -> None:
    ledger = ErasureLedger(ledger_url)
    seqs = ledger.append([NewLedgerEntry(SUBJECT, f"key-{i}", f"subject{i}") for i in range(5)])
    assert seqs == [1, 2, 3, 4, 5]
    assert ledger.append([NewLedgerEntry(SUBJECT, "key-2", "subject2")]) == [3]  # once
    key = _signing_key()
    signed = ledger.sign_head(key)
    assert signed is not None and signed.seq == 5
    assert ledger.verify(key).ok and ledger.verify(key).checked == 5

    with ledger.rows.engine.begin() as c:  # someone edits the ledger's database
        c.execute(update(ENTRIES).where(ENTRIES.c.seq == 3).values(key_id="forged"))
    result = ledger.verify(key)
    assert (result.ok, result.first_broken_seq, result.reason) == (
        False,
        3,
        "ENTRY_HASH_MISMATCH",
    )
    ledger.close()


def test_a_signature_by_another_key_does_not_verify(tmp_path: Path) -> None:
    ledger = ErasureLedger(f"sqlite:///{tmp_path / 'erasures.db'}")
    ledger.append([NewLedgerEntry(RETIRED, "key-a", "subject")])
    ledger.sign_head(_signing_key())
    assert ledger.verify().ok  # the chain alone
    assert ledger.verify(_signing_key()).reason == "HEAD_SIGNATURE_INVALID"


def test_concurrent_appends_share_commits_and_the_mirror_gets_every_entry(
    tmp_path: Path,
) -> None:
    mirror = tmp_path / "mirror"
    ledger = ErasureLedger(f"sqlite:///{tmp_path / 'erasures.db'}", mirror_dir=mirror)
    ledger.append([NewLedgerEntry(SUBJECT, f"batch-{i}", f"s{i}") for i in range(1000)])
    assert ledger.rows.appends.batches == 1  # a batch of 1000: one commit

    def append(i: int) -> None:
        ledger.append([NewLedgerEntry(SUBJECT, f"one-{i}", f"t{i}")])

    threads = [threading.Thread(target=append, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.head()[0] == 1040
    assert ledger.rows.appends.batches <= 41
    lines = (mirror / "erasures.jsonl").read_text().splitlines()
    assert len(lines) == 1040
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 1041))
    assert (mirror / "erasures.jsonl").stat().st_mode & 0o077 == 0
    assert ledger.verify().ok


def test_a_shred_and_a_consent_withdrawal_are_in_the_ledger_when_they_return(
    storage: Storage, tmp_path: Path
) -> None:
    """No monkeypatching: the ledger is read after the call returned."""
    ledger = ErasureLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    vault = vault_service(storage, InMemoryKeyManager(), ledger=ledger)
    subject = vault.create_subject()
    receipt = erasure_of(vault).shred(subject.subject_id)
    [entry] = list(ledger.entries())
    assert (entry.kind, entry.key_id, entry.subject_id) == (
        SUBJECT,
        receipt.key_id,
        subject.subject_id,
    )
    assert storage.ledger_position() == entry.seq

    other = vault.create_subject()
    rights = RightsService(vault)
    rights.consents.grant(other.subject_id, "card_storage")
    old_key = storage.subjects([other.subject_id])[other.subject_id].key_id
    rights.consents.withdraw(other.subject_id, "card_storage")
    retired = list(ledger.entries(after=entry.seq))
    assert [(e.kind, e.key_id, e.subject_id) for e in retired] == [
        (RETIRED, old_key, other.subject_id)
    ]
    assert storage.ledger_position() == retired[0].seq
