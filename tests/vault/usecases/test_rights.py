"""Data-subject rights (vault.usecases.rights): restriction, objection, consent, rights requests.

Both databases, in-memory KMS, a fake clock. Consent withdrawal destroys the data stored
under it by moving the subject to a new KMS key; the old key is checked gone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from kms.base import KeyDestroyed, KmsUnavailable
from tests.clock import FakeClock
from tests.memory_kms import InMemoryKeyManager
from vault.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    RecordNotFound,
    RequestNotFound,
    SubjectNotFound,
    SubjectShredded,
    Unavailable,
)
from vault.storage import Storage
from vault.usecases.batches import BulkOps, NewRecord
from vault.usecases.erasure import Erasure
from vault.usecases.retention import RetentionJob
from vault.usecases.rights import REQUEST_KINDS, RightsService
from vault.usecases.service import VaultService

Builder = Callable[..., VaultService]
T0 = datetime(2026, 4, 1, 10, tzinfo=UTC)
UNKNOWN_ID = "aaaaaaaaaaaaaaaaaaaaaaaaaa"
CARD = {"card_holder": "Ada Lovelace", "card_number": "4111111111111111", "card_expiry": "12/29"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def vault(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder, clock: FakeClock
) -> VaultService:
    return make_vault(storage, memory_kms, clock=clock)


@pytest.fixture
def rights(vault: VaultService) -> RightsService:
    return RightsService(vault)


# --- restriction ----------------------------------------------------------------------


def test_restrict_and_lift(vault: VaultService, rights: RightsService, clock: FakeClock) -> None:
    sid = vault.create_subject().subject_id
    identity = vault.create_record(sid, "identity", {"given_name": "Ada"}, "customer")
    clock.now = T0 + timedelta(minutes=5)
    view = rights.restrict(sid)
    assert view.restricted and view.updated_at == clock.now
    assert rights.restrict(sid).restricted  # idempotent
    with pytest.raises(PermissionDenied) as caught:
        vault.get_record(sid, identity.record_id, "service")
    assert caught.value.reason == "RESTRICTED"
    with pytest.raises(PermissionDenied):
        vault.list_records(sid, purpose="billing")
    assert vault.get_record(sid, identity.record_id, "legal_claims").fields == {"given_name": "Ada"}
    assert vault.get_record(sid, identity.record_id, "access").fields == {"given_name": "Ada"}
    # storing and rectifying stay possible (restriction limits processing, not the data)
    vault.update_record(sid, identity.record_id, {"given_name": "Ada L."}, 1)

    view = rights.lift_restriction(sid)
    assert not view.restricted
    assert vault.get_record(sid, identity.record_id, "service").fields == {"given_name": "Ada L."}


def test_restriction_of_closed_unknown_and_erased_subjects(
    vault: VaultService, rights: RightsService, erasure: Erasure
) -> None:
    sid = vault.create_subject().subject_id
    vault.close_account(sid)
    assert rights.restrict(sid).restricted
    assert rights.lift_restriction(sid).state == "closed"
    with pytest.raises(SubjectNotFound):
        rights.restrict(UNKNOWN_ID)
    with pytest.raises(InvalidArgument):
        rights.restrict("not-an-id")
    erasure.shred(sid)
    with pytest.raises(SubjectShredded):
        rights.restrict(sid)
    with pytest.raises(SubjectShredded):
        rights.lift_restriction(sid)
    # nor may consents or objections change
    with pytest.raises(SubjectShredded):
        rights.grant_consent(sid, "marketing")
    with pytest.raises(SubjectShredded):
        rights.withdraw_consent(sid, "marketing")
    with pytest.raises(SubjectShredded):
        rights.object_to(sid, "marketing")
    with pytest.raises(SubjectShredded):
        rights.withdraw_objection(sid, "marketing")


# --- objection ------------------------------------------------------------------------


def test_object_to_marketing_then_withdraw(vault: VaultService, rights: RightsService) -> None:
    sid = vault.create_subject().subject_id
    contact = vault.create_record(sid, "contact", {"email": "ada@example.org"}, "customer")
    rights.grant_consent(sid, "marketing")
    assert vault.get_record(sid, contact.record_id, "marketing").fields
    view = rights.object_to(sid, "marketing")
    assert view.objections == ("marketing",)
    assert rights.object_to(sid, "marketing").objections == ("marketing",)  # idempotent
    with pytest.raises(PermissionDenied) as caught:
        vault.get_record(sid, contact.record_id, "marketing")
    assert caught.value.reason == "OBJECTED"
    assert vault.get_record(sid, contact.record_id, "service").fields  # other purposes go on
    assert rights.object_to(sid, "analytics").objections == ("analytics", "marketing")

    view = rights.withdraw_objection(sid, "marketing")
    assert view.objections == ("analytics",)
    assert rights.withdraw_objection(sid, "marketing").objections == ("analytics",)
    assert vault.get_record(sid, contact.record_id, "marketing").fields == {
        "email": "ada@example.org"
    }


def test_non_objectable_and_unknown_purposes(vault: VaultService, rights: RightsService) -> None:
    sid = vault.create_subject().subject_id
    for purpose in ("billing", "service", "accounting", "legal_claims", "security", "access"):
        with pytest.raises(FailedPrecondition) as caught:
            rights.object_to(sid, purpose)
        assert caught.value.reason == "NOT_OBJECTABLE"
        assert caught.value.metadata == {"purpose": purpose}
        with pytest.raises(FailedPrecondition):
            rights.withdraw_objection(sid, purpose)
    for purpose in ("", "spam", "ada@example.org"):
        with pytest.raises(InvalidArgument) as caught:
            rights.object_to(sid, purpose)
        assert caught.value.field == "purpose"
        assert "ada@example.org" not in str(caught.value)
    assert vault.get_subject(sid).objections == ()


# --- consent --------------------------------------------------------------------------


def test_grant_consent(
    vault: VaultService, rights: RightsService, storage: Storage, clock: FakeClock
) -> None:
    sid = vault.create_subject().subject_id
    for name in ("", "newsletter", "Marketing", "ada@example.org"):
        with pytest.raises(InvalidArgument) as caught:
            rights.grant_consent(sid, name)
        assert caught.value.field == "consent"
        assert "ada@example.org" not in str(caught.value)
    assert vault.get_subject(sid).consents == ()

    assert rights.grant_consent(sid, "marketing").consents == ("marketing",)
    granted_at = storage.subject(sid).consents["marketing"]
    assert datetime.fromisoformat(granted_at) == T0

    clock.now = T0 + timedelta(days=3)
    assert rights.grant_consent(sid, "marketing").consents == ("marketing",)
    assert storage.subject(sid).consents["marketing"] == granted_at  # the first grant is kept
    view = rights.grant_consent(sid, "card_storage")
    assert view.consents == ("card_storage", "marketing")
    consents = storage.subject(sid).consents
    assert datetime.fromisoformat(consents["card_storage"]) == clock.now
    assert consents["marketing"] == granted_at
    # the consent gates storage of its category
    other = vault.create_subject().subject_id
    with pytest.raises(PermissionDenied) as caught:
        vault.create_record(other, "payment", CARD, "customer")
    assert caught.value.reason == "CONSENT_MISSING"
    assert "4111" not in str(caught.value)
    card = vault.create_record(sid, "payment", CARD, "customer")
    assert vault.get_record(sid, card.record_id, "billing").fields == CARD


def test_withdraw_card_consent_destroys_cards_by_rekeying(
    vault: VaultService,
    rights: RightsService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    make_vault: Builder,
    clock: FakeClock,
    erasure: Erasure,
) -> None:
    sid = vault.create_subject().subject_id
    rights.grant_consent(sid, "card_storage")
    rights.grant_consent(sid, "marketing")
    cards = [vault.create_record(sid, "payment", CARD, "customer") for _ in range(2)]
    contact = vault.create_record(sid, "contact", {"email": "ada@example.org"}, "customer")
    log = vault.create_record(sid, "technical_logs", {"ip_address": "192.0.2.1"}, "server")
    invoice = vault.create_record(sid, "billing", {"invoice_number": "INV-1"}, "billing")
    ticket = vault.create_record(sid, "support", {"ticket_id": "T-1"}, "support")
    vault.record_event(sid, ticket.record_id, "resolved")
    old = storage.subject(sid)  # a copy of the row, as in a backup
    assert memory_kms.key_exists(old.key_id)

    clock.now = T0 + timedelta(days=1)
    result = rights.withdraw_consent(sid, "card_storage")
    assert result.records_destroyed == 2
    assert result.subject.consents == ("marketing",)
    assert result.subject.record_count == 4

    new = storage.subject(sid)
    assert new.key_id != old.key_id and new.wrapped_dek != old.wrapped_dek
    assert "card_storage" not in new.consents
    assert new.consents["marketing"] == old.consents["marketing"]
    assert not memory_kms.key_exists(old.key_id)
    assert memory_kms.key_exists(new.key_id)
    assert old.key_id in storage.ledger_key_ids()
    # the old row's wrapped DEK is useless now: no backup yields the cards
    with pytest.raises(KeyDestroyed):
        memory_kms.unwrap(old.key_id, old.wrapped_dek or b"")

    for card in cards:
        with pytest.raises(RecordNotFound):
            vault.get_record(sid, card.record_id, "access")
    # everything else survives, under the new key, also for a second VaultService
    # with a cold cache (as on another replica)
    cold = make_vault(storage, memory_kms, clock=clock)
    for reader in (vault, cold):
        assert reader.get_record(sid, contact.record_id, "service").fields == {
            "email": "ada@example.org"
        }
        assert reader.get_record(sid, log.record_id, "security").fields == {
            "ip_address": "192.0.2.1"
        }
        assert reader.get_record(sid, invoice.record_id, "billing").fields == {
            "invoice_number": "INV-1"
        }
        assert reader.get_record(sid, ticket.record_id, "support").fields == {"ticket_id": "T-1"}
    # retention placement is unchanged by the re-key
    stored_log = storage.record(sid, log.record_id)
    assert stored_log is not None and stored_log.bucket_id == "expiry:technical_logs:2027-04"
    # and no new card without a new consent
    with pytest.raises(PermissionDenied):
        vault.create_record(sid, "payment", CARD, "customer")
    # withdrawing again: nothing bound is left, no re-key
    again = rights.withdraw_consent(sid, "card_storage")
    assert again.records_destroyed == 0
    assert storage.subject(sid).key_id == new.key_id
    # the erasure after it still holds the invoice
    erasure.shred(sid)
    assert vault.get_record(sid, invoice.record_id, "accounting").fields == {
        "invoice_number": "INV-1"
    }


def test_withdraw_consent_without_bound_records(
    vault: VaultService,
    rights: RightsService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
) -> None:
    sid = vault.create_subject().subject_id
    contact = vault.create_record(sid, "contact", {"email": "ada@example.org"}, "customer")
    rights.grant_consent(sid, "marketing")
    rights.grant_consent(sid, "card_storage")  # granted, but no card stored
    key_id = storage.subject(sid).key_id
    calls = memory_kms.calls

    result = rights.withdraw_consent(sid, "marketing")  # no data depends on it
    assert result.records_destroyed == 0
    assert result.subject.consents == ("card_storage",)
    assert storage.subject(sid).key_id == key_id
    assert memory_kms.calls == calls  # no KMS call at all
    # Data depends on card_storage: even with no card stored now, the subject moves to
    # a new key, so a card being written right now (sealed under the old key) cannot
    # outlive the withdrawal (issue 9, finding 2).
    result = rights.withdraw_consent(sid, "card_storage")
    assert result.records_destroyed == 0 and result.subject.consents == ()
    assert storage.subject(sid).key_id != key_id
    assert not memory_kms.key_exists(key_id)
    key_id, calls = storage.subject(sid).key_id, memory_kms.calls
    assert rights.withdraw_consent(sid, "card_storage").records_destroyed == 0  # again
    assert storage.subject(sid).key_id == key_id
    with pytest.raises(PermissionDenied) as caught:
        vault.get_record(sid, contact.record_id, "marketing")
    assert caught.value.reason == "CONSENT_MISSING"
    # withdrawing a consent never granted is harmless; an unknown one is refused
    assert rights.withdraw_consent(sid, "location").records_destroyed == 0
    with pytest.raises(InvalidArgument):
        rights.withdraw_consent(sid, "newsletter")


def test_withdraw_location_consent(
    vault: VaultService, rights: RightsService, storage: Storage, memory_kms: InMemoryKeyManager
) -> None:
    """Location records live in an expiry bucket: the re-key drops them all the same."""
    sid = vault.create_subject().subject_id
    rights.grant_consent(sid, "location")
    place = vault.create_record(sid, "location", {"country": "FR", "city": "Lyon"}, "app")
    usage = vault.create_record(sid, "usage", {"page": "/"}, "app")
    old_key = storage.subject(sid).key_id
    result = rights.withdraw_consent(sid, "location")
    assert result.records_destroyed == 1
    assert not memory_kms.key_exists(old_key)
    with pytest.raises(RecordNotFound):
        vault.get_record(sid, place.record_id, "access")
    assert vault.get_record(sid, usage.record_id, "analytics").fields == {"page": "/"}


def test_withdraw_consent_while_a_bucket_is_being_destroyed(
    vault: VaultService,
    rights: RightsService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    erasure: Erasure,
) -> None:
    """A retention run interrupted between marking a bucket and destroying its key
    leaves rows nobody may read; a consent withdrawal must not trip over them."""
    sid = vault.create_subject().subject_id
    vault.create_record(sid, "technical_logs", {"ip_address": "192.0.2.1"}, "server")
    rights.grant_consent(sid, "card_storage")
    vault.create_record(sid, "payment", CARD, "customer")
    contact = vault.create_record(sid, "contact", {"email": "ada@example.org"}, "customer")
    old_key = storage.subject(sid).key_id

    clock.now = datetime(2027, 4, 1, tzinfo=UTC)
    real_destroy = memory_kms.destroy_key

    def failing_destroy(key_id: str) -> None:
        memory_kms.unavailable = True
        try:
            real_destroy(key_id)
        finally:
            memory_kms.unavailable = False

    monkeypatch.setattr(memory_kms, "destroy_key", failing_destroy)
    failed = RetentionJob(erasure).run()  # reported, not raised: other actions go on
    assert failed.failures == 1 and failed.actions[0].error == "BACKEND_UNAVAILABLE"
    monkeypatch.setattr(memory_kms, "destroy_key", real_destroy)
    bucket = storage.bucket("expiry:technical_logs:2027-04")
    assert bucket is not None and bucket.state == "destroying"

    result = rights.withdraw_consent(sid, "card_storage")
    assert result.records_destroyed == 1
    assert not memory_kms.key_exists(old_key)
    assert vault.get_record(sid, contact.record_id, "service").fields == {
        "email": "ada@example.org"
    }
    # the next run finishes the bucket
    summary = RetentionJob(erasure).run()
    assert [a.target for a in summary.actions] == ["expiry:technical_logs:2027-04"]
    assert vault.get_subject(sid).record_count == 1


# --- rights requests ------------------------------------------------------------------


def test_rights_requests_lifecycle(
    vault: VaultService, rights: RightsService, clock: FakeClock
) -> None:
    sid = vault.create_subject().subject_id
    other = vault.create_subject().subject_id
    access = rights.open_request(sid, "access")
    assert access.status == "open" and access.kind == "access"
    assert access.received_at == T0
    assert access.due_at == T0 + timedelta(days=30)  # catalog setting
    assert vault.catalog.settings.rights_request_answer_days == 30
    assert access.completed_at is None

    clock.now = T0 + timedelta(days=10)
    erasure = rights.open_request(sid, "erasure")
    portability = rights.open_request(other, "portability")
    assert erasure.due_at == clock.now + timedelta(days=30)

    assert [r.request_id for r in rights.list_requests(sid)] == [
        access.request_id,
        erasure.request_id,
    ]
    assert len(rights.list_requests()) == 3
    assert rights.list_requests(overdue_only=True) == []
    assert len(rights.list_requests(open_only=True)) == 3

    clock.now = T0 + timedelta(days=30)  # exactly due: not yet overdue
    assert rights.list_requests(overdue_only=True) == []
    clock.now = T0 + timedelta(days=31)
    assert [r.request_id for r in rights.list_requests(overdue_only=True)] == [access.request_id]
    assert rights.list_requests(other, overdue_only=True) == []

    closed = rights.close_request(access.request_id)
    assert closed.status == "completed" and closed.completed_at == clock.now
    assert rights.list_requests(overdue_only=True) == []
    assert {r.request_id for r in rights.list_requests(open_only=True)} == {
        erasure.request_id,
        portability.request_id,
    }
    rejected = rights.close_request(portability.request_id, "rejected")
    assert rejected.status == "rejected"

    clock.now = T0 + timedelta(days=45)
    assert [r.request_id for r in rights.list_requests(overdue_only=True)] == [erasure.request_id]
    # closed requests still appear in the unfiltered list
    assert {r.status for r in rights.list_requests()} == {"completed", "rejected", "open"}

    for request_id in (access.request_id, portability.request_id):
        with pytest.raises(FailedPrecondition) as caught:
            rights.close_request(request_id)
        assert caught.value.reason == "REQUEST_CLOSED"
    assert vault.storage.request(access.request_id) == closed  # unchanged


def test_rights_request_errors(
    vault: VaultService, rights: RightsService, erasure: Erasure
) -> None:
    sid = vault.create_subject().subject_id
    with pytest.raises(RequestNotFound):
        rights.close_request(UNKNOWN_ID)
    with pytest.raises(InvalidArgument):
        rights.close_request("nope")
    for kind in ("", "deletion", "ACCESS", "access "):
        with pytest.raises(InvalidArgument) as caught:
            rights.open_request(sid, kind)
        assert caught.value.field == "kind"
    request = rights.open_request(sid, "rectification")
    for status in ("open", "done", ""):
        with pytest.raises(InvalidArgument) as caught:
            rights.close_request(request.request_id, status)
        assert caught.value.field == "status"
    with pytest.raises(SubjectNotFound):
        rights.open_request(UNKNOWN_ID, "access")
    with pytest.raises(InvalidArgument):
        rights.list_requests("bad id")
    assert rights.list_requests(UNKNOWN_ID) == []

    # every kind; an erased subject's requests stay on record and can be closed
    kinds = {rights.open_request(sid, kind).kind for kind in sorted(REQUEST_KINDS)}
    assert kinds == REQUEST_KINDS
    erasure.shred(sid)
    opened = rights.list_requests(sid, open_only=True)
    assert len(opened) == len(REQUEST_KINDS) + 1
    assert rights.close_request(opened[0].request_id).status == "completed"


# --- concurrency: withdrawals racing other writes (issue 9, finding 2) ------------------


def test_a_consent_granted_during_a_withdrawal_is_kept(
    vault: VaultService, rights: RightsService, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-key takes the withdrawn consent off the consents as they stand in its own
    transaction, not as they were read before the records were re-encrypted."""
    sid = vault.create_subject().subject_id
    rights.grant_consent(sid, "card_storage")
    vault.create_record(sid, "payment", CARD, "customer")
    real_rekey = storage.rekey

    def granted_meanwhile(*args: object, **kwargs: object) -> bool:
        rights.grant_consent(sid, "marketing")  # lands between read and re-key commit
        return real_rekey(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "rekey", granted_meanwhile)
    result = rights.withdraw_consent(sid, "card_storage")
    assert result.records_destroyed == 1
    assert result.subject.consents == ("marketing",)


