"""Scenarios written from the privacy policies in shared/seeds/, through the gRPC API,
on real OpenBao and on both databases. Time moves by the injected clock."""

from __future__ import annotations

import pytest

from oubli_client import RetentionAction, RetentionSummary
from oubli_client.errors import NotFound, PermissionDenied
from tests.scenarios.conftest import Scenario
from vault.errors import KeyDestroyedError, RecordNotFound, SubjectShredded


def _run(
    scenario: Scenario, dry_run: bool = False
) -> tuple[list[RetentionAction], RetentionSummary]:
    items = list(scenario.client.run_retention(dry_run=dry_run))
    summary = items[-1]
    assert isinstance(summary, RetentionSummary)
    actions = [i for i in items if isinstance(i, RetentionAction)]
    return actions, summary


def test_logs_older_than_12_months_are_unreadable_after_the_job_also_from_an_old_copy(
    scenario: Scenario,
) -> None:
    """Seed 000: logs kept 12 months at most, then automatically deleted."""
    client = scenario.client
    subject = client.create_subject()
    sid = subject.subject_id
    old_log = client.create_record(
        sid, "technical_logs", {"ip_address": "203.0.113.7", "event": "login"}, "web"
    )
    assert old_log.retain_until is not None
    assert old_log.retain_until <= scenario.clock.now.replace(year=2027)  # <= 12 months
    scenario.clock.advance(months=6)
    recent_log = client.create_record(
        sid, "technical_logs", {"ip_address": "198.51.100.9", "event": "login"}, "web"
    )
    contact = client.create_record(sid, "contact", {"email": "kept@example.org"})
    before_job = scenario.copy_database()

    scenario.clock.advance(months=6, days=1)  # the first log is now > 12 months old
    actions, summary = _run(scenario)
    assert [a.kind for a in actions] == ["destroy_bucket"]
    assert summary.buckets_destroyed == 1 and summary.records_destroyed == 1

    with pytest.raises(NotFound):
        client.get_record(sid, old_log.record_id, "security")
    assert client.get_record(sid, recent_log.record_id, "security").fields["event"] == "login"
    assert client.get_record(sid, contact.record_id, "service").fields

    # The copy taken before the job still holds the old log's row and its wrapped keys,
    # but the bucket key is destroyed in OpenBao: unreadable there too.
    old_copy = scenario.reader(before_job)
    with pytest.raises(KeyDestroyedError):
        old_copy.get_record(sid, old_log.record_id, "security")
    assert old_copy.get_record(sid, recent_log.record_id, "security").fields
    assert old_copy.get_record(sid, contact.record_id, "service").fields


def test_closed_account_contact_goes_after_6_months_invoices_after_3_years(
    scenario: Scenario,
) -> None:
    """Seed 003: erased 6 months after termination; seed 000: accounting kept 3 years."""
    client = scenario.client
    sid = client.create_subject().subject_id
    contact = client.create_record(sid, "contact", {"email": "gone@example.org"})
    invoice = client.create_record(
        sid, "billing", {"invoice_number": "F-2026-001", "amount": "19.99"}, "billing"
    )
    closed = client.close_account(sid)
    assert closed.state == "closed" and closed.scheduled_erasure_at is not None

    scenario.clock.advance(months=5)
    actions, _ = _run(scenario)
    assert actions == []  # not yet due
    assert client.get_record(sid, contact.record_id, "service").fields

    scenario.clock.advance(months=1, days=1)
    actions, summary = _run(scenario)
    assert summary.subjects_erased == 1
    subject = client.get_subject(sid)
    assert subject.state == "held" and subject.hold_until is not None
    with pytest.raises(NotFound):
        client.get_record(sid, contact.record_id, "service")  # its row and key are gone
    with pytest.raises(PermissionDenied) as erased:
        client.list_records(sid, "contact", purpose="service")
    assert erased.value.reason == "ERASED"
    # Invoices stay, for their legal purposes only.
    assert client.get_record(sid, invoice.record_id, "accounting").fields["amount"] == "19.99"
    with pytest.raises(PermissionDenied):
        client.get_record(sid, invoice.record_id, "billing")
    export = client.export_subject(sid)
    assert list(export["categories"]) == ["billing"]

    # Three years after closure the hold's key is destroyed: the invoices go too.
    scenario.clock.advance(months=30)
    actions, summary = _run(scenario)
    assert summary.buckets_destroyed == 1 and summary.records_destroyed == 1
    assert client.get_subject(sid).state == "shredded"
    with pytest.raises(NotFound):
        client.get_record(sid, invoice.record_id, "accounting")


