"""Support access with consent (vault.usecases.support, seed 002) on both databases.

In-memory KMS, fake clock. Without a grant support sees metadata only; with a live
grant (the subject's consent for one ticket) it reads what the catalog lets purpose
``support`` read; the grant ends on expiry, revocation, resolution of the ticket and
erasure of the subject.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.clock import FakeClock
from tests.memory_kms import InMemoryKeyManager
from vault.errors import (
    FailedPrecondition,
    GrantNotFound,
    InvalidArgument,
    PermissionDenied,
    RecordNotFound,
    SubjectNotFound,
    SubjectShredded,
)
from vault.storage import Storage
from vault.storage.tables import RecordRow, SupportGrantRow
from vault.usecases.erasure import Erasure
from vault.usecases.rights import RightsService
from vault.usecases.service import VaultService
from vault.usecases.support import SupportAccess

Builder = Callable[..., VaultService]
T0 = datetime(2026, 4, 1, 10, tzinfo=UTC)
UNKNOWN_ID = "aaaaaaaaaaaaaaaaaaaaaaaaaa"
#: Planted values: none may appear in an overview.
EMAIL = "grace.canary@example.org"
NAME = "Canarygrace"
MESSAGE = "my mailbox is slow since Tuesday, canary-7311"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def vault(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder, clock: FakeClock
) -> VaultService:
    return make_vault(storage, memory_kms, clock=clock)


@pytest.fixture
def support(vault: VaultService) -> SupportAccess:
    return SupportAccess(vault)


def customer(vault: VaultService, clock: FakeClock) -> tuple[str, str]:
    """A subject with identity, contact, usage, credentials and one open ticket;
    returns (subject id, ticket record id)."""
    subject_id = vault.create_subject().subject_id
    vault.create_record(subject_id, "identity", {"given_name": NAME}, "customer")
    vault.create_record(subject_id, "contact", {"email": EMAIL}, "customer")
    vault.create_record(subject_id, "credentials", {"username": "grace"}, "customer")
    clock.now = T0 + timedelta(minutes=10)
    vault.create_record(subject_id, "usage", {"page": "/mail"}, "control-panel")
    clock.now = T0 + timedelta(minutes=20)
    ticket = vault.create_record(
        subject_id, "support", {"subject_line": "slow", "message": MESSAGE}, "support"
    )
    clock.now = T0 + timedelta(hours=1)
    return subject_id, ticket.record_id


def test_overview_without_grant_is_metadata_only(
    vault: VaultService,
    support: SupportAccess,
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    clock: FakeClock,
) -> None:
    subject_id, _ = customer(vault, clock)
    vault.create_record(subject_id, "usage", {"page": "/billing"}, "control-panel")
    # A cold cache: reading content would need the KMS.
    vault.crypto.cache = type(vault.crypto.cache)()
    calls = memory_kms.calls

    overview = support.overview(subject_id)

    assert memory_kms.calls == calls  # nothing decrypted, no KMS call
    assert overview.subject_id == subject_id and overview.state == "active"
    assert overview.live_grants == ()
    by_category = {c.category: c for c in overview.categories}
    assert sorted(by_category) == ["contact", "credentials", "identity", "support", "usage"]
    assert overview.record_count == 6
    assert by_category["usage"].record_count == 2
    assert by_category["usage"].oldest_created_at == T0 + timedelta(minutes=10)
    assert by_category["usage"].newest_updated_at == T0 + timedelta(hours=1)
    assert by_category["identity"].oldest_created_at == T0
    with storage.engine.connect() as c:
        sizes = c.execute(
            select(RecordRow.category, RecordRow.ciphertext).where(
                RecordRow.subject_id == subject_id
            )
        ).all()
    for category, summary in by_category.items():
        expected = sum(len(blob) for name, blob in sizes if name == category)
        assert summary.ciphertext_bytes == expected > 0
    # No value, nor field name, anywhere in the overview.
    for text in (repr(overview), str(asdict(overview))):
        for planted in (EMAIL, NAME, MESSAGE, "grace", "/mail", "given_name", "email"):
            assert planted not in text


def test_overview_of_unknown_subject(support: SupportAccess) -> None:
    with pytest.raises(SubjectNotFound):
        support.overview(UNKNOWN_ID)


def test_without_grant_no_content(
    vault: VaultService, support: SupportAccess, clock: FakeClock
) -> None:
    subject_id, _ = customer(vault, clock)
    for grant_id in (UNKNOWN_ID, "not-an-id"):
        with pytest.raises((PermissionDenied, InvalidArgument)) as caught:
            support.read_under_grant(subject_id, grant_id)
        if isinstance(caught.value, PermissionDenied):
            assert caught.value.reason == "NO_LIVE_GRANT"
        else:
            assert caught.value.field == "grant_id"


def test_live_grant_reads_support_readable_records(
    vault: VaultService, support: SupportAccess, clock: FakeClock
) -> None:
    subject_id, ticket_id = customer(vault, clock)
    grant = support.grant(subject_id, ticket_id, 24, "control-panel")
    assert grant.subject_id == subject_id and grant.ticket_record_id == ticket_id
    assert grant.granted_by == "control-panel"
    assert grant.created_at == clock.now
    assert grant.expires_at == clock.now + timedelta(hours=24)
    assert grant.revoked_at is None and grant.ended_reason is None
    assert grant.status(clock.now) == "live"

    assert support.live_grant(subject_id, grant.grant_id) == grant
    records = support.read_under_grant(subject_id, grant.grant_id)
    # The catalog lets purpose "support" read identity, contact and support only.
    assert sorted(r.category for r in records) == ["contact", "identity", "support"]
    fields = {r.category: r.fields for r in records}
    assert fields["contact"] == {"email": EMAIL}
    assert fields["support"]["message"] == MESSAGE

    overview = support.overview(subject_id)
    assert [(g.grant_id, g.ticket_record_id, g.expires_at) for g in overview.live_grants] == [
        (grant.grant_id, ticket_id, grant.expires_at)
    ]
    assert MESSAGE not in repr(overview)


def test_grant_is_for_its_subject_only(
    vault: VaultService, support: SupportAccess, clock: FakeClock
) -> None:
    subject_id, ticket_id = customer(vault, clock)
    other_id, _ = customer(vault, clock)
    grant = support.grant(subject_id, ticket_id, 1, "control-panel")
    with pytest.raises(PermissionDenied) as caught:
        support.read_under_grant(other_id, grant.grant_id)
    assert caught.value.reason == "NO_LIVE_GRANT"
    assert support.overview(other_id).live_grants == ()
    # ... and the grant itself is untouched.
    assert support.live_grant(subject_id, grant.grant_id) == grant


def test_grant_expires(vault: VaultService, support: SupportAccess, clock: FakeClock) -> None:
    subject_id, ticket_id = customer(vault, clock)
    grant = support.grant(subject_id, ticket_id, 2, "control-panel")
    clock.now = grant.expires_at - timedelta(microseconds=1)
    assert support.read_under_grant(subject_id, grant.grant_id)
    clock.now = grant.expires_at
    with pytest.raises(PermissionDenied) as caught:
        support.read_under_grant(subject_id, grant.grant_id)
    assert caught.value.reason == "NO_LIVE_GRANT"
    assert support.get_grant(grant.grant_id).status(clock.now) == "expired"
    assert support.overview(subject_id).live_grants == ()
    with pytest.raises(FailedPrecondition) as ended:
        support.revoke(grant.grant_id)
    assert ended.value.reason == "GRANT_ENDED"


def test_grant_ends_when_the_ticket_is_resolved(
    vault: VaultService, support: SupportAccess, clock: FakeClock
) -> None:
    subject_id, ticket_id = customer(vault, clock)
    other_ticket = vault.create_record(subject_id, "support", {"message": "other"}, "support")
    grant = support.grant(subject_id, ticket_id, 72, "control-panel")
    other = support.grant(subject_id, other_ticket.record_id, 72, "control-panel")
    assert support.read_under_grant(subject_id, grant.grant_id)

    clock.now += timedelta(hours=1)
    vault.record_event(subject_id, ticket_id, "resolved")

    with pytest.raises(PermissionDenied) as caught:
        support.read_under_grant(subject_id, grant.grant_id)
    assert caught.value.reason == "NO_LIVE_GRANT"
    ended = support.get_grant(grant.grant_id)
    assert ended.ended_reason == "resolved" and ended.revoked_at is None
    assert ended.status(clock.now) == "resolved"
    # The grant for the other, open ticket is still live.
    assert [g.grant_id for g in support.overview(subject_id).live_grants] == [other.grant_id]
    assert support.read_under_grant(subject_id, other.grant_id)
    with pytest.raises(FailedPrecondition) as revoked:
        support.revoke(grant.grant_id)
    assert revoked.value.reason == "GRANT_ENDED"
    # No new grant for a resolved ticket.
    with pytest.raises(FailedPrecondition) as resolved:
        support.grant(subject_id, ticket_id, 1, "control-panel")
    assert resolved.value.reason == "TICKET_RESOLVED"


def test_resolution_is_noticed_by_the_overview(
    vault: VaultService, support: SupportAccess, clock: FakeClock
) -> None:
    subject_id, ticket_id = customer(vault, clock)
    grant = support.grant(subject_id, ticket_id, 72, "control-panel")
    vault.record_event(subject_id, ticket_id, "resolved")
    assert support.overview(subject_id).live_grants == ()
    assert support.get_grant(grant.grant_id).ended_reason == "resolved"


def test_deleting_the_ticket_ends_the_grant(
    vault: VaultService, support: SupportAccess, clock: FakeClock
) -> None:
    subject_id, ticket_id = customer(vault, clock)
    grant = support.grant(subject_id, ticket_id, 72, "control-panel")
    vault.delete_record(subject_id, ticket_id)
    with pytest.raises(PermissionDenied):
        support.live_grant(subject_id, grant.grant_id)
    assert support.get_grant(grant.grant_id).ended_reason == "resolved"


def test_revoke(vault: VaultService, support: SupportAccess, clock: FakeClock) -> None:
    subject_id, ticket_id = customer(vault, clock)
    grant = support.grant(subject_id, ticket_id, 72, "control-panel")
    clock.now += timedelta(minutes=30)
    revoked = support.revoke(grant.grant_id)
    assert revoked.revoked_at == clock.now and revoked.ended_reason == "revoked"
    assert revoked.status(clock.now) == "revoked"
    with pytest.raises(PermissionDenied) as caught:
        support.read_under_grant(subject_id, grant.grant_id)
    assert caught.value.reason == "NO_LIVE_GRANT"
    with pytest.raises(FailedPrecondition) as again:
        support.revoke(grant.grant_id)
    assert again.value.reason == "GRANT_ENDED"
    assert support.get_grant(grant.grant_id) == revoked  # unchanged by the second call
    with pytest.raises(GrantNotFound) as unknown:
        support.revoke(UNKNOWN_ID)
    assert unknown.value.reason == "GRANT_NOT_FOUND"
    with pytest.raises(InvalidArgument):
        support.revoke("x")


def test_grant_needs_a_support_record_of_the_subject(
    vault: VaultService, support: SupportAccess, clock: FakeClock
) -> None:
    subject_id, _ = customer(vault, clock)
    other_id, other_ticket = customer(vault, clock)
    contact = vault.list_records(subject_id, "contact", purpose="support").records[0]
    with pytest.raises(InvalidArgument) as caught:
        support.grant(subject_id, contact.record_id, 1, "control-panel")
    assert caught.value.field == "ticket_record_id"
    with pytest.raises(RecordNotFound):  # another subject's ticket: not this one's
        support.grant(subject_id, other_ticket, 1, "control-panel")
    with pytest.raises(RecordNotFound):
        support.grant(subject_id, UNKNOWN_ID, 1, "control-panel")
    with pytest.raises(SubjectNotFound):
        support.grant(UNKNOWN_ID, other_ticket, 1, "control-panel")
    for field, args in (
        ("subject_id", ("bad", other_ticket, 1, "control-panel")),
        ("ticket_record_id", (other_id, "bad", 1, "control-panel")),
        ("granted_by", (other_id, other_ticket, 1, "")),
        ("granted_by", (other_id, other_ticket, 1, "Control Panel")),
    ):
        with pytest.raises(InvalidArgument) as bad:
            support.grant(*args)  # type: ignore[arg-type]
        assert bad.value.field == field


@pytest.mark.parametrize("hours", [0, -1, 73, 10_000, True])
def test_hours_out_of_range(
    vault: VaultService, support: SupportAccess, clock: FakeClock, hours: int
) -> None:
    subject_id, ticket_id = customer(vault, clock)
    with pytest.raises(InvalidArgument) as caught:
        support.grant(subject_id, ticket_id, hours, "control-panel")
    assert caught.value.field == "hours"
    assert caught.value.metadata == {"field": "hours", "max_hours": "72"}


def test_max_grant_hours_is_configurable(
    vault: VaultService, clock: FakeClock, storage: Storage
) -> None:
    subject_id, ticket_id = customer(vault, clock)
    short = SupportAccess(vault, max_grant_hours=4)
    assert short.grant(subject_id, ticket_id, 4, "control-panel").expires_at == clock.now + (
        timedelta(hours=4)
    )
    with pytest.raises(InvalidArgument):
        short.grant(subject_id, ticket_id, 5, "control-panel")
    with pytest.raises(ValueError, match="max_grant_hours"):
        SupportAccess(vault, max_grant_hours=0)


def test_grants_for_an_erased_subject(
    vault: VaultService,
    support: SupportAccess,
    clock: FakeClock,
    storage: Storage,
    erasure: Erasure,
) -> None:
    subject_id, ticket_id = customer(vault, clock)
    grant = support.grant(subject_id, ticket_id, 72, "control-panel")
    erasure.shred(subject_id)

    with pytest.raises(SubjectShredded):
        support.grant(subject_id, ticket_id, 1, "control-panel")
    with pytest.raises(PermissionDenied) as caught:
        support.read_under_grant(subject_id, grant.grant_id)
    assert caught.value.reason == "NO_LIVE_GRANT"
    assert support.get_grant(grant.grant_id).ended_reason == "erased"
    overview = support.overview(subject_id)
    assert overview.state == "shredded"
    assert overview.categories == () and overview.live_grants == ()
    # The grant row names ids and caller names only: nothing to erase in it.
    with storage.engine.connect() as c:
        row = c.execute(select(SupportGrantRow)).one()
    assert EMAIL not in repr(row)


def test_restriction_still_applies_under_a_grant(
    vault: VaultService, support: SupportAccess, clock: FakeClock
) -> None:
    subject_id, ticket_id = customer(vault, clock)
    grant = support.grant(subject_id, ticket_id, 72, "control-panel")
    RightsService(vault).restrict(subject_id)
    with pytest.raises(PermissionDenied) as caught:
        support.read_under_grant(subject_id, grant.grant_id)
    assert caught.value.reason == "RESTRICTED"
    # Metadata stays visible.
    assert support.overview(subject_id).record_count == 5


def test_closed_account_can_still_grant(
    vault: VaultService, support: SupportAccess, clock: FakeClock
) -> None:
    subject_id, ticket_id = customer(vault, clock)
    vault.close_account(subject_id)
    grant = support.grant(subject_id, ticket_id, 1, "control-panel")
    assert support.overview(subject_id).state == "closed"
    assert len(support.read_under_grant(subject_id, grant.grant_id)) == 3
