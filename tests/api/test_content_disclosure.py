"""Adversarial suite: no caller gets a field value the policies do not give it.

Derived, not hand-listed: the RPCs come from the proto descriptors, what each may return
from the RPC table (vault/api/rpcs.py), the callers from the shipped caller policy (plus two
made-up ones: a by-purpose caller limited to two categories, and an under-grant caller
limited to tickets), categories and purposes from the shipped catalog. Every call goes
through a real server (SQLite + local keystore; PostgreSQL + real OpenBao).

Every field value the suite plants is unique, so a value found anywhere in a response
(message, JSON document, error message or trailing metadata) names the record it came
from. For each call the suite computes, from the policies alone, which records the
caller may get, and checks that it gets exactly those (a read) or none (everything
else):

- by purpose (GetRecord, BatchGetRecords, ListRecords, ExportSubject, StreamExport,
  GetAccessReport, FindSubject): the caller may call the RPC, the category is in its
  ``categories``, the purpose in its ``purposes``, and the catalog lets the purpose read
  the category;
- under a grant (ReadUnderGrant): the same for purpose ``support``, and only while the
  grant is live (never granted, another subject's, revoked, expired, ticket resolved:
  nothing), of the support category only the granted ticket;
- every other RPC of the proto, for every caller: no stored value at all (RecordEvent
  answered the decrypted ticket before issue 9; CreateRecord and UpdateRecord answer the
  values the request carried, never stored ones).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from kms.base import KeyManager
from kms.local_keystore import LocalKeystore
from oubli_client import OubliClient
from oubli_client.v1 import vault_pb2 as pb
from tests.clock import FakeClock
from tests.stack import ALL_SERVICES, start_stack
from vault.access.authentication import Authenticator, token_hash
from vault.access.caller_policy import CallerPolicy, CallerRule
from vault.api.rpcs import RPCS, SERVICES, Content
from vault.catalog import Catalog

CATALOG = Catalog.load()
SHIPPED = CallerPolicy.load()
#: Callers the shipped policy does not have, to reach corners it does not: a by-purpose
#: caller of every RPC limited to two categories, and an under-grant caller limited to
#: tickets.
MADE_UP = {
    "narrow": CallerRule(
        "narrow",
        frozenset(f"{service}.*" for service in SERVICES),
        frozenset({"contact", "billing"}),
        frozenset({"service", "billing", "access", "portability"}),
    ),
    "helpdesk": CallerRule(
        "helpdesk",
        frozenset(
            {
                "SubjectService.GetSubject",
                "SupportService.GetOverview",
                "SupportService.ReadUnderGrant",
                "RecordService.RecordEvent",
            }
        ),
        frozenset({"support"}),
        frozenset({"support"}),
        Content.UNDER_GRANT,
    ),
}
ADMIN = "test-admin"
POLICY = CallerPolicy(
    {**SHIPPED.callers, **MADE_UP, ADMIN: CallerRule(ADMIN, ALL_SERVICES, None, None)}
)
CALLERS = sorted({*SHIPPED.callers, *MADE_UP})
TOKENS = {name: f"token-of-{name}-{secrets.token_hex(4)}" for name in POLICY.callers}

METHODS: dict[str, MethodDescriptor] = {
    f"{service.name}.{method.name}": method
    for service in pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}
CONSENTS = sorted(
    {c.consent for c in CATALOG.categories.values() if c.consent}
    | {p.consent for p in CATALOG.purposes.values() if p.consent}
)
SUPPORT = "support"


def _may_read(caller: str, category: str, purpose: str) -> bool:
    """The caller's limits and the catalog's rules for a subject that granted every
    consent, objected to nothing and is not restricted."""
    rule = POLICY.callers[caller]
    return (
        (rule.categories is None or category in rule.categories)
        and (rule.purposes is None or purpose in rule.purposes)
        and (
            CATALOG.purposes[purpose].subject_right
            or purpose in CATALOG.categories[category].purposes
        )
    )


def _may_call(caller: str, rpc: str) -> bool:
    return POLICY.callers[caller].may_call(*rpc.split("."))


# --- planting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Planted:
    subject_id: str
    record_id: str
    category: str


@dataclass
class World:
    target: str
    channel: grpc.Channel
    admin: OubliClient
    clock: FakeClock
    #: planted value -> the record holding it (every subject)
    owner: dict[str, Planted] = field(default_factory=dict)
    #: record id -> the record (every subject)
    records: dict[str, Planted] = field(default_factory=dict)

    def plant(self, subject_id: str, category: str, **fixed: str) -> Planted:
        spec = CATALOG.categories[category]
        values = {name: fixed.get(name) or f"v{secrets.token_hex(8)}" for name in spec.fields}
        record = self.admin.create_record(subject_id, category, values, "customer")
        planted = Planted(subject_id, record.record_id, category)
        self.records[record.record_id] = planted
        for value in values.values():
            self.owner[value] = planted
        return planted

    def subject(self) -> str:
        subject_id = self.admin.create_subject().subject_id
        for consent in CONSENTS:
            self.admin.grant_consent(subject_id, consent)
        return subject_id

    def of(self, subject_id: str) -> list[Planted]:
        return [r for r in self.records.values() if r.subject_id == subject_id]


@pytest.fixture(params=["sqlite+local", "postgresql+vault"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    db, kms_name = request.param.split("+")
    url: str = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    kms: KeyManager = (
        LocalKeystore(tmp_path / "keystore.db")
        if kms_name == "local"
        else request.getfixturevalue("vault_kms")
    )
    clock = FakeClock(datetime(2026, 5, 1, 9, tzinfo=UTC))
    auth = Authenticator({token_hash(t): name for name, t in TOKENS.items()}), POLICY
    server, _ = start_stack(url, kms, auth, clock=clock)
    target = f"127.0.0.1:{server.port}"
    with (
        grpc.insecure_channel(target) as channel,
        OubliClient(target, token=TOKENS[ADMIN], max_attempts=1) as admin,
    ):
        yield World(target, channel, admin, clock)
    server.stop(grace=0)


# --- calling and reading responses ------------------------------------------------------


@dataclass
class Answer:
    messages: list[Any]  # the RPC's response messages
    error: grpc.RpcError | None

    def raw(self) -> bytes:
        """Every byte the caller got: messages, or the error's text and trailers."""
        if self.error is None:
            return b"".join(m.SerializeToString() for m in self.messages)
        parts = [(self.error.details() or "").encode()]
        error: Any = self.error  # a grpc.Call too: it has trailing metadata
        for _, value in error.trailing_metadata() or ():
            parts.append(value if isinstance(value, bytes) else value.encode())
        return b"\0".join(parts)


