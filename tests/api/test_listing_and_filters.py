"""ListRecords past one page, and every filter of QueryAudit and ListRightsRequests,
through gRPC on SQLite + local keystore and PostgreSQL + the real OpenBao, with a clock
the test moves and two callers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from kms.base import KeyManager
from kms.local_keystore import LocalKeystore
from oubli_client import OubliClient
from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from tests.clock import FakeClock
from tests.stack import ALL_SERVICES, TEST_TOKEN, Stack, start_stack
from vault.access.authentication import Authenticator, token_hash
from vault.access.caller_policy import CallerPolicy, CallerRule

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
OTHER_CALLER = "second-admin"
OTHER_TOKEN = "second-admin-token-for-the-suite-only"
AUTH = (("authorization", f"Bearer {TEST_TOKEN}"),)


def two_callers() -> tuple[Authenticator, CallerPolicy]:
    """The suite's all-RPC caller and a second one, so the audit has two callers."""
    rules = {
        name: CallerRule(name, ALL_SERVICES, None, None) for name in ("test-admin", OTHER_CALLER)
    }
    tokens = {token_hash(TEST_TOKEN): "test-admin", token_hash(OTHER_TOKEN): OTHER_CALLER}
    return Authenticator(tokens), CallerPolicy(rules)


@pytest.fixture(params=["sqlite+local", "postgresql+vault"])
def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, FakeClock]]:
    """The ``stack`` fixture's two stacks, with a clock the test moves and two callers."""
    db, kms_name = request.param.split("+")
    url: str = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    kms: KeyManager = (
        LocalKeystore(tmp_path / "keystore.db")
        if kms_name == "local"
        else request.getfixturevalue("vault_kms")
    )
    clock = FakeClock(START)
    server, storage = start_stack(url, kms, two_callers(), clock=clock)
    client = OubliClient(f"127.0.0.1:{server.port}", timeout=10, token=TEST_TOKEN)
    yield Stack(server, client, kms, storage, url), clock
    client.close()
    server.stop(grace=0)


@pytest.fixture
def records_stub(clocked: tuple[Stack, FakeClock]) -> Iterator[pb_grpc.RecordServiceStub]:
    """The raw stub: the typed client pages through ListRecords by itself."""
    with grpc.insecure_channel(clocked[0].target) as channel:
        yield pb_grpc.RecordServiceStub(channel)


# --- ListRecords paging -----------------------------------------------------------


def pages(
    stub: pb_grpc.RecordServiceStub, subject_id: str, page_size: int, category: str = ""
) -> list[pb.ListRecordsResponse]:
    responses: list[pb.ListRecordsResponse] = []
    token = ""
    while True:
        response = stub.ListRecords(
            pb.ListRecordsRequest(
                subject_id=subject_id,
                category=category,
                page_size=page_size,
                page_token=token,
                purpose="billing",
            ),
            metadata=AUTH,
            timeout=10,
        )
        responses.append(response)
        token = response.next_page_token
        if not token:
            return responses
        assert len(responses) < 50, "paging does not end"


@pytest.mark.parametrize(
    ("page_size", "sizes"),
    [(1, [1] * 7), (3, [3, 3, 1]), (6, [6, 1]), (7, [7]), (100, [7])],
)
def test_list_records_pages_through_every_record_once(
    clocked: tuple[Stack, FakeClock],
    records_stub: pb_grpc.RecordServiceStub,
    page_size: int,
    sizes: list[int],
) -> None:
    client = clocked[0].client
    subject = client.create_subject().subject_id
    created = {
        client.create_record(subject, "billing", {"invoice_number": f"F-{n}"}).record_id
        for n in range(7)
    }
    responses = pages(records_stub, subject, page_size)
    assert [len(r.records) for r in responses] == sizes
    listed = [m.record_id for r in responses for m in r.records]
    assert len(listed) == len(set(listed)) == 7  # no duplicates
    assert set(listed) == created  # no gaps
    numbers = sorted(m.fields["invoice_number"] for r in responses for m in r.records)
    assert numbers == [f"F-{n}" for n in range(7)]
    # Each token is the last id of its page; the last page has none.
    for response in responses[:-1]:
        assert response.next_page_token == response.records[-1].record_id
    assert responses[-1].next_page_token == ""


def test_list_records_pages_within_one_category(
    clocked: tuple[Stack, FakeClock], records_stub: pb_grpc.RecordServiceStub
) -> None:
    client = clocked[0].client
    subject = client.create_subject().subject_id
    invoices = set()
    for n in range(5):
        invoices.add(
            client.create_record(subject, "billing", {"invoice_number": f"F-{n}"}).record_id
        )
        client.create_record(subject, "technical_logs", {"event": f"login {n}"}, "web")
    responses = pages(records_stub, subject, 2, category="billing")
    assert [len(r.records) for r in responses] == [2, 2, 1]
    listed = [m.record_id for r in responses for m in r.records]
    assert len(listed) == len(set(listed)) and set(listed) == invoices
    assert {m.category for r in responses for m in r.records} == {"billing"}


# --- QueryAudit filters -----------------------------------------------------------