def test_erasure_request_destroys_at_once_but_keeps_invoices_and_old_copies_yield_nothing(
    scenario: Scenario,
) -> None:
    """Seed 000/003: erasure on request, except what must be kept for legal obligations."""
    client = scenario.client
    sid = client.create_subject().subject_id
    contact = client.create_record(sid, "contact", {"email": "erase-me@example.org"})
    usage = client.create_record(sid, "usage", {"page": "/dashboard"}, "web")
    invoice = client.create_record(sid, "billing", {"invoice_number": "F-1"}, "billing")
    before_erasure = scenario.copy_database()

    receipt = client.shred_subject(sid)
    assert receipt.records_deleted == 2 and receipt.records_retained == 1
    assert receipt.retained_until is not None
    assert not scenario.kms.key_exists(receipt.key_id)
    for record_id in (contact.record_id, usage.record_id):
        with pytest.raises((NotFound, PermissionDenied)):
            client.get_record(sid, record_id, "service")
    assert client.get_record(sid, invoice.record_id, "legal_claims").fields == {
        "invoice_number": "F-1"
    }

    # A copy from before the erasure: the subject's key is gone, so nothing at all,
    # not even the invoices (they survive only in the live database, under the hold).
    old_copy = scenario.reader(before_erasure)
    for record_id in (contact.record_id, usage.record_id, invoice.record_id):
        with pytest.raises(KeyDestroyedError):
            old_copy.get_record(sid, record_id, "access")

    # A copy taken after the erasure holds the invoices under the hold bucket, which
    # the retention job destroys when the accounting period ends.
    after_erasure = scenario.copy_database()
    scenario.clock.advance(months=37)
    _run(scenario)
    with pytest.raises((KeyDestroyedError, RecordNotFound, SubjectShredded)):
        scenario.reader(after_erasure).get_record(sid, invoice.record_id, "accounting")


def test_objection_to_marketing_refuses_marketing_reads_only(scenario: Scenario) -> None:
    client = scenario.client
    sid = client.create_subject().subject_id
    contact = client.create_record(sid, "contact", {"email": "m@example.org"})
    client.grant_consent(sid, "marketing")
    assert client.get_record(sid, contact.record_id, "marketing").fields
    client.object_to(sid, "marketing")
    with pytest.raises(PermissionDenied) as refused:
        client.get_record(sid, contact.record_id, "marketing")
    assert refused.value.reason == "OBJECTED"
    assert client.get_record(sid, contact.record_id, "billing").fields
    assert client.get_record(sid, contact.record_id, "support").fields
    with pytest.raises(PermissionDenied):
        client.list_records(sid, purpose="marketing")
    client.withdraw_objection(sid, "marketing")
    assert client.get_record(sid, contact.record_id, "marketing").fields


def test_restriction_refuses_everything_but_the_allowed_purposes(scenario: Scenario) -> None:
    client = scenario.client
    sid = client.create_subject().subject_id
    contact = client.create_record(sid, "contact", {"email": "r@example.org"})
    invoice = client.create_record(sid, "billing", {"invoice_number": "F-9"}, "billing")
    assert client.restrict(sid).restricted
    for purpose in ("service", "billing", "support", "marketing"):
        with pytest.raises(PermissionDenied) as refused:
            client.get_record(sid, contact.record_id, purpose)
        assert refused.value.reason in ("RESTRICTED", "CONSENT_MISSING")
    assert client.get_record(sid, invoice.record_id, "legal_claims").fields
    assert client.get_record(sid, contact.record_id, "legal_claims").fields
    assert client.export_subject(sid)["categories"]  # the subject's own rights go on
    client.lift_restriction(sid)
    assert client.get_record(sid, contact.record_id, "service").fields


def test_consent_withdrawal_for_card_storage_makes_the_card_unreadable(
    scenario: Scenario,
) -> None:
    """Seed 003: the card number is kept only if the customer ticks the box."""
    client = scenario.client
    sid = client.create_subject().subject_id
    with pytest.raises(PermissionDenied) as refused:
        client.create_record(sid, "payment", {"card_number": "4970100000000007"}, "billing")
    assert refused.value.reason == "CONSENT_MISSING"
    client.grant_consent(sid, "card_storage")
    card = client.create_record(sid, "payment", {"card_number": "4970100000000007"}, "billing")
    contact = client.create_record(sid, "contact", {"email": "card@example.org"})
    old_key = scenario.server.vault.storage.subject(sid).key_id
    before = scenario.copy_database()

    subject, destroyed = client.withdraw_consent(sid, "card_storage")
    assert destroyed == 1 and "card_storage" not in subject.consents
    with pytest.raises((NotFound, PermissionDenied)):
        client.get_record(sid, card.record_id, "billing")
    assert client.get_record(sid, contact.record_id, "service").fields["email"]
    # The subject moved to a new key; the old one, which a backup would need, is gone.
    assert not scenario.kms.key_exists(old_key)
    with pytest.raises(KeyDestroyedError):
        scenario.reader(before).get_record(sid, card.record_id, "access")