def _call(world: World, caller: str, rpc: str, request: Message) -> Answer:
    method = METHODS[rpc]
    output = getattr(pb, method.output_type.name)
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = (("authorization", f"Bearer {TOKENS[caller]}"),)
    try:
        if method.server_streaming:
            stream = world.channel.unary_stream(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=output.FromString,
            )
            return Answer(list(stream(request, timeout=30, metadata=metadata)), None)
        unary = world.channel.unary_unary(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=output.FromString,
        )
        return Answer([unary(request, timeout=30, metadata=metadata)], None)
    except grpc.RpcError as error:
        return Answer([], error)


def _is_map(descriptor: Any) -> bool:
    return descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry


def _json_records(document: bytes) -> set[str]:
    """Record ids with non-empty fields in an export or access report document."""
    parsed: dict[str, Any] = json.loads(document)
    return {
        record["record_id"]
        for category in parsed.get("categories", {}).values()
        for record in category.get("records", [])
        if record.get("fields")
    }


def _with_values(answer: Answer) -> set[str]:
    """Record ids the response carries non-empty ``fields`` of, anywhere in it."""
    found: set[str] = set()

    def walk(message: Message) -> None:
        for descriptor, value in message.ListFields():
            if descriptor.name == "fields" and _is_map(descriptor):
                if value:
                    found.add(getattr(message, "record_id", "") or "<no record id>")
            elif descriptor.name == "json" and descriptor.type == FieldDescriptor.TYPE_BYTES:
                found.update(_json_records(value))
            elif descriptor.message_type is not None and not _is_map(descriptor):
                repeated = descriptor.is_repeated
                for item in value if repeated else [value]:
                    walk(item)

    for message in answer.messages:
        walk(message)
    chunks = b"".join(getattr(m, "chunk", b"") for m in answer.messages)
    if chunks:  # StreamExport: the chunks joined are one document
        found.update(_json_records(chunks))
    return found


