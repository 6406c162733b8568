"""Support access with the customer's consent (seed 002).

Support sees a subject's *content* only under a **grant**: the subject's explicit
consent, recorded by the caller that collected it (the control panel), for one support
ticket (a record of the ``support`` category). A grant is live until the first of

- its expiry (``hours`` after it was given, at most ``max_grant_hours``),
- its revocation (:meth:`SupportAccess.revoke`),
- the resolution of its ticket: ``VaultService.record_event(..., "resolved")`` moves the
  ticket out of the subject key scheme into an expiry bucket (its retention clock
  starts), and the consent "ceases to be valid as soon as the problem is resolved",
- the subject's erasure.

Which categories support may then read is the catalog's business (purpose ``support``),
exactly as for any other read. Without a grant, support gets :meth:`SupportAccess.overview`:
the subject's state and, per category, counts, ciphertext sizes and dates, computed with
SQL aggregates: no decryption, no KMS call, never a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from vault.access import caller_scope
from vault.access.caller_policy import CALLER_NAME
from vault.errors import (
    FailedPrecondition,
    GrantNotFound,
    InvalidArgument,
    PermissionDenied,
    RecordNotFound,
)
from vault.ids import check_id, new_id
from vault.storage import StoredRecord
from vault.storage.support_grants import CategorySummary, StoredGrant
from vault.usecases.service import RecordView, VaultService
from vault.vocabulary import WRITABLE, KeyScheme, SubjectState

#: The catalog category a grant's ticket must belong to, and the purpose reads state.
SUPPORT_CATEGORY = "support"
SUPPORT_PURPOSE = "support"
DEFAULT_MAX_GRANT_HOURS = 72

LIVE = "live"
EXPIRED = "expired"
#: Values of ``ended_reason``: why a grant ended before its expiry.
REVOKED = "revoked"
RESOLVED = "resolved"
ERASED = "erased"


@dataclass(frozen=True, slots=True)
class Grant:
    """A subject's consent to support access for one ticket. Ids and times only."""

    grant_id: str
    subject_id: str
    ticket_record_id: str
    #: The caller that recorded the subject's consent, e.g. ``control-panel``.
    granted_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    #: None, or why it ended before ``expires_at``: revoked | resolved | erased.
    ended_reason: str | None = None

    def status(self, now: datetime) -> str:
        """``live``, ``expired``, or the ``ended_reason``.

        "live" here trusts the stored row: only :meth:`SupportAccess.live_grant` (and
        the methods built on it) also check the ticket and the subject right now.
        """
        if self.ended_reason is not None:
            return self.ended_reason
        return EXPIRED if now >= self.expires_at else LIVE


@dataclass(frozen=True, slots=True)
class GrantSummary:
    grant_id: str
    ticket_record_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Overview:
    """What support may always see of a subject: metadata, never a value."""

    subject_id: str
    state: SubjectState
    #: Categories holding at least one readable record, by name.
    categories: tuple[CategorySummary, ...]
    live_grants: tuple[GrantSummary, ...]

    @property
    def record_count(self) -> int:
        return sum(c.record_count for c in self.categories)


def _grant(stored: StoredGrant) -> Grant:
    return Grant(
        stored.grant_id,
        stored.subject_id,
        stored.ticket_record_id,
        stored.granted_by,
        stored.created_at,
        stored.expires_at,
        stored.revoked_at,
        stored.ended_reason,
    )


def _open_ticket(ticket: StoredRecord) -> bool:
    """Not resolved: resolution re-encrypts the ticket under an expiry bucket (its
    retention clock runs), out of the subject key scheme."""
    return ticket.key_scheme == KeyScheme.SUBJECT and ticket.retain_until is None


def _no_live_grant() -> PermissionDenied:
    # The same answer whatever the cause (unknown, another subject's, ended): a caller
    # cannot probe for other subjects' grants.
    return PermissionDenied("NO_LIVE_GRANT", "no live support grant for this subject")


