"""The audit trail and lookup by e-mail/phone, end to end through gRPC."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import event, text
from typer.testing import CliRunner

from oubli_client.errors import InvalidArgument, PermissionDenied, Unavailable
from tests.audit_tables import audit_dump, seal
from tests.stack import TEST_TOKEN, Stack
from vault.app.cli import app
from vault.errors import Unavailable as DomainUnavailable

CANARY_EMAIL = "Zoe.Canary-8841@Example.invalid"


def test_every_rpc_touching_a_subject_is_audited_without_pii(stack: Stack) -> None:
    client = stack.client
    sid = client.create_subject().subject_id
    record = client.create_record(sid, "contact", {"email": CANARY_EMAIL, "city": "Nantes"})
    client.get_record(sid, record.record_id, "billing")
    client.export_subject(sid)
    client.shred_subject(sid)
    entries = client.query_audit(subject_id=sid)
    actions = [e.action for e in entries]
    # A change made in one transaction is recorded in it; one that destroys keys when
    # it starts and with its outcome; reads once.
    assert actions == [
        "SubjectService.CreateSubject",
        "RecordService.CreateRecord",
        "RecordService.GetRecord",
        "SubjectService.ExportSubject",
        "SubjectService.ShredSubject",
        "SubjectService.ShredSubject",
    ]
    assert [e.outcome for e in entries] == ["OK", "OK", "OK", "OK", "STARTED", "OK"]
    written = entries[1]
    assert written.categories == ("contact",) and set(written.fields) == {"email", "city"}
    read = entries[2]
    assert read.caller == "test-admin" and read.purpose == "billing"
    assert read.categories == ("contact",) and set(read.fields) == {"email", "city"}
    # Entries survive the shred, and none holds a value.
    dump = audit_dump(stack.storage).lower()
    assert CANARY_EMAIL.lower() not in dump and "nantes" not in dump
    assert client.verify_audit().ok


def test_refused_calls_are_audited_too(stack: Stack) -> None:
    sid = stack.client.create_subject().subject_id
    record = stack.client.create_record(sid, "contact", {"email": "a@example.org"})
    with pytest.raises(PermissionDenied) as refused:
        stack.client.get_record(sid, record.record_id, "marketing")  # no consent
    assert refused.value.reason == "CONSENT_MISSING"
    last = stack.client.query_audit(subject_id=sid)[-1]
    assert last.action == "RecordService.GetRecord" and last.outcome == "CONSENT_MISSING"


def test_verification_names_the_first_edited_entry(stack: Stack) -> None:
    client = stack.client
    sid = client.create_subject().subject_id
    # From a checkpoint on, verifications are incremental: two in a row are not limited.
    stack.server.audit.audit.checkpoint()
    for n in range(3):
        client.create_record(sid, "usage", {"page": f"/{n}"}, "web")
    entries = client.query_audit(subject_id=sid)
    target = entries[1].seq
    seal(stack.storage)  # the query sealed its own entries; the edit is of the chain
    with stack.storage.engine.begin() as c:
        c.execute(
            text("UPDATE audit_entries SET purpose = 'marketing' WHERE seq = :s"), {"s": target}
        )
    result = client.verify_audit()
    assert not result.ok and result.first_broken_seq == target
    cli = CliRunner(env={"OUBLI_TOKEN": TEST_TOKEN}).invoke(
        app, ["audit", "verify", "--target", stack.target]
    )
    assert cli.exit_code == 1 and f'"first_broken_seq": {target}' in cli.stdout


def test_no_audit_no_access(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = stack.client.create_subject().subject_id
    record = stack.client.create_record(sid, "contact", {"email": "b@example.org"})

    def broken(event: object) -> object:
        raise DomainUnavailable("audit table unreachable")

    monkeypatch.setattr(stack.server.audit.audit, "append_many", broken)
    with pytest.raises(Unavailable):
        stack.client.get_record(sid, record.record_id, "billing")
    with pytest.raises(Unavailable):
        stack.client.export_subject(sid)


def test_lookup_by_email_and_phone_before_and_after_shred(stack: Stack) -> None:
    client = stack.client
    ada = client.create_subject().subject_id
    bob = client.create_subject().subject_id
    client.create_record(
        ada, "contact", {"email": " Ada.Lovelace@Example.org", "phone": "+33 6 12 34 56 78"}
    )
    client.create_record(bob, "contact", {"email": "bob@example.org"})
    assert client.find_subject(email="ada.lovelace@example.org", purpose="billing") == [ada]
    assert client.find_subject(phone="0033 6 12-34-56-78", purpose="billing") == [ada]
    assert client.find_subject(email="nobody@example.org", purpose="billing") == []
    found = [
        e for e in client.query_audit(subject_id=ada) if e.action == "LookupService.FindSubject"
    ]
    assert found and found[0].categories == ("contact",) and found[0].fields == ("email",)
    with pytest.raises(InvalidArgument):
        client.find_subject(email="not an address", purpose="billing")
    with pytest.raises(InvalidArgument):
        client.find_subject(email="a@b.c", phone="+3312345678", purpose="billing")
    client.shred_subject(ada)
    assert client.find_subject(email="ada.lovelace@example.org", purpose="billing") == []
    with stack.storage.engine.connect() as c:
        assert (
            c.execute(
                text("SELECT count(*) FROM blind_index WHERE subject_id = :s"), {"s": ada}
            ).scalar()
            == 0
        )


def test_access_report_lists_recipients_seen_in_the_audit_trail(stack: Stack) -> None:
    client = stack.client
    sid = client.create_subject().subject_id
    record = client.create_record(sid, "contact", {"email": "c@example.org"})
    client.get_record(sid, record.record_id, "billing")
    report = client.access_report(sid)
    assert report["categories"]["contact"]["recipients_seen"] == ["test-admin"]


def test_a_change_that_cannot_be_audited_is_not_made(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = stack.client.create_subject().subject_id

    def broken(event: object) -> object:
        raise DomainUnavailable("audit table unreachable")

    monkeypatch.setattr(stack.server.audit.audit, "append_many", broken)
    # A change audited before it starts (an account closure): refused, nothing changed.
    with pytest.raises(Unavailable):
        stack.client.close_account(sid)
    monkeypatch.undo()
    assert stack.client.get_subject(sid).state == "active"


def _audit_table_gone(stack: Stack, gone: bool) -> None:
    """Make the audit's pending table unreachable (or back): a real database failure
    of the entry's insert, whatever writes it."""
    old, new = ("audit_pending", "audit_pending_away")[:: 1 if gone else -1]
    with stack.storage.engine.begin() as c:
        c.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