def audit_history(stack: Stack, clock: FakeClock) -> tuple[str, str]:
    """test-admin works on subject A at START; an hour later the second caller works on
    subject B; an hour after that test-admin reads A. Returns (A, B)."""
    a = stack.client.create_subject().subject_id
    record = stack.client.create_record(a, "contact", {"email": "a@example.org"})
    clock.advance(hours=1)
    with OubliClient(stack.target, timeout=10, token=OTHER_TOKEN) as other:
        b = other.create_subject().subject_id
        other.create_record(b, "contact", {"email": "b@example.org"})
    clock.advance(hours=1)
    stack.client.get_record(a, record.record_id, "billing")
    return a, b


def test_query_audit_by_subject(clocked: tuple[Stack, FakeClock]) -> None:
    stack, clock = clocked
    a, b = audit_history(stack, clock)
    everything = stack.client.query_audit()
    assert {e.subject_id for e in everything} >= {a, b}
    of_a = stack.client.query_audit(subject_id=a)
    assert of_a and of_a == [e for e in everything if e.subject_id == a]
    assert {e.action for e in of_a} >= {"RecordService.CreateRecord", "RecordService.GetRecord"}
    assert {e.subject_id for e in stack.client.query_audit(subject_id=b)} == {b}


def test_query_audit_by_caller(clocked: tuple[Stack, FakeClock]) -> None:
    stack, clock = clocked
    a, b = audit_history(stack, clock)
    everything = stack.client.query_audit()
    by_other = stack.client.query_audit(caller=OTHER_CALLER)
    assert by_other == [e for e in everything if e.caller == OTHER_CALLER]
    assert {e.subject_id for e in by_other} >= {b} and a not in {e.subject_id for e in by_other}
    assert stack.client.query_audit(caller=OTHER_CALLER, subject_id=a) == []
    assert stack.client.query_audit(caller="nobody-here") == []


def test_query_audit_by_time(clocked: tuple[Stack, FakeClock]) -> None:
    stack, clock = clocked
    audit_history(stack, clock)
    hour = timedelta(hours=1)
    everything = stack.client.query_audit()
    assert {e.at for e in everything} == {START, START + hour, START + 2 * hour}
    # since is inclusive, until exclusive. (Each query is audited too, at START + 2h:
    # only the history the first query saw is compared.)
    last = everything[-1].seq
    since = [e for e in stack.client.query_audit(since=START + hour) if e.seq <= last]
    assert since == [e for e in everything if e.at >= START + hour]
    assert {e.at for e in since} == {START + hour, START + 2 * hour}
    until = stack.client.query_audit(until=START + hour)
    assert until == [e for e in everything if e.at < START + hour]
    assert {e.at for e in until} == {START}
    window = stack.client.query_audit(since=START + hour, until=START + 2 * hour)
    assert window and {(e.at, e.caller) for e in window} == {(START + hour, OTHER_CALLER)}
    assert stack.client.query_audit(since=START + 3 * hour) == []
    later = [e for e in stack.client.query_audit(since=START + hour) if e.seq > last]
    assert later and {e.action for e in later} == {"AuditService.QueryAudit"}


def test_query_audit_limit_keeps_the_oldest(clocked: tuple[Stack, FakeClock]) -> None:
    stack, clock = clocked
    a, _ = audit_history(stack, clock)
    everything = stack.client.query_audit()
    assert len(everything) > 3
    assert stack.client.query_audit(limit=3) == everything[:3]
    assert stack.client.query_audit(limit=1) == everything[:1]
    of_a = stack.client.query_audit(subject_id=a)
    assert stack.client.query_audit(subject_id=a, limit=2) == of_a[:2]


# --- ListRightsRequests filters ---------------------------------------------------


def test_list_rights_requests_filters(clocked: tuple[Stack, FakeClock]) -> None:
    stack, clock = clocked
    client = stack.client
    a = client.create_subject().subject_id
    b = client.create_subject().subject_id
    late_a = client.create_rights_request(a, "access").request_id
    late_b = client.create_rights_request(b, "erasure").request_id
    closed_a = client.create_rights_request(a, "portability").request_id
    client.close_rights_request(closed_a)
    clock.advance(days=31)  # past the 30-day deadlines of the three above
    fresh_a = client.create_rights_request(a, "rectification").request_id

    def ids(**filters: object) -> set[str]:
        return {r.request_id for r in client.list_rights_requests(**filters)}  # type: ignore[arg-type]

    assert ids() == {late_a, late_b, closed_a, fresh_a}
    assert ids(open_only=True) == {late_a, late_b, fresh_a}
    assert ids(overdue_only=True) == {late_a, late_b}
    assert ids(subject_id=a) == {late_a, closed_a, fresh_a}
    assert ids(subject_id=a, open_only=True) == {late_a, fresh_a}
    assert ids(subject_id=a, overdue_only=True) == {late_a}
    assert ids(subject_id=b, overdue_only=True) == {late_b}
    # Answered in time: nothing is overdue once the late ones are closed.
    client.close_rights_request(late_a)
    client.close_rights_request(late_b, "rejected")
    assert ids(overdue_only=True) == set()
    assert ids(open_only=True) == {fresh_a}
