"""Rewrites racing a re-key, a shred's legal hold and each other, forced deterministically.

Each test wraps one storage (or index) call so that a concurrent change commits exactly
where a real race would put it: after the racer read the records, before it writes.
Both databases, in-memory KMS. The same races run for real, through the gRPC API and
with threads, in tests/api/test_race_properties.py; a PostgreSQL-only test here holds a
re-key's locks open while an update waits on them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Connection, select, text, update

from tests.memory_kms import InMemoryKeyManager
from vault.errors import SubjectShredded
from vault.storage import Storage, make_engine, migrate
from vault.storage.tables import RecordRow, SubjectRow
from vault.usecases.batches import BulkOps, NewRecord
from vault.usecases.erasure import Erasure
from vault.usecases.lookup import SubjectFinder
from vault.usecases.rights import RightsService
from vault.usecases.service import VaultService
from vault.vocabulary import KeyScheme

Builder = Callable[..., VaultService]
CARD = {"card_holder": "Ada Lovelace", "card_number": "4111111111111111", "card_expiry": "12/29"}
OLD = {"email": "ada@example.org"}
NEW = {"email": "ada.lovelace@example.com"}


@pytest.fixture
def vault(storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder) -> VaultService:
    return make_vault(storage, memory_kms)


def consenting_subject(vault: VaultService) -> tuple[str, str]:
    """A subject with a stored card (so withdrawing card_storage re-keys) and a contact."""
    sid = vault.create_subject().subject_id
    RightsService(vault).grant_consent(sid, "card_storage")
    vault.create_record(sid, "payment", CARD, "customer")
    return sid, vault.create_record(sid, "contact", OLD, "customer").record_id


def once_before(target: object, name: str, action: Callable[[], object]) -> list[bool]:
    """Wrap ``target.name`` so that ``action`` runs (committed) right before its first
    call; returns a list that holds True once ``action`` has started."""
    real = getattr(target, name)
    started: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not started:
            started.append(True)  # first: calls made by the action itself go through
            action()
        return real(*args, **kwargs)

    setattr(target, name, wrapper)
    return started


def once_after(target: object, name: str, action: Callable[[], object]) -> list[bool]:
    """Wrap ``target.name`` so that ``action`` runs (committed) right after its first
    call returns, before the caller sees the result."""
    real = getattr(target, name)
    started: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if not started:
            started.append(True)
            action()
        return result

    setattr(target, name, wrapper)
    return started


def found(vault: VaultService, email: str) -> list[str]:
    return SubjectFinder(vault).find("email", email, "service")


def test_rekey_keeps_an_update_made_after_it_read_the_records(
    vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    """The issue's race: the rectification lands between the re-key's read and its write.
    Before the fix the re-key wrote back the old content (version 2, old e-mail)."""
    sid, contact = consenting_subject(vault)
    old_key = vault.storage.subject(sid).key_id
    updated = once_before(vault.storage, "rekey", lambda: vault.update_record(sid, contact, NEW, 1))

    result = RightsService(vault).withdraw_consent(sid, "card_storage")

    assert updated and result.records_destroyed == 1
    record = vault.get_record(sid, contact, "service")
    assert (record.fields, record.version) == (NEW, 2)
    assert vault.storage.subject(sid).key_id != old_key
    assert not memory_kms.key_exists(old_key)
    assert found(vault, NEW["email"]) == [sid]
    assert found(vault, OLD["email"]) == []


def test_rekey_keeps_a_record_event_made_after_it_read_the_records(vault: VaultService) -> None:
    """Before the fix the re-key wrote subject-scheme ciphertext into the row the event
    had moved to its expiry bucket: the ticket could not be decrypted any more."""
    sid, _ = consenting_subject(vault)
    ticket = vault.create_record(sid, "support", {"ticket_id": "T-1"}, "support").record_id
    once_before(vault.storage, "rekey", lambda: vault.record_event(sid, ticket, "resolved"))

    RightsService(vault).withdraw_consent(sid, "card_storage")

    record = vault.get_record(sid, ticket, "support")
    assert record.fields == {"ticket_id": "T-1"} and record.version == 2
    assert record.retain_until is not None
    stored = vault.storage.record(sid, ticket)
    assert stored is not None and stored.key_scheme == KeyScheme.EXPIRY


@pytest.mark.parametrize("rewrite", ["update", "event"])
def test_a_rewrite_sealed_under_the_old_key_is_sealed_again(
    vault: VaultService, rewrite: str
) -> None:
    """The re-key commits between the rewrite's seal and its write: the write must not
    land under the destroyed key; it is sealed again under the new one (before the fix
    the update answered ABORTED although its expected version was right)."""
    sid, contact = consenting_subject(vault)
    ticket = vault.create_record(sid, "support", {"ticket_id": "T-1"}, "support").record_id
    once_before(
        vault.storage,
        "update_record",
        lambda: RightsService(vault).withdraw_consent(sid, "card_storage"),
    )

    if rewrite == "update":
        assert vault.update_record(sid, contact, NEW, 1).version == 2
        assert vault.get_record(sid, contact, "service").fields == NEW
        assert found(vault, NEW["email"]) == [sid]
    else:
        vault.record_event(sid, ticket, "resolved")
        assert vault.get_record(sid, ticket, "support").fields == {"ticket_id": "T-1"}


@pytest.mark.parametrize("write", ["create", "event", "batch"])
def test_a_write_whose_key_a_rekey_destroyed_seals_again(
    vault: VaultService, memory_kms: InMemoryKeyManager, write: str
) -> None:
    """A write with a cold cache (as on another replica) reads the subject, then a re-key
    (run in this process, injected just before the write's unwrap) commits and destroys
    the key: the destroyed key is not the data's key being gone but a new key to use, so
    the write reads again (before the fix: KEY_DESTROYED)."""
    sid, _ = consenting_subject(vault)
    ticket = vault.create_record(sid, "support", {"ticket_id": "T-1"}, "support").record_id
    vault.crypto.cache.evict(vault.storage.subject(sid).key_id)
    raced = once_before(
        memory_kms, "unwrap", lambda: RightsService(vault).withdraw_consent(sid, "card_storage")
    )

    if write == "create":
        record_id = vault.create_record(sid, "usage", {"page": "/"}, "app").record_id
        assert vault.get_record(sid, record_id, "analytics").fields == {"page": "/"}
    elif write == "event":
        vault.record_event(sid, ticket, "resolved")
        assert vault.get_record(sid, ticket, "support").retain_until is not None
    else:
        [view] = BulkOps(vault).create_records([NewRecord(sid, "usage", {"page": "/"}, "app")])
        assert vault.get_record(sid, view.record_id, "analytics").fields == {"page": "/"}
    assert raced
    assert vault.get_subject(sid).consents == ()


def test_a_rekey_racing_a_shred_says_the_subject_was_erased(
    vault: VaultService, memory_kms: InMemoryKeyManager, erasure: Erasure
) -> None:
    """The shred destroys the key between the re-key's read and its decryption: the
    answer is SUBJECT_SHREDDED, not KEY_DESTROYED (nothing was written either way)."""
    sid, _ = consenting_subject(vault)
    once_before(memory_kms, "create_key", lambda: erasure.shred(sid))  # the new key

    with pytest.raises(SubjectShredded):
        RightsService(vault).withdraw_consent(sid, "card_storage")
    assert vault.get_subject(sid).state == "shredded"


def test_the_index_follows_the_last_write(vault: VaultService) -> None:
    """A creation's index update arrives after a rectification of the new record has
    committed (with its own index rows): the index must keep the tags of the content
    stored, not put back the created value's (before the fix the subject was then found
    by its replaced address and not by its current one)."""
    sid = vault.create_subject().subject_id
    index = vault.lookup_index()
    created: list[str] = []
    once_before(index, "index", lambda: vault.update_record(sid, created[0], NEW, 1))
    real_insert = vault.storage.insert_record

    def insert(record: Any, *args: Any) -> bool:
        created.append(record.record_id)
        return real_insert(record, *args)

    vault.storage.insert_record = insert  # type: ignore[method-assign]
    contact = vault.create_record(sid, "contact", OLD, "customer").record_id

    assert vault.get_record(sid, contact, "service").fields == NEW
    assert found(vault, NEW["email"]) == [sid]
    assert found(vault, OLD["email"]) == []


def test_a_rectification_replaces_the_index_rows_with_the_record(vault: VaultService) -> None:
    """A second rectification commits right after the first, before the first returns:
    the index must hold the last one's tags (before the fix each indexed after its
    commit, so the first overwrote the second's rows with a replaced address)."""
    sid = vault.create_subject().subject_id
    contact = vault.create_record(sid, "contact", OLD, "customer").record_id
    latest = {"email": "ada@lovelace.example"}
    real = vault.storage.update_record
    overtaken: list[bool] = []

    def update_then_overtaken(*args: Any, **kwargs: Any) -> bool:
        written = real(*args, **kwargs)
        if not overtaken:
            overtaken.append(True)
            vault.update_record(sid, contact, latest, 2)
        return written

    vault.storage.update_record = update_then_overtaken  # type: ignore[method-assign]
    vault.update_record(sid, contact, NEW, 1)

    assert overtaken and vault.get_record(sid, contact, "service").fields == latest
    assert found(vault, latest["email"]) == [sid]
    assert found(vault, NEW["email"]) == []
    assert found(vault, OLD["email"]) == []