def _planted_in(world: World, answer: Answer) -> set[str]:
    """Record ids whose planted values appear anywhere in what the caller got."""
    raw = answer.raw()
    return {p.record_id for value, p in world.owner.items() if value.encode() in raw}


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)
    calls: int = 0

    def check(
        self,
        world: World,
        caller: str,
        rpc: str,
        what: str,
        answer: Answer,
        expected: set[str],
        *,
        exact: bool = True,
        echoes: bool = False,
    ) -> None:
        """``expected``: the records whose values the caller may get (``exact``: and
        must get, since the call is one it may make). ``echoes``: a write, whose answer
        carries the values it was sent (never a planted one)."""
        self.calls += 1
        carried = set() if echoes else _with_values(answer)
        seen = _planted_in(world, answer)
        extra = (carried | seen) - expected
        missing = (expected - carried) | (expected - seen) if exact else set()
        if extra or missing:
            code = answer.error.code().name if answer.error else "OK"
            self.failures.append(
                f"{caller} {rpc}({what}) -> {code}: "
                f"values of {sorted(self.name(world, r) for r in extra)} it may not have"
                + (f"; missing {sorted(self.name(world, r) for r in missing)}" if missing else "")
            )

    @staticmethod
    def name(world: World, record_id: str) -> str:
        planted = world.records.get(record_id)
        return f"{planted.category}:{record_id[:6]}" if planted else record_id

    def assert_none(self) -> None:
        assert not self.failures, f"{len(self.failures)} of {self.calls} calls:\n" + "\n".join(
            self.failures[:40]
        )


# --- reads by purpose -------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One read by purpose: the request, and the planted records it asks for."""

    what: str
    request: Message
    asks: tuple[Planted, ...]
    purpose: str
    #: FindSubject answers ids: the subject it should find when the read is allowed.
    finds: str = ""


def _probes(
    subject_id: str, records: Sequence[Planted], email: str, purpose: str
) -> dict[str, list[Probe]]:
    """Requests for every BY_PURPOSE RPC of the table, for one purpose."""
    everything = tuple(records)
    contact = tuple(r for r in records if r.category == "contact")
    lists = [
        Probe(
            f"{category or '*'}, {purpose}",
            pb.ListRecordsRequest(
                subject_id=subject_id, category=category, purpose=purpose, page_size=500
            ),
            tuple(r for r in records if category in ("", r.category)),
            purpose,
        )
        for category in ["", *sorted(CATALOG.categories)]
    ]
    return {
        "RecordService.GetRecord": [
            Probe(
                f"{r.category}, {purpose}",
                pb.GetRecordRequest(subject_id=subject_id, record_id=r.record_id, purpose=purpose),
                (r,),
                purpose,
            )
            for r in records
        ],
        "RecordService.BatchGetRecords": [
            Probe(
                purpose,
                pb.BatchGetRecordsRequest(
                    requests=[
                        pb.GetRecordRequest(
                            subject_id=subject_id, record_id=r.record_id, purpose=purpose
                        )
                        for r in records
                    ]
                ),
                everything,
                purpose,
            )
        ],
        "RecordService.ListRecords": lists,
        "SubjectService.ExportSubject": [
            Probe(
                purpose,
                pb.ExportSubjectRequest(subject_id=subject_id, purpose=purpose),
                everything,
                purpose,
            )
        ],
        "SubjectService.StreamExport": [
            Probe(
                purpose,
                pb.StreamExportRequest(subject_id=subject_id, purpose=purpose),
                everything,
                purpose,
            )
        ],
        # The access report reads for "access", whatever the caller would state.
        "RightsService.GetAccessReport": [
            Probe("", pb.GetAccessReportRequest(subject_id=subject_id), everything, "access")
        ],
        "LookupService.FindSubject": [
            Probe(
                purpose,
                pb.FindSubjectRequest(email=email, purpose=purpose),
                contact,
                purpose,
                subject_id,
            )
        ],
    }


