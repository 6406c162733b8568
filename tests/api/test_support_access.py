"""Seed 002: support reads a customer's content only under that customer's consent
for one ticket; without it, a metadata-only overview."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from oubli_client import OubliClient
from oubli_client.errors import NotFound, PermissionDenied
from tests.memory_kms import InMemoryKeyManager
from tests.stack import vault_service
from vault.access.authentication import Authenticator, token_hash
from vault.access.caller_policy import CallerPolicy
from vault.app.config import ServerConfig
from vault.app.server import RunningServer, start_server
from vault.storage import Storage, make_engine, migrate

SECRET = "my server password is hunter2"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[RunningServer, Clock]]:
    clock = Clock()
    engine = make_engine(f"sqlite:///{tmp_path / 'support.db'}")
    migrate(engine)
    vault = vault_service(Storage(engine), InMemoryKeyManager(), clock=clock)
    tokens = {token_hash(f"t-{c}"): c for c in ("control-panel", "support", "billing")}
    auth = Authenticator(tokens), CallerPolicy.load()
    server = start_server(ServerConfig(listen="127.0.0.1:0"), vault=vault, clock=clock, auth=auth)
    yield server, clock
    server.stop(grace=0)


def _client(server: RunningServer, caller: str) -> OubliClient:
    return OubliClient(f"127.0.0.1:{server.port}", token=f"t-{caller}", max_attempts=1)


def test_support_sees_metadata_without_grant_and_content_with_one(
    served: tuple[RunningServer, Clock],
) -> None:
    server, clock = served
    with _client(server, "control-panel") as panel, _client(server, "support") as support:
        sid = panel.create_subject().subject_id
        ticket = panel.create_record(sid, "support", {"message": SECRET}, "customer")
        panel.create_record(sid, "contact", {"email": "client@example.org"})

        overview = support.support_overview(sid)
        assert overview["categories"]["support"]["record_count"] == 1
        assert overview["categories"]["support"]["ciphertext_bytes"] > 0
        assert SECRET not in repr(overview) and "client@example.org" not in repr(overview)
        with pytest.raises(PermissionDenied):  # no RecordService access for support
            support.get_record(sid, ticket.record_id, "support")
        with pytest.raises(PermissionDenied) as refused:
            support.read_under_grant(sid, "a" * 26)
        assert refused.value.reason == "NO_LIVE_GRANT"

        # The customer consents in the control panel, for this ticket, for 24 hours.
        other_case = panel.create_record(sid, "support", {"message": "another case"}, "customer")
        grant = panel.grant_support_access(sid, ticket.record_id, 24)
        assert grant.granted_by == "control-panel" and grant.status == "live"
        read = support.read_under_grant(sid, grant.grant_id)
        # The consent covers this case only: not the customer's other tickets.
        assert [r.fields.get("message") for r in read if r.category == "support"] == [SECRET]
        assert other_case.record_id not in {r.record_id for r in read}
        assert all(r.category in ("support", "contact", "identity") for r in read)

        clock.now += timedelta(hours=25)  # the grant expires by itself
        with pytest.raises(PermissionDenied):
            support.read_under_grant(sid, grant.grant_id)


def test_grant_ends_when_the_ticket_is_resolved_or_revoked(
    served: tuple[RunningServer, Clock],
) -> None:
    server, _ = served
    with _client(server, "control-panel") as panel, _client(server, "support") as support:
        sid = panel.create_subject().subject_id
        ticket = panel.create_record(sid, "support", {"message": "help"}, "customer")
        grant = panel.grant_support_access(sid, ticket.record_id, 48)
        assert support.read_under_grant(sid, grant.grant_id)
        support.record_event(sid, ticket.record_id, "resolved")
        with pytest.raises(PermissionDenied):
            support.read_under_grant(sid, grant.grant_id)

        other = panel.create_record(sid, "support", {"message": "again"}, "customer")
        second = panel.grant_support_access(sid, other.record_id, 1)
        revoked = panel.revoke_support_access(second.grant_id)
        assert revoked.status == "revoked"
        with pytest.raises(PermissionDenied):
            support.read_under_grant(sid, second.grant_id)
        with pytest.raises(NotFound):
            panel.revoke_support_access("b" * 26)


def test_only_the_control_panel_records_consent(served: tuple[RunningServer, Clock]) -> None:
    server, _ = served
    with _client(server, "control-panel") as panel, _client(server, "support") as support:
        sid = panel.create_subject().subject_id
        ticket = panel.create_record(sid, "support", {"message": "x"}, "customer")
        with pytest.raises(PermissionDenied) as refused:
            support.grant_support_access(sid, ticket.record_id, 24)
        assert refused.value.reason == "RPC_NOT_ALLOWED"


def test_resolving_a_ticket_answers_metadata_only_whoever_calls(
    served: tuple[RunningServer, Clock],
) -> None:
    """Issue 9, finding 1: RecordEvent returned the decrypted ticket, so support read it
    without (or after) the customer's consent, and no access report showed it."""
    server, _ = served
    with _client(server, "control-panel") as panel, _client(server, "support") as support:
        sid = panel.create_subject().subject_id
        fields = {"subject_line": "VPN down", "message": SECRET}
        never_granted = panel.create_record(sid, "support", fields, "customer")
        revoked = panel.create_record(sid, "support", fields, "customer")
        grant = panel.grant_support_access(sid, revoked.record_id, 24)
        panel.revoke_support_access(grant.grant_id)
        for ticket in (never_granted, revoked):
            resolved = support.record_event(sid, ticket.record_id, "resolved")
            assert resolved.fields == {}
            assert resolved.version == 2 and resolved.retain_until is not None
        # Not a read for anyone: the control panel (it may read tickets for the customer's
        # own access) gets the same.
        third = panel.create_record(sid, "support", fields, "customer")
        assert panel.record_event(sid, third.record_id, "resolved").fields == {}

        report = panel.access_report(sid)
        assert "support" not in report["categories"]["support"]["recipients_seen"]
        stored = panel.get_record(sid, never_granted.record_id, "access")
        assert stored.fields == fields and stored.version == 2


def test_read_under_grant_decrypts_and_audits_only_what_it_returns(
    served: tuple[RunningServer, Clock],
) -> None:
    """Issue 9, finding 4: the read decrypted every ticket of the subject and its audit
    entry named their fields, with an empty purpose."""
    server, _ = served
    with _client(server, "control-panel") as panel, _client(server, "support") as support:
        sid = panel.create_subject().subject_id
        ticket = panel.create_record(sid, "support", {"message": SECRET}, "customer")
        panel.create_record(sid, "support", {"subject_line": "older case", "channel": "phone"})
        panel.create_record(sid, "contact", {"email": "client@example.org"})
        panel.create_record(sid, "usage", {"page": "/billing"})  # not for purpose support
        grant = panel.grant_support_access(sid, ticket.record_id, 24)

        read = support.read_under_grant(sid, grant.grant_id)

    assert {r.category: r.fields for r in read} == {
        "support": {"message": SECRET},
        "contact": {"email": "client@example.org"},
    }
    entries = server.audit.audit.query(subject_id=sid)
    (entry,) = [e.event for e in entries if e.event.action == "SupportService.ReadUnderGrant"]
    assert set(entry.fields) == {"message", "email"}  # not the other ticket's fields
    assert set(entry.categories) == {"support", "contact"}
    assert (entry.caller, entry.outcome, entry.purpose) == ("support", "OK", "support")