def test_move_records_refuses_a_record_changed_since_it_was_read(
    vault: VaultService, storage: Storage
) -> None:
    """The legal hold's move is a compare-and-set too: a stale copy never overwrites a
    newer version (before the fix it overwrote ciphertext whatever the version)."""
    sid = vault.create_subject().subject_id
    invoice = vault.create_record(sid, "billing", {"invoice_number": "INV-1"}, "billing")
    stale = storage.record(sid, invoice.record_id)
    assert stale is not None
    vault.update_record(sid, invoice.record_id, {"invoice_number": "INV-2"}, 1)
    newer = storage.record(sid, invoice.record_id)

    moved = replace(stale, ciphertext=b"x", key_scheme=KeyScheme.HOLD, bucket_id="hold:b:2029-04")
    assert storage.move_records([moved]) is False
    assert storage.record(sid, invoice.record_id) == newer


def test_shred_holds_the_last_update_of_a_legal_record(
    vault: VaultService, erasure: Erasure
) -> None:
    """An update that committed after the shred listed the legal records (possible on
    PostgreSQL before the subject lock) must be what the hold keeps: the move is retried."""
    sid = vault.create_subject().subject_id
    invoice = vault.create_record(sid, "billing", {"invoice_number": "INV-1"}, "billing")
    stored = vault.storage.record(sid, invoice.record_id)
    assert stored is not None
    info = vault.storage.subject(sid)
    newer = vault.crypto.seal(
        info, invoice.record_id, "billing", {"invoice_number": "INV-2"}, stored.key_scheme, None
    )

    def late_update() -> None:  # what the late commit left behind, written directly
        with vault.storage.engine.begin() as c:
            c.execute(
                update(RecordRow)
                .where(RecordRow.record_id == invoice.record_id)
                .values(version=2, ciphertext=newer)
            )

    once_before(vault.storage, "move_records", late_update)
    erasure.shred(sid)

    held = vault.get_record(sid, invoice.record_id, "accounting")
    assert (held.fields, held.version) == ({"invoice_number": "INV-2"}, 2)


