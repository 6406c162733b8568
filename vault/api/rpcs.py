"""Every oubli RPC, declared once: does it change data, and what content may it return.

This table is the one answer to "which RPCs disclose field values, and under what
rule" (DESIGN.md promise 9). Everything that needs the answer derives from it instead of
keeping its own list:

- the interceptor (vault.api.interceptor): a read is audited once, before its response
  leaves; a change is also audited ``STARTED`` before it runs;
- the access report (vault.api.rights): the callers of content-disclosing RPCs are the
  data's recipients (``recipients_seen``);
- the caller policy (vault.access.caller_policy): RPC names are checked against this table, and a
  caller whose content is reached only under a support grant (``content =
  "under-grant"``) cannot be given any other RPC that returns field values.

tests/vault/api/test_rpcs.py checks that the table covers exactly the RPCs of
proto/oubli/v1/vault.proto, so an RPC cannot be added without being declared here; and
tests/api/test_content_disclosure.py checks, against a running server, that no caller
gets a value the table and the policies do not let it have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Content(StrEnum):
    """What of a subject's field values an RPC's response may carry."""

    #: Ids, states, counts, times and catalog names: never a field value.
    NONE = "none"
    #: The values the request itself carried, as stored (CreateRecord, UpdateRecord).
    #: Writes are bounded by the caller's ``categories``.
    AS_WRITTEN = "as-written"
    #: Stored values, as far as the purpose the request states (or the RPC's own, e.g.
    #: ``access`` for the access report) lets it read: the catalog's rules for the
    #: purpose and the subject, and the caller's ``categories`` and ``purposes``.
    BY_PURPOSE = "by-purpose"
    #: Stored values under a live support grant (the subject's consent for one ticket):
    #: the granted ticket and what purpose ``support`` may read (vault.usecases.support).
    UNDER_GRANT = "under-grant"

    @property
    def discloses(self) -> bool:
        """Stored values may leave in the response: whoever calls is a recipient."""
        return self in (Content.BY_PURPOSE, Content.UNDER_GRANT)


@dataclass(frozen=True, slots=True)
class Rpc:
    service: str
    method: str
    #: False for an RPC that only reads (audited once, before its response leaves).
    changes: bool
    content: Content

    @property
    def name(self) -> str:
        """``Service.Method``, as in the caller policy and the audit trail."""
        return f"{self.service}.{self.method}"


def _service(service: str, *rpcs: tuple[str, bool, Content]) -> list[Rpc]:
    return [Rpc(service, method, changes, content) for method, changes, content in rpcs]


_READ, _CHANGE = False, True

#: The table. FindSubject answers subject ids only, but an answer confirms that a
#: subject holds the value sought: it is read (and limited) like the content it matched.
#: RecordEvent re-encrypts the record under its retention bucket and answers metadata
#: only: starting a retention clock is not a read.
_TABLE = [
    *_service(
        "SubjectService",
        ("CreateSubject", _CHANGE, Content.NONE),
        ("GetSubject", _READ, Content.NONE),
        ("ShredSubject", _CHANGE, Content.NONE),
        ("ExportSubject", _READ, Content.BY_PURPOSE),
        ("CloseAccount", _CHANGE, Content.NONE),
        ("ReopenAccount", _CHANGE, Content.NONE),
        ("StreamExport", _READ, Content.BY_PURPOSE),
        ("BatchShredSubjects", _CHANGE, Content.NONE),
    ),
    *_service(
        "RecordService",
        ("CreateRecord", _CHANGE, Content.AS_WRITTEN),
        ("GetRecord", _READ, Content.BY_PURPOSE),
        ("ListRecords", _READ, Content.BY_PURPOSE),
        ("UpdateRecord", _CHANGE, Content.AS_WRITTEN),
        ("DeleteRecord", _CHANGE, Content.NONE),
        ("RecordEvent", _CHANGE, Content.NONE),
        # The stored records come back without their fields (see the proto).
        ("BatchCreateRecords", _CHANGE, Content.NONE),
        ("BatchGetRecords", _READ, Content.BY_PURPOSE),
    ),
    *_service(
        "RightsService",
        ("GetAccessReport", _READ, Content.BY_PURPOSE),
        ("RestrictProcessing", _CHANGE, Content.NONE),
        ("LiftRestriction", _CHANGE, Content.NONE),
        ("ObjectToPurpose", _CHANGE, Content.NONE),
        ("WithdrawObjection", _CHANGE, Content.NONE),
        ("GrantConsent", _CHANGE, Content.NONE),
        ("WithdrawConsent", _CHANGE, Content.NONE),
        ("CreateRightsRequest", _CHANGE, Content.NONE),
        ("CloseRightsRequest", _CHANGE, Content.NONE),
        ("ListRightsRequests", _READ, Content.NONE),
    ),
    *_service("RetentionService", ("RunRetention", _CHANGE, Content.NONE)),
    *_service(
        "AuditService",
        ("QueryAudit", _READ, Content.NONE),
        ("VerifyAudit", _READ, Content.NONE),
        ("ListAuditCheckpoints", _READ, Content.NONE),
    ),
    *_service("LookupService", ("FindSubject", _READ, Content.BY_PURPOSE)),
    *_service(
        "SupportService",
        ("GrantSupportAccess", _CHANGE, Content.NONE),
        ("RevokeSupportAccess", _CHANGE, Content.NONE),
        ("GetOverview", _READ, Content.NONE),
        ("ReadUnderGrant", _READ, Content.UNDER_GRANT),
    ),
    *_service(
        "KeyAdminService",
        ("RotateKeys", _CHANGE, Content.NONE),
        ("GetKeyAges", _READ, Content.NONE),
    ),
]

#: ``Service.Method`` -> its declaration.
RPCS: Mapping[str, Rpc] = MappingProxyType({rpc.name: rpc for rpc in _TABLE})
SERVICES = frozenset(rpc.service for rpc in _TABLE)

#: ``Service.Method`` of the RPCs that change nothing.
READ_ONLY = frozenset(name for name, rpc in RPCS.items() if not rpc.changes)
#: ``Service.Method`` of the changes made in one database transaction that never
#: destroys a key: their OK entry is written in that transaction (an audit ride,
#: vault.storage.audit_log.AuditRide) instead of a STARTED entry before and an outcome
#: after — one commit instead of three, and no change without its entry. Changes that
#: take several steps (an erasure destroys keys after its commit; a batch writes per
#: group) keep STARTED: their entry must exist before the first step.
AUDITED_IN_TRANSACTION = frozenset(
    {"SubjectService.CreateSubject", "RecordService.CreateRecord", "RecordService.RecordEvent"}
)
#: ``Service.Method`` of the RPCs whose responses may carry stored field values: their
#: callers are the data's recipients.
DISCLOSING = frozenset(name for name, rpc in RPCS.items() if rpc.content.discloses)


def declared(service: str, method: str) -> Rpc | None:
    """The declaration of ``Service.Method``; None for an RPC the table does not know
    (callable by no one: see vault.access.caller_policy)."""
    return RPCS.get(f"{service}.{method}")


def matching(pattern: str) -> list[Rpc]:
    """The declared RPCs a caller policy's ``Service.Method`` or ``Service.*`` names."""
    service, _, method = pattern.partition(".")
    return [
        rpc for rpc in _TABLE if rpc.service == service and (method == "*" or rpc.method == method)
    ]