def test_objections_made_side_by_side_are_both_kept(
    vault: VaultService, rights: RightsService, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = vault.create_subject().subject_id
    real_change = storage.change_flags
    raced = False

    def other_call_first(subject_id: str, now: datetime, change: Callable[..., object]) -> object:
        nonlocal raced
        if not raced:  # another call's objection (run here, injected) commits first
            raced = True
            rights.object_to(sid, "marketing")
        return real_change(subject_id, now, change)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "change_flags", other_call_first)
    assert rights.object_to(sid, "analytics").objections == ("analytics", "marketing")


def test_a_card_written_while_its_consent_is_withdrawn_does_not_survive(
    vault: VaultService,
    rights: RightsService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A card whose consent check passed just before the withdrawal, and whose insert
    comes just after it, must not be stored: the withdrawal re-keys even with no card
    stored yet, so the insert (sealed under the old key) is refused, and the retry finds
    the consent gone."""
    sid = vault.create_subject().subject_id
    rights.grant_consent(sid, "card_storage")
    old_key = storage.subject(sid).key_id
    real_insert = storage.insert_record
    withdrawn: list[int] = []

    def withdrawal_first(*args: object, **kwargs: object) -> bool:
        if not withdrawn:
            withdrawn.append(rights.withdraw_consent(sid, "card_storage").records_destroyed)
        return real_insert(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "insert_record", withdrawal_first)
    with pytest.raises(PermissionDenied) as caught:
        vault.create_record(sid, "payment", CARD, "customer")
    assert caught.value.reason == "CONSENT_MISSING"
    assert withdrawn == [0]
    assert storage.records(sid, categories=["payment"]) == []
    assert not memory_kms.key_exists(old_key)


def test_a_withdrawal_retried_after_a_failed_key_destruction_destroys_the_old_key(
    vault: VaultService,
    rights: RightsService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sid = vault.create_subject().subject_id
    rights.grant_consent(sid, "card_storage")
    vault.create_record(sid, "payment", CARD, "customer")
    old_key = storage.subject(sid).key_id
    real_destroy = memory_kms.destroy_key

    def outage(key_id: str) -> None:
        raise KmsUnavailable("the KMS went away")

    monkeypatch.setattr(memory_kms, "destroy_key", outage)
    with pytest.raises(Unavailable):
        rights.withdraw_consent(sid, "card_storage")
    # The switch committed (card gone, consent gone), the old key is still there.
    assert storage.records(sid, categories=["payment"]) == []
    assert memory_kms.key_exists(old_key)
    monkeypatch.setattr(memory_kms, "destroy_key", real_destroy)
    result = rights.withdraw_consent(sid, "card_storage")  # the client retries
    assert result.records_destroyed == 0 and result.subject.consents == ()
    assert not memory_kms.key_exists(old_key)


def test_restriction_refuses_new_processing_but_not_rectification(
    vault: VaultService, rights: RightsService
) -> None:
    sid = vault.create_subject().subject_id
    ticket = vault.create_record(sid, "support", {"subject_line": "Help"}, "customer")
    contact = vault.create_record(sid, "contact", {"email": "ada@example.org"}, "customer")
    rights.restrict(sid)
    for attempt in (
        lambda: vault.create_record(sid, "identity", {"given_name": "Ada"}, "customer"),
        lambda: BulkOps(vault).create_records(
            [NewRecord(sid, "identity", {"given_name": "Ada"}, "customer")]
        ),
        lambda: vault.record_event(sid, ticket.record_id, "resolved"),
    ):
        with pytest.raises(PermissionDenied) as caught:
            attempt()
        assert caught.value.reason == "RESTRICTED"
    # rectification and deletion stay possible (the subject's own rights)
    assert vault.update_record(sid, contact.record_id, {"email": "ada@example.com"}, 1).version == 2
    vault.delete_record(sid, contact.record_id)
