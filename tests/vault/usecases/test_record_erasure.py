"""Record-level erasure: DeleteRecord and UpdateRecord that reach every database copy.

A category the catalog marks ``erase_on_change`` (identity, payment, payment_method,
credentials), or a call with ``erase_everywhere``, moves the subject to a new key in the
transaction that deletes or rewrites the record, then destroys the old key: what an
older copy of the database holds (the subject row's wrapped DEK, the record's old
ciphertext) no longer decrypts. Both databases, in-memory KMS; an "old copy" is the
subject row and records as read before the call, opened with a cold cache. Real OpenBao
and real database copies: tests/integration/test_record_erasure.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from kms.base import KeyDestroyed, KmsUnavailable
from tests.memory_kms import InMemoryKeyManager
from tests.vault.usecases.test_rewrite_races import found, once_before
from vault.access import caller_scope
from vault.errors import (
    KeyDestroyedError,
    PermissionDenied,
    RecordNotFound,
    SubjectShredded,
    Unavailable,
    VersionConflict,
)
from vault.storage import Storage, StoredRecord, SubjectKeyInfo
from vault.usecases.batches import BulkOps, NewRecord
from vault.usecases.erasure import Erasure
from vault.usecases.erasure_ledger import RETIRED
from vault.usecases.rights import RightsService
from vault.usecases.service import VaultService
from vault.vocabulary import KeyScheme

Builder = Callable[..., VaultService]
CARD = {"card_holder": "Ada Lovelace", "card_number": "4111111111111111", "card_expiry": "12/29"}
IDENTITY = {"given_name": "Ada", "family_name": "Byron", "date_of_birth": "1815-12-10"}
CORRECTED = {"given_name": "Ada", "family_name": "Lovelace", "date_of_birth": "1815-12-10"}
OLD = {"email": "ada@example.org"}
NEW = {"email": "ada.lovelace@example.com"}
LOG = {"ip_address": "192.0.2.1"}


@pytest.fixture
def vault(storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder) -> VaultService:
    return make_vault(storage, memory_kms)


@dataclass
class Subject:
    sid: str
    card: str
    identity: str
    contact: str
    log: str
    invoice: str
    ticket: str


def subject_with_everything(vault: VaultService) -> Subject:
    """A card (under card_storage), an identity, a contact (indexed), a log line (expiry
    bucket), an invoice (legal hold when erased) and a support ticket."""
    sid = vault.create_subject().subject_id
    RightsService(vault).grant_consent(sid, "card_storage")

    def made(category: str, fields: dict[str, str]) -> str:
        return vault.create_record(sid, category, fields, "customer").record_id

    return Subject(
        sid,
        made("payment", CARD),
        made("identity", IDENTITY),
        made("contact", OLD),
        made("technical_logs", LOG),
        made("billing", {"invoice_number": "INV-1"}),
        made("support", {"ticket_id": "T-1"}),
    )


@dataclass
class OldCopy:
    """What a database copy taken now holds of a subject: its row and its records."""

    info: SubjectKeyInfo
    records: dict[str, StoredRecord] = field(default_factory=dict)


def old_copy(storage: Storage, sid: str) -> OldCopy:
    info, records = storage.subject_with_records(sid)
    return OldCopy(info, {r.record_id: r for r in records})


def opened(
    make_vault: Builder, storage: Storage, kms: InMemoryKeyManager, copy: OldCopy, record_id: str
) -> dict[str, str]:
    """A record of the copy, decrypted by a fresh VaultService (cold cache, as a server
    started on the restored copy would be) with the live KMS."""
    reader = make_vault(storage, kms)
    return reader.crypto.decrypt(copy.info, copy.records[record_id])


def assert_erased(
    make_vault: Builder, vault: VaultService, kms: InMemoryKeyManager, copy: OldCopy, record: str
) -> None:
    """The copy's key is destroyed (ledger and KMS), so the copy cannot yield ``record``."""
    storage = vault.storage
    assert storage.subject(copy.info.subject_id).key_id != copy.info.key_id
    assert not kms.key_exists(copy.info.key_id)
    assert copy.info.key_id in storage.ledger_key_ids(copy.info.subject_id)
    assert any(e.key_id == copy.info.key_id and e.kind == RETIRED for e in vault.ledger.entries())
    with pytest.raises(KeyDestroyed):
        kms.unwrap(copy.info.key_id, copy.info.wrapped_dek or b"")
    with pytest.raises(KeyDestroyedError):
        opened(make_vault, storage, kms, copy, record)