def test_retention_job_twice_does_nothing_the_second_time_and_dry_run_destroys_nothing(
    scenario: Scenario,
) -> None:
    client = scenario.client
    subjects = [client.create_subject().subject_id for _ in range(3)]
    logs = [
        client.create_record(sid, "technical_logs", {"event": f"e{n}"}, "web")
        for n, sid in enumerate(subjects)
    ]
    client.close_account(subjects[0])
    scenario.clock.advance(months=13)

    planned, dry = _run(scenario, dry_run=True)
    assert dry.dry_run and {a.kind for a in planned} == {"destroy_bucket", "erase_subject"}
    # Nothing was destroyed by the dry run.
    assert client.get_record(subjects[1], logs[1].record_id, "security").fields
    assert client.get_subject(subjects[0]).state == "closed"

    done, summary = _run(scenario)
    assert {(a.kind, a.target) for a in done} == {(a.kind, a.target) for a in planned}
    assert summary.buckets_destroyed == 1 and summary.subjects_erased == 1
    again, second = _run(scenario)
    assert again == [] and second.records_destroyed == 0


def test_account_reopened_before_the_deadline_is_not_erased(scenario: Scenario) -> None:
    client = scenario.client
    sid = client.create_subject().subject_id
    contact = client.create_record(sid, "contact", {"email": "back@example.org"})
    client.close_account(sid)
    scenario.clock.advance(months=3)
    reopened = client.reopen_account(sid)
    assert reopened.state == "active" and reopened.scheduled_erasure_at is None
    scenario.clock.advance(months=12)
    _run(scenario)
    assert client.get_record(sid, contact.record_id, "service").fields


def test_support_exchanges_go_two_years_after_resolution(scenario: Scenario) -> None:
    client = scenario.client
    sid = client.create_subject().subject_id
    ticket = client.create_record(sid, "support", {"message": "help"}, "support")
    assert ticket.retain_until is None  # open ticket: kept while it is open
    scenario.clock.advance(months=30)
    resolved = client.record_event(sid, ticket.record_id, "resolved")
    assert resolved.retain_until is not None
    scenario.clock.advance(months=23)
    _run(scenario)
    assert client.get_record(sid, ticket.record_id, "support").fields == {"message": "help"}
    scenario.clock.advance(months=1, days=1)
    _run(scenario)
    with pytest.raises(NotFound):
        client.get_record(sid, ticket.record_id, "support")


def test_rights_requests_are_due_in_30_days_and_overdue_ones_are_listed(
    scenario: Scenario,
) -> None:
    client = scenario.client
    sid = client.create_subject().subject_id
    access = client.create_rights_request(sid, "access")
    erasure = client.create_rights_request(sid, "erasure")
    assert (access.due_at - access.received_at).days == 30
    assert client.list_rights_requests(overdue_only=True) == []
    client.close_rights_request(access.request_id)
    scenario.clock.advance(days=31)
    overdue = client.list_rights_requests(overdue_only=True)
    assert [r.request_id for r in overdue] == [erasure.request_id]
    report = client.access_report(sid)
    assert {r["kind"] for r in report["rights_requests"]} == {"access", "erasure"}


def test_access_report_lists_origin_purposes_basis_recipients_and_retention(
    scenario: Scenario,
) -> None:
    client = scenario.client
    sid = client.create_subject().subject_id
    client.create_record(sid, "contact", {"email": "a@example.org"}, "customer")
    client.create_record(sid, "technical_logs", {"event": "login"}, "web")
    client.object_to(sid, "analytics")
    report = client.access_report(sid)
    contact = report["categories"]["contact"]
    assert contact["legal_basis"] == "contract"
    assert "billing" in contact["purposes"] and contact["recipients"]
    assert contact["origins"] == ["customer"]
    logs = report["categories"]["technical_logs"]
    assert logs["legal_basis"] == "legitimate_interest"
    assert logs["records"][0]["retain_until"] is not None
    assert report["subject"]["objections"] == ["analytics"]


def test_location_needs_consent_and_expires_after_12_months(scenario: Scenario) -> None:
    client = scenario.client
    sid = client.create_subject().subject_id
    with pytest.raises(PermissionDenied) as refused:
        client.create_record(sid, "location", {"city": "Lyon"}, "app")
    assert refused.value.reason == "CONSENT_MISSING"
    client.grant_consent(sid, "location")
    place = client.create_record(sid, "location", {"city": "Lyon"}, "app")
    usage = client.create_record(sid, "usage", {"page": "/billing"}, "web")
    assert client.get_record(sid, place.record_id, "security").fields == {"city": "Lyon"}
    scenario.clock.advance(months=12, days=1)
    _, summary = _run(scenario)
    assert summary.buckets_destroyed == 2  # location and usage buckets of that month
    for record in (place, usage):
        with pytest.raises(NotFound):
            client.get_record(sid, record.record_id, "service")


def test_restricted_subject_gets_no_new_processing(scenario: Scenario) -> None:
    client = scenario.client
    sid = client.create_subject().subject_id
    contact = client.create_record(sid, "contact", {"email": "x@example.org"})
    client.restrict(sid)
    with pytest.raises(PermissionDenied) as refused:
        client.create_record(sid, "usage", {"page": "/"}, "web")
    assert refused.value.reason == "RESTRICTED"
    # Rectification stays possible: it is often why restriction was asked for.
    fixed = client.update_record(sid, contact.record_id, {"email": "y@example.org"}, 1)
    assert fixed.version == 2