# --- PostgreSQL: an update waiting on a re-key's locks ---------------------------------


def _waiting_on_a_lock(admin: Connection, deadline: float) -> None:
    """Return once some backend of this database waits on a lock (bounded)."""
    query = text(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND a.datname = current_database()"
    )
    while admin.execute(query).scalar_one() == 0:
        admin.rollback()  # a fresh look each time
        if time.monotonic() > deadline:
            raise AssertionError("the update never waited on the re-key's locks")
        time.sleep(0.01)  # polls a condition; does not order the threads


def test_update_waiting_on_a_rekey_does_not_write_under_the_old_key(
    pg_url: str, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    """READ COMMITTED: an UPDATE whose subject check ran on a snapshot from before the
    re-key committed, then waited on the record's row lock, used to write ciphertext
    sealed under the old (about to be destroyed) key: the row re-check after the wait
    covers the record row only. The update must see the new key and refuse."""
    engine = make_engine(pg_url)
    migrate(engine)
    storage = Storage(engine)
    vault = make_vault(storage, memory_kms)
    sid, contact = consenting_subject(vault)
    info = storage.subject(sid)
    current = storage.record(sid, contact)
    assert current is not None
    sealed = vault.crypto.seal(info, contact, "contact", NEW, current.key_scheme, None)
    rewritten = replace(current, version=2, ciphertext=sealed)
    results: list[bool] = []

    with engine.connect() as rekey, engine.connect() as admin:
        # What Storage.rekey holds until it commits: the subject row and the records.
        rekey.execute(select(SubjectRow).where(SubjectRow.subject_id == sid).with_for_update())
        rekey.execute(
            update(RecordRow)
            .where(RecordRow.subject_id == sid)
            .values(ciphertext=RecordRow.ciphertext)
        )
        rekey.execute(
            update(SubjectRow).where(SubjectRow.subject_id == sid).values(key_id="k" * 26)
        )
        writer = threading.Thread(
            target=lambda: results.append(storage.update_record(rewritten, current, info.key_id))
        )
        writer.start()
        _waiting_on_a_lock(admin, time.monotonic() + 10)
        rekey.commit()
        writer.join(timeout=10)

    assert results == [False]
    after = storage.record(sid, contact)
    assert after is not None and after.version == 1 and after.ciphertext == current.ciphertext
    engine.dispose()