def test_reads_by_purpose_disclose_exactly_what_caller_and_catalog_allow(world: World) -> None:
    subject_id = world.subject()
    email = f"p{secrets.token_hex(6)}@example.org"
    for category in sorted(CATALOG.categories):
        world.plant(subject_id, category, **({"email": email} if category == "contact" else {}))
    world.plant(subject_id, SUPPORT)  # a second ticket
    records = world.of(subject_id)
    by_purpose = {name for name, rpc in RPCS.items() if rpc.content is Content.BY_PURPOSE}
    findings = Findings()
    for purpose in sorted(CATALOG.purposes):
        probes = _probes(subject_id, records, email, purpose)
        # A new read by purpose in the table needs its probe here.
        assert set(probes) == by_purpose
        for rpc, rpc_probes in probes.items():
            if purpose != "access" and rpc == "RightsService.GetAccessReport":
                continue  # the same request whatever the purpose: once is enough
            for caller in CALLERS:
                for probe in rpc_probes if _may_call(caller, rpc) else rpc_probes[:1]:
                    expected = {
                        r.record_id
                        for r in probe.asks
                        if _may_call(caller, rpc) and _may_read(caller, r.category, probe.purpose)
                    }
                    answer = _call(world, caller, rpc, probe.request)
                    if not probe.finds:
                        findings.check(world, caller, rpc, probe.what, answer, expected)
                        continue
                    findings.check(world, caller, rpc, probe.what, answer, set())  # ids only
                    ids = [i for m in answer.messages for i in getattr(m, "subject_ids", ())]
                    if ids != ([probe.finds] if expected else []):
                        findings.failures.append(f"{caller} {rpc}({probe.what}) -> {ids}")
    findings.assert_none()


# --- reads under a support grant --------------------------------------------------------


def test_content_under_a_grant_only_while_it_is_live(world: World) -> None:
    """Support, and any caller, gets no value without a live grant: never granted,
    another subject's grant, revoked, expired, ticket resolved."""
    subject_id = world.subject()
    for category in sorted(CATALOG.categories):
        if category != SUPPORT:
            world.plant(subject_id, category)
    tickets = {
        name: world.plant(subject_id, SUPPORT)
        for name in ("live", "other", "revoked", "expired", "resolved")
    }
    other_subject = world.subject()
    other_ticket = world.plant(other_subject, SUPPORT)
    world.plant(other_subject, "contact")

    admin = world.admin
    expired = admin.grant_support_access(subject_id, tickets["expired"].record_id, 1)
    world.clock.advance(hours=2)
    live = admin.grant_support_access(subject_id, tickets["live"].record_id, 24)
    revoked = admin.grant_support_access(subject_id, tickets["revoked"].record_id, 24)
    admin.revoke_support_access(revoked.grant_id)
    resolved = admin.grant_support_access(subject_id, tickets["resolved"].record_id, 24)
    admin.record_event(subject_id, tickets["resolved"].record_id, "resolved")
    elsewhere = admin.grant_support_access(other_subject, other_ticket.record_id, 24)

    cases = {
        "live grant": (subject_id, live.grant_id),
        "never granted": (subject_id, "a" * 26),
        "another subject's grant": (subject_id, elsewhere.grant_id),
        "grant named for another subject": (other_subject, live.grant_id),
        "revoked": (subject_id, revoked.grant_id),
        "expired": (subject_id, expired.grant_id),
        "ticket resolved": (subject_id, resolved.grant_id),
    }
    rpc = "SupportService.ReadUnderGrant"
    # A new grant-bound RPC in the table needs its cases here.
    assert {n for n, r in RPCS.items() if r.content is Content.UNDER_GRANT} == {rpc}
    findings = Findings()
    for caller in CALLERS:
        for case, (asked, grant_id) in cases.items():
            # Exact: under the live grant, support must get the case, and only it.
            expected: set[str] = set()
            if case == "live grant" and _may_call(caller, rpc):
                expected = {
                    r.record_id
                    for r in world.of(subject_id)
                    if _may_read(caller, r.category, SUPPORT)
                    and (r.category != SUPPORT or r == tickets["live"])
                }
            request = pb.ReadUnderGrantRequest(subject_id=asked, grant_id=grant_id)
            findings.check(world, caller, rpc, case, _call(world, caller, rpc, request), expected)
    findings.assert_none()


