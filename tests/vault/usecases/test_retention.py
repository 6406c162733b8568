"""The retention job (vault.usecases.retention) with a fake clock, on both databases.

Time moves by setting the clock; the job destroys keys (buckets and subject keys) and
the tests check what is left readable and how many KMS calls it took.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from kms.base import KmsUnavailable
from tests.clock import FakeClock
from tests.memory_kms import InMemoryKeyManager
from tests.stack import erasure_of
from vault.crypto.bucket_keys import add_months
from vault.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    RecordNotFound,
    SubjectShredded,
    Unavailable,
)
from vault.storage import Storage
from vault.usecases.erasure import Erasure
from vault.usecases.restore_fence import RestoreFence
from vault.usecases.retention import DESTROY_BUCKET, ERASE_SUBJECT, RetentionJob
from vault.usecases.service import VaultService
from vault.vocabulary import BucketState, KeyScheme

Builder = Callable[..., VaultService]
T0 = datetime(2026, 3, 10, 14, 30, tzinfo=UTC)
LOG = {"ip_address": "192.0.2.7", "event": "login", "user_agent": "curl/8"}
INVOICE = {"invoice_number": "INV-1", "amount": "19.90", "currency": "EUR"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def vault(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder, clock: FakeClock
) -> VaultService:
    return make_vault(storage, memory_kms, clock=clock)


# --- rolling retention ------------------------------------------------------------------


def test_rolling_logs_land_in_the_bucket_of_their_month(
    vault: VaultService, storage: Storage, clock: FakeClock
) -> None:
    sid = vault.create_subject().subject_id
    record = vault.create_record(sid, "technical_logs", LOG, "server")
    assert record.retain_until == datetime(2027, 3, 1, tzinfo=UTC)
    stored = storage.record(sid, record.record_id)
    assert stored is not None
    assert stored.key_scheme == KeyScheme.EXPIRY
    assert stored.bucket_id == "expiry:technical_logs:2027-03"
    assert stored.retain_until == datetime(2027, 3, 1, tzinfo=UTC)
    bucket = storage.bucket("expiry:technical_logs:2027-03")
    assert bucket is not None and bucket.destroy_at == datetime(2027, 3, 1, tzinfo=UTC)
    # the view reports the same deadline
    got = vault.get_record(sid, record.record_id, "security")
    assert got.retain_until == record.retain_until and got.fields == LOG
    # account-rule records have none
    contact = vault.create_record(sid, "contact", {"email": "a@example.org"}, "customer")
    assert contact.retain_until is None
    # created on the last day of a month: + 12 months is clamped, same month's bucket
    clock.set(datetime(2027, 2, 28, 23, 59, tzinfo=UTC))  # + 12 months: 2028-02-28
    usage = vault.create_record(sid, "usage", {"page": "/"}, "server")
    assert usage.retain_until == datetime(2028, 2, 1, tzinfo=UTC)
    assert storage.bucket("expiry:usage:2028-02") is not None


def test_job_destroys_the_due_bucket_and_its_logs(
    vault: VaultService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    clock: FakeClock,
    erasure: Erasure,
) -> None:
    sid = vault.create_subject().subject_id
    log = vault.create_record(sid, "technical_logs", LOG, "server")
    contact = vault.create_record(sid, "contact", {"email": "a@example.org"}, "customer")
    bucket = storage.bucket("expiry:technical_logs:2027-03")
    assert bucket is not None
    job = RetentionJob(erasure)

    clock.set(datetime(2027, 3, 1, tzinfo=UTC) - timedelta(microseconds=1))
    assert job.run().actions == []  # not yet due
    assert vault.get_record(sid, log.record_id, "security").fields == LOG

    clock.set(datetime(2027, 3, 1, tzinfo=UTC))  # the first instant of the month
    summary = job.run()
    assert [(a.kind, a.target, a.records) for a in summary.actions] == [
        (DESTROY_BUCKET, "expiry:technical_logs:2027-03", 1)
    ]
    assert summary.buckets_destroyed == 1 and summary.subjects_erased == 0
    assert summary.records_destroyed == 1
    assert summary.ran_at == clock.now and not summary.dry_run
    assert not memory_kms.key_exists(bucket.key_id)
    gone = storage.bucket(bucket.bucket_id)
    assert gone is not None and gone.state == BucketState.DESTROYED and gone.wrapped_dek is None
    assert bucket.key_id in storage.ledger_key_ids()
    with pytest.raises(RecordNotFound):
        vault.get_record(sid, log.record_id, "security")
    assert vault.list_records(sid, "technical_logs", purpose="security").records == []
    # the subject and its other data are untouched
    assert vault.get_record(sid, contact.record_id, "service").fields == {"email": "a@example.org"}
    assert vault.get_subject(sid).state == "active"
    assert vault.get_subject(sid).record_count == 1
    # new logs go to a later bucket, which is alive
    later = vault.create_record(sid, "technical_logs", LOG, "server")
    assert later.retain_until == datetime(2028, 3, 1, tzinfo=UTC)
    assert job.run().actions == []


def test_a_bucket_left_destroying_is_destroyed_by_the_restore_fence(
    vault: VaultService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    clock: FakeClock,
    erasure: Erasure,
) -> None:
    """A crash between the bucket's mark and its ledger entry: the next start's fence
    records the key, destroys it and deletes the rows (no retention run needed)."""
    sid = vault.create_subject().subject_id
    log = vault.create_record(sid, "technical_logs", LOG, "server")
    bucket = storage.bucket("expiry:technical_logs:2027-03")
    assert bucket is not None
    clock.set(datetime(2027, 3, 1, tzinfo=UTC))
    storage.mark_bucket_destroying(bucket.bucket_id)  # then the process died
    fence = RestoreFence(erasure)

    plan = fence.plan()
    assert plan.buckets_to_destroy == [bucket.bucket_id] and plan.buckets_to_finish == []
    assert memory_kms.key_exists(bucket.key_id)  # the dry run changes nothing
    fence.run()
    gone = storage.bucket(bucket.bucket_id)
    assert gone is not None and gone.state == BucketState.DESTROYED
    assert not memory_kms.key_exists(bucket.key_id)
    assert bucket.key_id in {entry.key_id for entry in erasure.ledger.entries()}
    assert storage.record(sid, log.record_id) is None
    assert fence.plan().buckets_to_destroy == []


def test_expiry_costs_one_kms_call_per_bucket_not_per_record(
    vault: VaultService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    clock: FakeClock,
    erasure: Erasure,
) -> None:
    subjects = [vault.create_subject().subject_id for _ in range(30)]
    for n, sid in enumerate(subjects):
        for k in range(5):
            clock.set(T0 + timedelta(days=(n + k) % 15, minutes=n))  # all in March 2026
            vault.create_record(sid, "technical_logs", LOG, "server")
    bucket = storage.bucket("expiry:technical_logs:2027-03")
    assert bucket is not None
    assert storage.bucket_record_count(bucket.bucket_id) == 150

    clock.set(datetime(2027, 3, 2, tzinfo=UTC))
    job = RetentionJob(erasure)

    before = memory_kms.calls
    plan = job.run(dry_run=True)
    assert memory_kms.calls == before  # planning calls no KMS
    assert plan.dry_run
    assert [(a.kind, a.target, a.records) for a in plan.actions] == [
        (DESTROY_BUCKET, bucket.bucket_id, 150)
    ]
    assert plan.records_destroyed == 150
    # the dry run destroyed nothing
    assert memory_kms.key_exists(bucket.key_id)
    alive = storage.bucket(bucket.bucket_id)
    assert alive is not None and alive.state == BucketState.ACTIVE
    assert len(vault.list_records(subjects[0], purpose="security").records) == 5

    before = memory_kms.calls
    summary = job.run()
    assert memory_kms.calls - before == 1  # one destroy, for 150 records of 30 subjects
    assert summary.records_destroyed == 150
    assert summary.buckets_destroyed == 1
    assert [(a.kind, a.target) for a in summary.actions] == [
        (a.kind, a.target) for a in plan.actions
    ]
    assert not memory_kms.key_exists(bucket.key_id)
    for sid in subjects:
        assert vault.get_subject(sid).record_count == 0
        assert vault.list_records(sid, purpose="security").records == []
    assert storage.bucket_record_count(bucket.bucket_id) == 0

    before = memory_kms.calls
    again = job.run()
    assert again.actions == [] and again.records_destroyed == 0
    assert memory_kms.calls == before


def test_steps_report_progress(vault: VaultService, clock: FakeClock, erasure: Erasure) -> None:
    sid = vault.create_subject().subject_id
    vault.create_record(sid, "technical_logs", LOG, "server")
    clock.set(T0 + timedelta(days=31))  # April
    vault.create_record(sid, "usage", {"page": "/"}, "server")
    clock.set(datetime(2027, 5, 1, tzinfo=UTC))
    steps = list(RetentionJob(erasure).steps())
    assert [(a.target, done, total) for a, done, total in steps] == [
        ("expiry:technical_logs:2027-03", 1, 2),
        ("expiry:usage:2027-04", 2, 2),
    ]


# --- closed accounts and legal hold -----------------------------------------------------


def closed_customer(vault: VaultService) -> tuple[str, str, str]:
    sid = vault.create_subject().subject_id
    contact = vault.create_record(sid, "contact", {"email": "a@example.org"}, "customer")
    invoice = vault.create_record(sid, "billing", INVOICE, "billing")
    closed = vault.close_account(sid)
    assert closed.state == "closed" and closed.closed_at == T0
    assert (
        closed.scheduled_shred_at == add_months(T0, 6) == datetime(2026, 9, 10, 14, 30, tzinfo=UTC)
    )
    return sid, contact.record_id, invoice.record_id


def test_closed_account_is_erased_then_the_hold_expires(
    vault: VaultService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    clock: FakeClock,
    make_vault: Builder,
    erasure: Erasure,
) -> None:
    sid, contact_id, invoice_id = closed_customer(vault)
    key_id = storage.subject(sid).key_id
    job = RetentionJob(erasure)

    clock.set(add_months(T0, 6) - timedelta(seconds=1))
    assert job.run().actions == []
    assert vault.get_subject(sid).state == "closed"

    clock.set(add_months(T0, 6))
    plan = job.run(dry_run=True)
    assert [(a.kind, a.target, a.records) for a in plan.actions] == [(ERASE_SUBJECT, sid, 1)]
    assert plan.actions[0].due_at == add_months(T0, 6)
    assert vault.get_subject(sid).state == "closed" and memory_kms.key_exists(key_id)
    summary = job.run()
    assert [(a.kind, a.target) for a in summary.actions] == [(ERASE_SUBJECT, sid)]
    assert summary.subjects_erased == 1
    assert summary.actions[0].records == 1  # the contact; the invoice is held
    assert not memory_kms.key_exists(key_id)
    view = vault.get_subject(sid)
    assert view.state == "held"
    assert view.hold_until == datetime(2029, 3, 1, tzinfo=UTC)  # closure + 36 months
    assert view.record_count == 1
    receipt = storage.receipt(sid)
    assert receipt is not None
    assert (receipt.records_deleted, receipt.records_retained) == (1, 1)
    # contact gone, invoice kept for its legal purposes only
    with pytest.raises(RecordNotFound):
        vault.get_record(sid, contact_id, "service")
    held = vault.get_record(sid, invoice_id, "accounting")
    assert held.fields == INVOICE
    assert held.retain_until == datetime(2029, 3, 1, tzinfo=UTC)
    assert vault.get_record(sid, invoice_id, "legal_claims").fields == INVOICE
    with pytest.raises(PermissionDenied) as caught:
        vault.get_record(sid, invoice_id, "billing")
    assert caught.value.reason == "ERASED"
    with pytest.raises(SubjectShredded):
        vault.create_record(sid, "billing", INVOICE, "billing")
    # readable through the hold bucket, also by a second VaultService with a cold cache
    stored = storage.record(sid, invoice_id)
    assert stored is not None and stored.bucket_id == "hold:billing:2029-03"
    hold = storage.bucket("hold:billing:2029-03")
    assert hold is not None and memory_kms.key_exists(hold.key_id)
    cold = make_vault(storage, memory_kms, clock=clock)
    assert cold.get_record(sid, invoice_id, "accounting").fields == INVOICE

    assert job.run().actions == []  # nothing more until the hold ends

    clock.set(add_months(T0, 36))
    summary = job.run()
    assert [(a.kind, a.target, a.records) for a in summary.actions] == [
        (DESTROY_BUCKET, "hold:billing:2029-03", 1)
    ]
    assert not memory_kms.key_exists(hold.key_id)
    assert vault.get_subject(sid).state == "shredded"
    assert vault.get_subject(sid).record_count == 0
    with pytest.raises(SubjectShredded):
        vault.get_record(sid, invoice_id, "accounting")
    assert storage.records(sid) == []
    assert job.run().actions == []


def test_erasure_long_after_the_hold_ends_goes_all_the_way_in_one_run(
    vault: VaultService, memory_kms: InMemoryKeyManager, clock: FakeClock, erasure: Erasure
) -> None:
    sid, _contact, _invoice = closed_customer(vault)
    clock.set(add_months(T0, 40))  # the job did not run for years
    summary = RetentionJob(erasure).run()
    assert [a.kind for a in summary.actions] == [ERASE_SUBJECT, DESTROY_BUCKET]
    assert summary.records_destroyed == 2
    assert vault.get_subject(sid).state == "shredded"


def test_reopen_before_the_deadline_cancels_the_erasure(
    vault: VaultService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    clock: FakeClock,
    erasure: Erasure,
) -> None:
    sid, contact_id, invoice_id = closed_customer(vault)
    clock.set(add_months(T0, 3))
    reopened = vault.reopen_account(sid)
    assert reopened.state == "active"
    assert reopened.closed_at is None and reopened.scheduled_shred_at is None
    with pytest.raises(FailedPrecondition) as caught:
        vault.reopen_account(sid)
    assert caught.value.reason == "ACCOUNT_NOT_CLOSED"

    clock.set(add_months(T0, 7))
    assert RetentionJob(erasure).run().actions == []
    assert vault.get_subject(sid).state == "active"
    assert memory_kms.key_exists(storage.subject(sid).key_id)
    assert vault.get_record(sid, contact_id, "service").fields == {"email": "a@example.org"}
    assert vault.get_record(sid, invoice_id, "billing").fields == INVOICE

    # closing again schedules from the new closure
    closed = vault.close_account(sid)
    assert closed.scheduled_shred_at == add_months(add_months(T0, 7), 6)
    with pytest.raises(FailedPrecondition) as caught:
        vault.close_account(sid)
    assert caught.value.reason == "ACCOUNT_NOT_OPEN"


def test_interrupted_erasure_is_completed_by_the_next_run(
    vault: VaultService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    clock: FakeClock,
    erasure: Erasure,
) -> None:
    sid = vault.create_subject().subject_id
    contact = vault.create_record(sid, "contact", {"email": "a@example.org"}, "customer")
    invoice = vault.create_record(sid, "billing", INVOICE, "billing")
    key_id = storage.subject(sid).key_id

    memory_kms.unavailable = True
    with pytest.raises(Unavailable):
        erasure.shred(sid)
    memory_kms.unavailable = False
    assert vault.get_subject(sid).state == "shredding"
    with pytest.raises(SubjectShredded):  # refused at once
        vault.get_record(sid, contact.record_id, "service")
    assert memory_kms.key_exists(key_id)

    job = RetentionJob(erasure)
    plan = job.run(dry_run=True)
    assert [(a.kind, a.target) for a in plan.actions] == [(ERASE_SUBJECT, sid)]
    assert vault.get_subject(sid).state == "shredding"

    clock.set(T0 + timedelta(hours=1))
    summary = job.run()
    assert [(a.kind, a.target) for a in summary.actions] == [(ERASE_SUBJECT, sid)]
    assert not memory_kms.key_exists(key_id)
    view = vault.get_subject(sid)
    assert view.state == "held"
    # an active account's closure is "now": the hold runs 36 months from the erasure
    assert view.hold_until == datetime(2029, 3, 1, tzinfo=UTC)
    assert vault.get_record(sid, invoice.record_id, "accounting").fields == INVOICE
    with pytest.raises(RecordNotFound):
        vault.get_record(sid, contact.record_id, "service")
    assert job.run().actions == []


def test_interrupted_erasure_after_the_hold_move(
    vault: VaultService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    monkeypatch: pytest.MonkeyPatch,
    erasure: Erasure,
) -> None:
    """The KMS fails at the key destruction, after the invoices moved to the hold bucket."""
    sid = vault.create_subject().subject_id
    invoice = vault.create_record(sid, "billing", INVOICE, "billing")
    key_id = storage.subject(sid).key_id
    real_destroy = memory_kms.destroy_key

    def failing_destroy(key: str) -> None:
        memory_kms.unavailable = True
        try:
            real_destroy(key)
        finally:
            memory_kms.unavailable = False

    monkeypatch.setattr(memory_kms, "destroy_key", failing_destroy)
    with pytest.raises(Unavailable):
        erasure.shred(sid)
    monkeypatch.setattr(memory_kms, "destroy_key", real_destroy)
    stored = storage.record(sid, invoice.record_id)
    assert stored is not None and stored.bucket_id == "hold:billing:2029-03"
    assert vault.get_subject(sid).state == "shredding"

    RetentionJob(erasure).run()
    assert not memory_kms.key_exists(key_id)
    assert vault.get_subject(sid).state == "held"
    assert vault.get_record(sid, invoice.record_id, "accounting").fields == INVOICE


# --- retention after an event -----------------------------------------------------------


def test_resolved_ticket_moves_to_the_expiry_bucket(
    vault: VaultService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    clock: FakeClock,
    erasure: Erasure,
) -> None:
    sid = vault.create_subject().subject_id
    ticket = vault.create_record(sid, "support", {"ticket_id": "T-1", "message": "help"}, "support")
    assert ticket.retain_until is None
    for event in ("closed", "", "Resolved"):
        with pytest.raises(InvalidArgument) as caught:
            vault.record_event(sid, ticket.record_id, event)
        assert caught.value.field == "event"
    # categories without an after-event rule take no event at all
    contact = vault.create_record(sid, "contact", {"email": "a@example.org"}, "customer")
    log = vault.create_record(sid, "technical_logs", LOG, "server")
    for record_id in (contact.record_id, log.record_id):
        with pytest.raises(InvalidArgument):
            vault.record_event(sid, record_id, "resolved")
    with pytest.raises(RecordNotFound):
        vault.record_event(sid, "aaaaaaaaaaaaaaaaaaaaaaaaaa", "resolved")
    stored = storage.record(sid, ticket.record_id)
    assert (
        stored is not None and stored.key_scheme == KeyScheme.SUBJECT and stored.bucket_id is None
    )

    resolved_at = datetime(2026, 6, 20, 9, tzinfo=UTC)
    clock.set(resolved_at)
    view = vault.record_event(sid, ticket.record_id, "resolved")
    assert view.retain_until == datetime(2028, 6, 1, tzinfo=UTC)  # resolution + 24 months
    # Metadata only: starting a retention clock is not a read (issue 9, finding 1).
    assert view.version == 2 and view.fields == {}
    stored = storage.record(sid, ticket.record_id)
    assert stored is not None
    assert stored.key_scheme == KeyScheme.EXPIRY
    assert stored.bucket_id == "expiry:support:2028-06"
    assert stored.retain_until == datetime(2028, 6, 1, tzinfo=UTC)
    assert vault.get_record(sid, ticket.record_id, "support").fields == {
        "ticket_id": "T-1",
        "message": "help",
    }

    with pytest.raises(FailedPrecondition) as caught:
        vault.record_event(sid, ticket.record_id, "resolved")
    assert caught.value.reason == "EVENT_ALREADY_RECORDED"

    # a rectification keeps the record in its bucket
    updated = vault.update_record(sid, ticket.record_id, {"ticket_id": "T-1", "message": "ok"}, 2)
    assert updated.retain_until == datetime(2028, 6, 1, tzinfo=UTC)
    stored = storage.record(sid, ticket.record_id)
    assert stored is not None and stored.bucket_id == "expiry:support:2028-06"

    other = vault.create_record(sid, "support", {"ticket_id": "T-2"}, "support")  # unresolved
    clock.set(datetime(2028, 6, 1, tzinfo=UTC))
    summary = RetentionJob(erasure).run()
    assert [(a.target, a.records) for a in summary.actions] == [
        ("expiry:technical_logs:2027-03", 1),
        ("expiry:support:2028-06", 1),
    ]
    assert vault.get_record(sid, contact.record_id, "support").fields == {"email": "a@example.org"}
    with pytest.raises(RecordNotFound):
        vault.get_record(sid, ticket.record_id, "support")
    assert vault.get_record(sid, other.record_id, "support").fields == {"ticket_id": "T-2"}


def test_a_failing_erasure_does_not_block_other_expiries(
    vault: VaultService,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    erasure: Erasure,
) -> None:
    """The KMS refuses to destroy one subject's key (a monkeypatched in-memory KMS): that
    erasure is reported as failed, the other erasure and the due bucket go ahead, and the
    next run completes the failed one."""
    failing = vault.create_subject().subject_id
    erased = vault.create_subject().subject_id
    for sid in (failing, erased):
        vault.create_record(sid, "contact", {"email": "c@example.org"}, "customer")
        vault.close_account(sid)
    logged = vault.create_subject().subject_id
    vault.create_record(logged, "technical_logs", LOG, "server")
    failing_key = storage.subject(failing).key_id
    real_destroy = memory_kms.destroy_key

    def refuse_one(key_id: str) -> None:
        if key_id == failing_key:
            raise KmsUnavailable("transit refused")
        real_destroy(key_id)

    monkeypatch.setattr(memory_kms, "destroy_key", refuse_one)
    clock.set(add_months(T0, 13))  # both erasures and the log bucket are due

    summary = RetentionJob(erasure).run()

    assert summary.failures == 1
    [failed] = [a for a in summary.actions if a.error]
    assert (failed.kind, failed.target, failed.error) == (
        ERASE_SUBJECT,
        failing,
        "BACKEND_UNAVAILABLE",
    )
    assert summary.subjects_erased == 1 and summary.buckets_destroyed == 1
    assert vault.get_subject(erased).state == "shredded"
    assert vault.get_subject(failing).state == "shredding"  # refused until completed
    assert memory_kms.key_exists(failing_key)

    monkeypatch.undo()
    again = RetentionJob(erasure).run()
    assert [(a.kind, a.target, a.error) for a in again.actions] == [(ERASE_SUBJECT, failing, "")]
    assert vault.get_subject(failing).state == "shredded"
    assert not memory_kms.key_exists(failing_key)


def test_erasure_of_a_subject_whose_key_is_already_gone_completes(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Callable[..., VaultService]
) -> None:
    """The KMS no longer has the subject's key while the database still holds its records
    (what restoring the database from before an erasure leaves; simulated here by
    destroying the key in the in-memory KMS). The job's erasure still completes, and
    the other expiry of the same run goes ahead."""
    from datetime import UTC, datetime

    from vault.crypto.bucket_keys import add_months
    from vault.usecases.retention import RetentionJob

    now = [datetime(2026, 3, 10, tzinfo=UTC)]
    vault = make_vault(storage, memory_kms, clock=lambda: now[0])
    restored = vault.create_subject()
    vault.create_record(restored.subject_id, "billing", {"amount": "1"}, "billing")
    vault.create_record(restored.subject_id, "contact", {"email": "r@x.y"}, "c")
    other = vault.create_subject()
    vault.create_record(other.subject_id, "technical_logs", {"event": "e"}, "web")
    # As after restoring: the key was destroyed by an erasure the database forgot.
    memory_kms.destroy_key(storage.subject(restored.subject_id).key_id)
    vault.crypto.cache.evict(storage.subject(restored.subject_id).key_id)
    vault.close_account(restored.subject_id)
    now[0] = add_months(now[0], 13)
    summary = RetentionJob(erasure_of(vault)).run()
    assert summary.failures == 0
    assert summary.subjects_erased == 1 and summary.buckets_destroyed == 1
    assert vault.get_subject(restored.subject_id).state == "shredded"