class SupportAccess:
    """Consent grants for support, the metadata overview and reads under a grant.

    Args:
        vault: the domain service (its storage, catalog and clock are used).
        max_grant_hours: the longest a grant may last.
    """

    def __init__(self, vault: VaultService, max_grant_hours: int = DEFAULT_MAX_GRANT_HOURS) -> None:
        if max_grant_hours < 1:
            raise ValueError("max_grant_hours must be at least 1")
        self.vault = vault
        self.max_grant_hours = max_grant_hours

    # --- grants ---------------------------------------------------------------------

    def grant(self, subject_id: str, ticket_record_id: str, hours: int, granted_by: str) -> Grant:
        """Record the subject's consent that support reads its data for one ticket.

        Raises:
            InvalidArgument: a malformed id or ``granted_by``, ``hours`` outside
                1..max_grant_hours, or a ticket that is not a support record.
            SubjectNotFound, RecordNotFound: no such subject, or no such record of
                this subject (another subject's record is "not found").
            SubjectShredded: the subject was erased.
            FailedPrecondition: TICKET_RESOLVED, the ticket is resolved already.
        """
        check_id("subject_id", subject_id)
        check_id("ticket_record_id", ticket_record_id)
        if not isinstance(granted_by, str) or not CALLER_NAME.fullmatch(granted_by):
            raise InvalidArgument(
                "granted_by", "granted_by malformed: expected a caller name [a-z][a-z0-9-]{0,63}"
            )
        if (
            not isinstance(hours, int)
            or isinstance(hours, bool)
            or not 1 <= hours <= self.max_grant_hours
        ):
            raise InvalidArgument(
                "hours",
                f"hours must be between 1 and {self.max_grant_hours}",
                max_hours=str(self.max_grant_hours),
            )
        self.vault.writable_subject(subject_id)
        ticket = self.vault.storage.record(subject_id, ticket_record_id)
        if ticket is None:
            raise RecordNotFound("record not found", record_id=ticket_record_id)
        if ticket.category != SUPPORT_CATEGORY:
            raise InvalidArgument(
                "ticket_record_id", f"the ticket must be a record of category {SUPPORT_CATEGORY}"
            )
        if not _open_ticket(ticket):
            raise FailedPrecondition("TICKET_RESOLVED", "the ticket is resolved already")
        now = self.vault.clock()
        stored = StoredGrant(
            grant_id=new_id(),
            subject_id=subject_id,
            ticket_record_id=ticket_record_id,
            granted_by=granted_by,
            created_at=now,
            expires_at=now + timedelta(hours=hours),
            revoked_at=None,
            ended_reason=None,
        )
        self.vault.storage.insert_grant(stored)
        return _grant(stored)

    def get_grant(self, grant_id: str) -> Grant:
        """The grant as stored (see :meth:`Grant.status`); GrantNotFound if unknown."""
        check_id("grant_id", grant_id)
        stored = self.vault.storage.support_grant(grant_id)
        if stored is None:
            raise GrantNotFound("grant not found", grant_id=grant_id)
        return _grant(stored)

    def revoke(self, grant_id: str) -> Grant:
        """End a grant now (the subject withdrew its consent, or support is done).

        Raises:
            GrantNotFound: no such grant.
            FailedPrecondition: GRANT_ENDED, it had ended already (revoked, expired,
                ticket resolved, subject erased).
        """
        now = self.vault.clock()
        current = self._checked(self.get_grant(grant_id))
        ended = current.status(now) != LIVE
        if ended or not self.vault.storage.end_grant(grant_id, REVOKED, revoked_at=now):
            raise FailedPrecondition("GRANT_ENDED", "the grant has ended", grant_id=grant_id)
        return self.get_grant(grant_id)

    def live_grant(self, subject_id: str, grant_id: str) -> Grant:
        """The grant, if it is this subject's and live right now.

        Raises:
            InvalidArgument: a malformed id.
            PermissionDenied: NO_LIVE_GRANT, the grant is unknown, another subject's,
                revoked, expired, its ticket resolved or the subject erased.
        """
        check_id("subject_id", subject_id)
        check_id("grant_id", grant_id)
        stored = self.vault.storage.support_grant(grant_id)
        if stored is None or stored.subject_id != subject_id:
            raise _no_live_grant()
        checked = self._checked(_grant(stored))
        if checked.status(self.vault.clock()) != LIVE:
            raise _no_live_grant()
        return checked

    def grants(self, subject_id: str) -> list[Grant]:
        """Every grant of the subject, oldest first, with its ticket checked now."""
        check_id("subject_id", subject_id)
        return [self._checked(_grant(g)) for g in self.vault.storage.support_grants(subject_id)]

    def _checked(self, grant: Grant) -> Grant:
        """Mark a not-yet-ended grant whose ticket was resolved, or whose subject was
        erased, as ended; returns the grant as it now stands."""
        if grant.ended_reason is not None or grant.status(self.vault.clock()) != LIVE:
            return grant
        reason = self._ending(grant)
        if reason is None:
            return grant
        self.vault.storage.end_grant(grant.grant_id, reason)
        return self.get_grant(grant.grant_id)

    def _ending(self, grant: Grant) -> str | None:
        info = self.vault.storage.subject(grant.subject_id)
        if info.state not in WRITABLE:
            return ERASED
        ticket = self.vault.storage.record(grant.subject_id, grant.ticket_record_id)
        # Resolution re-encrypts the ticket under an expiry bucket (its retention clock
        # runs): it leaves the subject key scheme. A deleted ticket ends the case too.
        if ticket is None or not _open_ticket(ticket):
            return RESOLVED
        return None

    # --- what support sees ----------------------------------------------------------

    def overview(self, subject_id: str) -> Overview:
        """Metadata only: state, per category counts, sizes and dates, live grants.

        SQL aggregates over the records' rows: nothing is decrypted, the KMS is not
        called, and no field value (nor field name) is read.

        Raises:
            SubjectNotFound: no such subject.
        """
        info = self.vault.subject_info(subject_id)
        categories = tuple(self.vault.storage.category_summaries(subject_id))
        live: Sequence[Grant] = ()
        if info.state in WRITABLE:
            now = self.vault.clock()
            live = [g for g in self.grants(subject_id) if g.status(now) == LIVE]
        return Overview(
            subject_id,
            info.state,
            categories,
            tuple(GrantSummary(g.grant_id, g.ticket_record_id, g.expires_at) for g in live),
        )

    def read_under_grant(self, subject_id: str, grant_id: str) -> list[RecordView]:
        """The granted ticket and the subject's profile, under a live grant.

        The consent is for one case (seed 002): of the support category only the granted
        ticket is read, never the subject's other tickets; of the rest, what the catalog
        lets purpose ``support`` read (identity, contact). The caller's own policy, when
        one is bound, and the subject's restriction still apply. Only the records
        returned are read from the database and decrypted, so the call's audit entry
        (purpose ``support``) names exactly the categories and fields it returned.

        Raises:
            PermissionDenied: NO_LIVE_GRANT (see :meth:`live_grant`), or a catalog
                rule such as RESTRICTED.
        """
        grant = self.live_grant(subject_id, grant_id)
        info = self.vault.subject_info(subject_id)
        readable = self.vault.readable(info, SUPPORT_PURPOSE, "")
        profile = [c for c in readable if c != SUPPORT_CATEGORY]
        stored = list(self.vault.storage.records(subject_id, categories=profile)) if profile else []
        if SUPPORT_CATEGORY in readable:
            ticket = self.vault.storage.record(subject_id, grant.ticket_record_id)
            # Only as the grant found it: a ticket resolved since has ended the case.
            if ticket is not None and _open_ticket(ticket):
                stored.append(ticket)
        caller_scope.note_purpose(SUPPORT_PURPOSE)
        return [
            self.vault.open_record(info, record)
            for record in sorted(stored, key=lambda r: r.record_id)
        ]