# --- everything else: writes and metadata ------------------------------------------------

#: Run last: they erase the subject or its records.
_LAST = ("SubjectService.ShredSubject", "SubjectService.BatchShredSubjects")


def _generic(method: MethodDescriptor, values: dict[str, Any]) -> Message:
    """A well-formed request for any RPC, its fields filled by name."""
    message: Message = getattr(pb, method.input_type.name)()
    for name, descriptor in message.DESCRIPTOR.fields_by_name.items():
        if name not in values:
            continue
        value = values[name]
        if descriptor.enum_type is not None and isinstance(value, str):
            continue  # a string "kind" of another request; an enum here (RotateKeys)
        if _is_map(descriptor):
            getattr(message, name).update(value)
        elif descriptor.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def test_no_other_rpc_returns_a_stored_value(world: World) -> None:
    """Every RPC of the proto that is not a read by purpose or under a grant, for every
    caller: writes answer at most the values they were sent; RecordEvent, batch creates
    and the metadata RPCs no value at all."""
    findings = Findings()
    others = sorted(
        (name for name in METHODS if not RPCS[name].content.discloses),
        key=lambda name: (name in _LAST, RPCS[name].changes, name),
    )
    for caller in CALLERS:
        subject_id = world.subject()
        records = {c: world.plant(subject_id, c) for c in sorted(CATALOG.categories)}
        ticket, to_resolve = world.plant(subject_id, SUPPORT), world.plant(subject_id, SUPPORT)
        grant = world.admin.grant_support_access(subject_id, ticket.record_id, 24)
        rights = world.admin.create_rights_request(subject_id, "access")
        written = f"w{secrets.token_hex(8)}"

        # RecordEvent resolves a ticket: metadata only, whoever calls.
        rpc = "RecordService.RecordEvent"
        event = pb.RecordEventRequest(
            subject_id=subject_id, record_id=to_resolve.record_id, event="resolved"
        )
        findings.check(world, caller, rpc, "resolved", _call(world, caller, rpc, event), set())

        # Writes answer what they were sent, never what was stored; only in the
        # caller's categories.
        for category, record in records.items():
            first = sorted(CATALOG.categories[category].fields)[0]
            for rpc, request in (
                (
                    "RecordService.CreateRecord",
                    pb.CreateRecordRequest(
                        subject_id=subject_id,
                        category=category,
                        fields={first: written},
                        origin="customer",
                    ),
                ),
                (
                    "RecordService.UpdateRecord",
                    pb.UpdateRecordRequest(
                        subject_id=subject_id,
                        record_id=record.record_id,
                        fields={first: written},
                        expected_version=1,
                    ),
                ),
            ):
                answer = _call(world, caller, rpc, request)
                findings.check(world, caller, rpc, category, answer, set(), echoes=True)
                rule = POLICY.callers[caller]
                wrote = any(m.record.fields for m in answer.messages)
                if wrote and not (
                    _may_call(caller, rpc)
                    and (rule.categories is None or category in rule.categories)
                ):
                    findings.failures.append(
                        f"{caller} {rpc}({category}) wrote outside its categories"
                    )

        values: dict[str, Any] = {
            "subject_id": subject_id,
            "subject_ids": [subject_id],
            "record_id": ticket.record_id,
            "ticket_record_id": ticket.record_id,
            "grant_id": grant.grant_id,
            "request_id": rights.request_id,
            "purpose": SUPPORT,
            "consent": "marketing",
            "kind": "access",
            "event": "resolved",
            "category": SUPPORT,
            "fields": {"message": written},
            "origin": "customer",
            "hours": 1,
            "dry_run": True,
            "requests": [
                pb.CreateRecordRequest(
                    subject_id=subject_id, category="usage", fields={"page": written}, origin="web"
                )
            ],
        }
        for rpc in others:
            answer = _call(world, caller, rpc, _generic(METHODS[rpc], values))
            echoes = RPCS[rpc].content is Content.AS_WRITTEN
            findings.check(world, caller, rpc, "generic", answer, set(), echoes=echoes)
    findings.assert_none()