def assert_others_readable(reader: VaultService, s: Subject, *, but: tuple[str, ...]) -> None:
    """Every other record reads back, unchanged (version 1); ``reader`` is a fresh
    VaultService (cold cache, as another replica)."""
    expected = {
        s.card: ("billing", CARD),
        s.identity: ("service", IDENTITY),
        s.contact: ("service", OLD),
        s.log: ("security", LOG),
        s.invoice: ("billing", {"invoice_number": "INV-1"}),
        s.ticket: ("support", {"ticket_id": "T-1"}),
    }
    for record_id, (purpose, fields) in expected.items():
        if record_id in but:
            continue
        record = reader.get_record(s.sid, record_id, purpose)
        assert (record.fields, record.version) == (fields, 1)


# --- erase_on_change categories ------------------------------------------------------


def test_deleting_a_card_leaves_no_copy_that_yields_it(
    vault: VaultService, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    s = subject_with_everything(vault)
    copy = old_copy(vault.storage, s.sid)
    assert opened(make_vault, vault.storage, memory_kms, copy, s.card) == CARD

    assert vault.delete_record(s.sid, s.card) is True

    with pytest.raises(RecordNotFound):
        vault.get_record(s.sid, s.card, "billing")
    assert_erased(make_vault, vault, memory_kms, copy, s.card)
    assert_others_readable(make_vault(vault.storage, memory_kms), s, but=(s.card,))
    # the log line keeps its bucket (and retention), re-sealed under the new key
    log = vault.storage.record(s.sid, s.log)
    assert log is not None and log.key_scheme == KeyScheme.EXPIRY
    assert (log.bucket_id, log.retain_until) == (
        copy.records[s.log].bucket_id,
        copy.records[s.log].retain_until,
    )
    assert vault.get_subject(s.sid).consents == ("card_storage",)
    assert found(vault, OLD["email"]) == [s.sid]


def test_correcting_an_identity_leaves_no_copy_that_yields_the_old_value(
    vault: VaultService, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    s = subject_with_everything(vault)
    copy = old_copy(vault.storage, s.sid)

    view = vault.update_record(s.sid, s.identity, CORRECTED, 1, "support")

    assert (view.fields, view.version, view.origin) == (CORRECTED, 2, "support")
    record = vault.get_record(s.sid, s.identity, "service")
    assert (record.fields, record.version, record.origin) == (CORRECTED, 2, "support")
    assert record.updated_at > record.created_at
    assert_erased(make_vault, vault, memory_kms, copy, s.identity)
    assert_others_readable(make_vault(vault.storage, memory_kms), s, but=(s.identity,))


def test_an_empty_origin_keeps_the_records(vault: VaultService) -> None:
    s = subject_with_everything(vault)
    assert vault.update_record(s.sid, s.identity, CORRECTED, 1).origin == "customer"


# --- other categories: per call ------------------------------------------------------


def test_without_the_option_other_categories_keep_todays_behaviour(
    vault: VaultService, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    """A contact corrected or a log line deleted without ``erase_everywhere``: the key
    stays, and an older copy still yields the old values (documented, rights.md)."""
    s = subject_with_everything(vault)
    copy = old_copy(vault.storage, s.sid)

    assert vault.update_record(s.sid, s.contact, NEW, 1).version == 2
    assert vault.delete_record(s.sid, s.log) is False

    assert vault.storage.subject(s.sid).key_id == copy.info.key_id
    assert memory_kms.key_exists(copy.info.key_id)
    assert opened(make_vault, vault.storage, memory_kms, copy, s.contact) == OLD
    assert opened(make_vault, vault.storage, memory_kms, copy, s.log) == LOG
    assert found(vault, NEW["email"]) == [s.sid] and found(vault, OLD["email"]) == []


def test_erase_everywhere_corrects_a_contact_and_its_index(
    vault: VaultService, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    s = subject_with_everything(vault)
    copy = old_copy(vault.storage, s.sid)

    view = vault.update_record(s.sid, s.contact, NEW, 1, erase_everywhere=True)

    assert (view.fields, view.version) == (NEW, 2)
    assert vault.get_record(s.sid, s.contact, "service").fields == NEW
    assert_erased(make_vault, vault, memory_kms, copy, s.contact)
    assert_others_readable(make_vault(vault.storage, memory_kms), s, but=(s.contact,))
    # the index rows were replaced in the re-key's transaction
    assert found(vault, NEW["email"]) == [s.sid]
    assert found(vault, OLD["email"]) == []


def test_erase_everywhere_deletes_a_contact_and_its_index_rows(
    vault: VaultService, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    s = subject_with_everything(vault)
    copy = old_copy(vault.storage, s.sid)

    assert vault.delete_record(s.sid, s.contact, erase_everywhere=True) is True

    assert_erased(make_vault, vault, memory_kms, copy, s.contact)
    assert_others_readable(make_vault(vault.storage, memory_kms), s, but=(s.contact,))
    assert found(vault, OLD["email"]) == []


def test_erase_everywhere_deletes_a_log_line_in_an_expiry_bucket(
    vault: VaultService, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    """An expiry record's key is HKDF of the subject's and the bucket's: the subject
    key's destruction is enough, the bucket (other subjects' records) stays."""
    s = subject_with_everything(vault)
    copy = old_copy(vault.storage, s.sid)

    assert vault.delete_record(s.sid, s.log, erase_everywhere=True) is True

    assert_erased(make_vault, vault, memory_kms, copy, s.log)
    bucket = copy.records[s.log].bucket_id
    assert bucket is not None and vault.crypto.buckets.get(bucket) is not None


# --- refusals: as the normal calls, and nothing made or destroyed ---------------------


def test_a_stale_expected_version_answers_a_conflict_and_changes_nothing(
    vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    s = subject_with_everything(vault)
    vault.update_record(s.sid, s.identity, CORRECTED, 1)
    key_id = vault.storage.subject(s.sid).key_id
    keys_before = set(memory_kms._keys)

    with pytest.raises(VersionConflict) as conflict:
        vault.update_record(s.sid, s.identity, IDENTITY, 1)

    assert conflict.value.metadata["current_version"] == "2"
    assert vault.storage.subject(s.sid).key_id == key_id
    assert set(memory_kms._keys) == keys_before  # no key made, none destroyed
    assert vault.get_record(s.sid, s.identity, "service").fields == CORRECTED


def test_a_missing_record_answers_not_found_and_makes_no_key(
    vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    s = subject_with_everything(vault)
    vault.delete_record(s.sid, s.card)
    keys_before = set(memory_kms._keys)

    with pytest.raises(RecordNotFound):
        vault.delete_record(s.sid, s.card)
    with pytest.raises(RecordNotFound):
        vault.delete_record(s.sid, vault.new_id(), erase_everywhere=True)
    assert set(memory_kms._keys) == keys_before


def test_a_card_update_losing_to_a_consent_withdrawal_answers_not_found(
    vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    """The withdrawal of card_storage (itself a re-key, dropping the cards) commits
    between the update's checks and its move: the move reads again and finds no card,
    as the normal update would; no key is left behind."""
    s = subject_with_everything(vault)
    raced = once_before(
        vault.storage,
        "subject_with_records",
        lambda: RightsService(vault).withdraw_consent(s.sid, "card_storage"),
    )
    keys_before = set(memory_kms._keys)

    with pytest.raises(RecordNotFound):
        vault.update_record(s.sid, s.card, {**CARD, "card_expiry": "01/30"}, 1)

    assert raced and vault.get_subject(s.sid).consents == ()
    with pytest.raises(PermissionDenied):
        vault.create_record(s.sid, "payment", CARD, "customer")
    # the withdrawal's new key replaced the old one; the update made none
    assert len(set(memory_kms._keys) - keys_before) == 1


@pytest.mark.parametrize("erase", ["update", "delete"])
def test_erased_and_held_subjects_are_refused_as_by_the_normal_call(
    vault: VaultService, erasure: Erasure, erase: str
) -> None:
    s = subject_with_everything(vault)
    erasure.shred(s.sid)
    assert vault.get_subject(s.sid).state == "held"  # the invoice is kept
    with pytest.raises(SubjectShredded):
        if erase == "update":
            vault.update_record(s.sid, s.invoice, {"invoice_number": "X"}, 1, erase_everywhere=True)
        else:
            vault.delete_record(s.sid, s.invoice, erase_everywhere=True)


# --- the audit note: as the normal calls ----------------------------------------------


def test_the_audit_note_names_the_erased_record_only(vault: VaultService) -> None:
    """Re-encrypting the other records is not noted: the entry of an erasing
    DeleteRecord names the deleted record's category, an UpdateRecord's the rewritten
    record's category and fields, as without erasure."""
    s = subject_with_everything(vault)
    deleted, updated = caller_scope.AccessNote(), caller_scope.AccessNote()
    with caller_scope.noting(deleted):
        vault.delete_record(s.sid, s.card)
    with caller_scope.noting(updated):
        vault.update_record(s.sid, s.identity, CORRECTED, 1)
    assert (deleted.categories, deleted.fields) == ({"payment"}, set())
    assert (updated.categories, updated.fields) == ({"identity"}, set(CORRECTED))


# --- writes racing the move: never lost ----------------------------------------------


def test_an_update_committed_during_the_move_is_kept(
    vault: VaultService, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    """The rectification of another record commits between the move's read and its
    compare-and-set: the move reads again (with the same new key) and keeps it."""
    s = subject_with_everything(vault)
    copy = old_copy(vault.storage, s.sid)
    made = set(memory_kms._keys)
    raced = once_before(
        vault.storage, "rekey", lambda: vault.update_record(s.sid, s.contact, NEW, 1)
    )

    vault.delete_record(s.sid, s.card)

    assert raced
    record = vault.get_record(s.sid, s.contact, "service")
    assert (record.fields, record.version) == (NEW, 2)
    assert found(vault, NEW["email"]) == [s.sid] and found(vault, OLD["email"]) == []
    assert_erased(make_vault, vault, memory_kms, copy, s.card)
    # one new key made for all the tries, the old one destroyed
    assert len(set(memory_kms._keys) - made) == 1


@pytest.mark.parametrize("racer", ["create", "batch", "delete", "event"])
def test_other_writes_committed_during_the_move_are_kept(vault: VaultService, racer: str) -> None:
    s = subject_with_everything(vault)
    made: list[str] = []

    def race() -> None:
        if racer == "create":
            made.append(vault.create_record(s.sid, "usage", {"page": "/"}, "app").record_id)
        elif racer == "batch":
            new = NewRecord(s.sid, "usage", {"page": "/"}, "app")
            made.extend(v.record_id for v in BulkOps(vault).create_records([new]))
        elif racer == "delete":
            vault.delete_record(s.sid, s.ticket)
        else:
            vault.record_event(s.sid, s.ticket, "resolved")

    raced = once_before(vault.storage, "rekey", race)
    view = vault.update_record(s.sid, s.identity, CORRECTED, 1)

    assert raced and view.version == 2
    assert vault.get_record(s.sid, s.identity, "service").fields == CORRECTED
    for record_id in made:
        assert vault.get_record(s.sid, record_id, "analytics").fields == {"page": "/"}
    if racer == "delete":
        with pytest.raises(RecordNotFound):
            vault.get_record(s.sid, s.ticket, "support")
    else:
        ticket = vault.get_record(s.sid, s.ticket, "support")
        assert ticket.fields == {"ticket_id": "T-1"}
        assert (ticket.retain_until is not None) == (racer == "event")


def test_a_racing_update_of_the_same_record_wins_and_the_move_answers_a_conflict(
    vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    """Two corrections from version 1: the first to commit wins (its own move), the
    other reads again, finds version 2 and answers ABORTED; its new key is discarded."""
    s = subject_with_everything(vault)
    old_key = vault.storage.subject(s.sid).key_id
    keys_before = set(memory_kms._keys)
    first = {"given_name": "Augusta Ada", "family_name": "King"}
    raced = once_before(
        vault.storage, "rekey", lambda: vault.update_record(s.sid, s.identity, first, 1)
    )
    with pytest.raises(VersionConflict):
        vault.update_record(s.sid, s.identity, CORRECTED, 1)

    assert raced
    record = vault.get_record(s.sid, s.identity, "service")
    assert (record.fields, record.version) == (first, 2)
    # the winner's key is the subject's, the loser's new key was discarded
    assert set(memory_kms._keys) == keys_before - {old_key} | {vault.storage.subject(s.sid).key_id}


def test_racing_writers_lose_nothing(
    vault: VaultService, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    """Threads: rectifications of the contact and of a ticket, new log lines and
    erasing calls (card deleted, identity corrected three times, a usage record deleted
    everywhere) on one subject. Every acknowledged write is there afterwards, every key
    the subject left is destroyed."""
    s = subject_with_everything(vault)
    usage = vault.create_record(s.sid, "usage", {"page": "/doomed"}, "app").record_id
    sid = s.sid
    rounds = 4
    last: dict[str, dict[str, str]] = {}
    created: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4, timeout=30)

    def retried(call: Callable[[], object]) -> object:
        """A call answering UNAVAILABLE (kept losing races) was not applied: again."""
        for _ in range(20):
            try:
                return call()
            except Unavailable:
                continue
        raise AssertionError("still unavailable after 20 tries")

    def rectifier(record_id: str, category: str, field_name: str) -> None:
        version = 1
        for n in range(rounds):
            fields = {field_name: f"{category}-{n}@example.org"}
            view = retried(lambda f=fields, v=version: vault.update_record(sid, record_id, f, v))
            version = view.version
            last[record_id] = fields

    def creator() -> None:
        for n in range(rounds):
            view = retried(lambda n=n: vault.create_record(sid, "usage", {"page": f"/{n}"}, "app"))
            created.append(view.record_id)

    def eraser() -> None:
        retried(lambda: vault.delete_record(sid, s.card))
        version = 1
        for n in range(3):
            fields = {**CORRECTED, "company": f"Analytical Engines {n}"}
            view = retried(lambda f=fields, v=version: vault.update_record(sid, s.identity, f, v))
            version = view.version
            last[s.identity] = fields
        retried(lambda: vault.delete_record(sid, usage, erase_everywhere=True))

    def run(target: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                barrier.wait()
                target()
            except BaseException as e:  # reported below
                errors.append(e)

        return body

    threads = [
        threading.Thread(target=run(lambda: rectifier(s.contact, "contact", "email"))),
        threading.Thread(target=run(lambda: rectifier(s.ticket, "support", "message"))),
        threading.Thread(target=run(creator)),
        threading.Thread(target=run(eraser)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    cold = make_vault(vault.storage, memory_kms)
    for record_id, purpose in ((s.contact, "service"), (s.ticket, "support")):
        record = cold.get_record(sid, record_id, purpose)
        assert (record.fields, record.version) == (last[record_id], rounds + 1)
    identity = cold.get_record(sid, s.identity, "service")
    assert (identity.fields, identity.version) == (last[s.identity], 4)
    assert sorted(cold.get_record(sid, r, "analytics").fields["page"] for r in created) == [
        f"/{n}" for n in range(rounds)
    ]
    for gone in (s.card, usage):
        with pytest.raises(RecordNotFound):
            cold.get_record(sid, gone, "access")
    assert cold.get_record(sid, s.log, "security").fields == LOG
    assert found(vault, f"contact-{rounds - 1}@example.org") == [sid]
    retired = vault.storage.ledger_key_ids(sid)
    assert len(retired) == 5  # one per erasing call
    assert not any(memory_kms.key_exists(k) for k in retired)
    assert memory_kms.key_exists(vault.storage.subject(sid).key_id)


# --- a failure after the commit: the retry destroys the old key -----------------------


@pytest.mark.parametrize("erase", ["update", "delete"])
def test_a_retry_destroys_the_key_a_failed_destruction_left(
    vault: VaultService, memory_kms: InMemoryKeyManager, make_vault: Builder, erase: str
) -> None:
    """The KMS fails the destruction after the move committed: the call answers
    UNAVAILABLE, the old key survives (listed in the key ledger). The client's retry
    answers as a second call would (NOT_FOUND, ABORTED) and destroys it first."""
    s = subject_with_everything(vault)
    copy = old_copy(vault.storage, s.sid)
    real = memory_kms.destroy_key
    failed: list[str] = []

    def destroy_fails_once(key_id: str) -> None:
        if not failed:
            failed.append(key_id)
            raise KmsUnavailable("switched off")
        real(key_id)

    memory_kms.destroy_key = destroy_fails_once

    def call() -> object:
        if erase == "update":
            return vault.update_record(s.sid, s.identity, CORRECTED, 1)
        return vault.delete_record(s.sid, s.card)

    with pytest.raises(Unavailable):
        call()
    assert failed == [copy.info.key_id] and memory_kms.key_exists(copy.info.key_id)
    assert copy.info.key_id in vault.storage.ledger_key_ids(s.sid)

    with pytest.raises(VersionConflict if erase == "update" else RecordNotFound):
        call()
    assert_erased(make_vault, vault, memory_kms, copy, s.identity if erase == "update" else s.card)