def test_a_change_and_its_entry_in_one_transaction_fail_together(stack: Stack) -> None:
    client = stack.client
    sid = client.create_subject().subject_id
    with stack.storage.engine.connect() as c:
        subjects = c.execute(text("SELECT count(*) FROM subjects")).scalar_one()
    _audit_table_gone(stack, True)
    try:
        with pytest.raises(Unavailable):
            client.create_record(sid, "contact", {"email": "d@example.org"})
        with pytest.raises(Unavailable):
            client.create_subject()
    finally:
        _audit_table_gone(stack, False)
    # Neither the record nor the subject was made.
    assert client.get_subject(sid).record_count == 0
    with stack.storage.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM subjects")).scalar_one() == subjects

    # The refusals' own entries could not be written either (they are logged): the
    # trail shows the subject's creation and the read above only.
    def changes_and_reads() -> list[str]:
        entries = client.query_audit(subject_id=sid)
        return [e.action for e in entries if e.action != "AuditService.QueryAudit"]

    actions = ["SubjectService.CreateSubject", "SubjectService.GetSubject"]
    assert changes_and_reads() == actions
    # And with the table back, the same change goes through with its entry.
    client.create_record(sid, "contact", {"email": "d@example.org"})
    assert changes_and_reads() == [*actions, "RecordService.CreateRecord"]


def test_a_change_in_one_transaction_costs_one_audited_commit(stack: Stack) -> None:
    """A put commits once: the record and its entry together (no STARTED entry, no
    separate outcome); a read commits its entry once. Counted: the transactions that
    inserted a record or a recorded entry (not the sealer's, nor plain reads)."""
    client = stack.client
    sid = client.create_subject().subject_id
    writing: set[int] = set()
    commits: list[int] = []

    def executed(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if re.match(r"\s*INSERT INTO (records|audit_pending)\b", statement):
            writing.add(id(connection))

    def committed(connection: Any) -> None:
        if id(connection) in writing:
            writing.discard(id(connection))
            commits.append(1)

    engine = stack.storage.engine
    event.listen(engine, "before_cursor_execute", executed)
    event.listen(engine, "commit", committed)
    try:
        record = client.create_record(sid, "contact", {"email": "e@example.org"})
        puts = len(commits)
        client.get_record(sid, record.record_id, "billing")
        gets = len(commits) - puts
    finally:
        event.remove(engine, "before_cursor_execute", executed)
        event.remove(engine, "commit", committed)
    assert (puts, gets) == (1, 1)
    # Starting a retention clock re-encrypts the record: one transaction, one entry too.
    ticket = client.create_record(sid, "support", {"message": "help"}, "customer")
    client.record_event(sid, ticket.record_id, "resolved")
    entries = client.query_audit(subject_id=sid)
    assert [(e.action, e.outcome) for e in entries][1:] == [
        ("RecordService.CreateRecord", "OK"),
        ("RecordService.GetRecord", "OK"),
        ("RecordService.CreateRecord", "OK"),
        ("RecordService.RecordEvent", "OK"),
    ]
    assert entries[-1].categories == ("support",)
