"""Batch put, get and shred, and the streamed export, end to end: a real gRPC server and
the Python client, on SQLite + local keystore and on PostgreSQL + real OpenBao (the
``stack`` fixture). Two tests serve the in-memory KMS on SQLite instead: one switches the
KMS off mid-batch, the other serves a restricted caller policy.

The domain rules of the batches are unit-tested in tests/vault/usecases/test_batches.py; here: what
goes over the wire (statuses, ErrorInfo, per-item errors, chunks) and what the audit
trail records for each subject a batch touches. Which default caller may call the new
RPCs is covered by tests/api/test_authorization.py (it walks every RPC of the proto).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from oubli_client import (
    BATCH_MAX,
    AuditEntry,
    BatchIncomplete,
    NewRecord,
    OubliClient,
    Record,
    ShredReceipt,
)
from oubli_client.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    OubliClientError,
    PermissionDenied,
)
from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from tests.audit_tables import audit_dump
from tests.memory_kms import InMemoryKeyManager
from tests.stack import TEST_TOKEN, Stack, vault_service
from vault.access.authentication import Authenticator, token_hash
from vault.access.caller_policy import CallerPolicy
from vault.app.config import ServerConfig
from vault.app.server import start_server
from vault.storage import Storage, make_engine, migrate
from vault.usecases.batches import MAX_BATCH_ITEMS
from vault.usecases.export import EXPORT_PAGE

AUTH = (("authorization", f"Bearer {TEST_TOKEN}"),)
CANARY = "canary-bulk-7f3a@example.org"
CALLER = "test-admin"
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def _fake_id(n: int) -> str:
    """A well-formed subject/record id that no server made (distinct for each n)."""
    return "".join(_BASE32[(n >> (5 * k)) & 31] for k in range(26))


@pytest.fixture
def stubs(stack: Stack) -> Iterator[tuple[pb_grpc.SubjectServiceStub, pb_grpc.RecordServiceStub]]:
    """Raw stubs, for what the typed client does not expose (ErrorInfo metadata, the
    chunks' record_count)."""
    with grpc.insecure_channel(
        stack.target, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    ) as channel:
        yield pb_grpc.SubjectServiceStub(channel), pb_grpc.RecordServiceStub(channel)


def _details(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, str]:
    """The status's ErrorInfo and its BadRequest field ("" when none)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "every oubli error carries google.rpc details"
    info, field = error_details_pb2.ErrorInfo(), ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field = bad.field_violations[0].field
    return info, field


def _raw_create(stub: pb_grpc.RecordServiceStub, items: list[NewRecord]) -> grpc.RpcError:
    """Send a batch put that must fail; the raw error, with its trailers."""
    request = pb.BatchCreateRecordsRequest(
        requests=[
            pb.CreateRecordRequest(
                subject_id=i.subject_id, category=i.category, fields=dict(i.fields), origin=i.origin
            )
            for i in items
        ]
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.BatchCreateRecords(request, metadata=AUTH, timeout=30)
    return raised.value


def _batch_entries(client: OubliClient, subject_id: str, action: str) -> list[AuditEntry]:
    return [e for e in client.query_audit(subject_id=subject_id) if e.action == action]


def _same(record: Record) -> tuple[object, ...]:
    return (
        record.subject_id,
        record.record_id,
        record.category,
        record.fields,
        record.version,
        record.origin,
        record.created_at,
    )


def _subject_with_records(client: OubliClient) -> str:
    subject_id = client.create_subject().subject_id
    client.create_record(subject_id, "support", {"message": "ticket"})
    return subject_id


# --- BatchCreateRecords / BatchGetRecords -------------------------------------------------


def test_batch_put_then_batch_get_round_trip_across_subjects(stack: Stack) -> None:
    client = stack.client
    subjects = [client.create_subject().subject_id for _ in range(3)]
    items = [
        NewRecord(subjects[i % 3], "support", {"message": f"ticket {i} — é"}, "bench")
        for i in range(12)
    ] + [
        NewRecord(s, "contact", {"email": f"p{n}@example.org", "city": "Lyon"})
        for n, s in enumerate(subjects)
    ]

    created = client.batch_create_records(items)

    assert [(r.subject_id, r.category, r.fields, r.origin) for r in created] == [
        (i.subject_id, i.category, dict(i.fields), i.origin) for i in items
    ]
    assert all(r.version == 1 for r in created)
    assert len({r.record_id for r in created}) == len(items)
    # Read back in another order, each with a purpose its category allows: same records,
    # in request order.
    wanted = list(reversed(created))
    purposes = {"support": "support", "contact": "service"}
    got = client.batch_get_records(
        [(r.subject_id, r.record_id, purposes[r.category]) for r in wanted]
    )
    assert all(isinstance(g, Record) for g in got)
    assert [_same(g) for g in got] == [_same(r) for r in wanted]  # type: ignore[arg-type]
    # the unary calls see the same data
    one = client.get_record(created[4].subject_id, created[4].record_id, "support")
    assert _same(one) == _same(created[4])
    for subject_id in subjects:
        assert client.get_subject(subject_id).record_count == 5
        assert len(client.list_records(subject_id, "support", purpose="support")) == 4


def test_batch_put_is_all_or_nothing(
    stack: Stack, stubs: tuple[pb_grpc.SubjectServiceStub, pb_grpc.RecordServiceStub]
) -> None:
    client = stack.client
    alive = client.create_subject().subject_id
    erased = client.create_subject().subject_id
    client.shred_subject(erased)
    batch = [
        NewRecord(alive, "support", {"message": "first"}),
        NewRecord(erased, "support", {"message": "second"}),
        NewRecord(alive, "contact", {"email": "alive@example.org"}),
    ]

    with pytest.raises(NotFound) as refused:
        client.batch_create_records(batch)

    assert refused.value.reason == "SUBJECT_SHREDDED"
    info, _ = _details(_raw_create(stubs[1], batch))
    assert info.reason == "SUBJECT_SHREDDED"
    assert dict(info.metadata) == {"subject_id": erased, "index": "1"}
    # nothing of the batch was stored, not even the items before the failing one
    assert client.list_records(alive, purpose="service") == []
    assert client.get_subject(alive).record_count == 0
    assert client.find_subject(email="alive@example.org", purpose="service") == []

    unknown = _fake_id(7)
    with pytest.raises(NotFound) as missing:
        client.batch_create_records([*batch[:1], NewRecord(unknown, "support", {"message": "x"})])
    assert missing.value.reason == "SUBJECT_NOT_FOUND"
    info, _ = _details(
        _raw_create(stubs[1], [*batch[:1], NewRecord(unknown, "usage", {"page": "/"})])
    )
    assert dict(info.metadata) == {"subject_id": unknown, "index": "1"}

    # two records of a profile category (one per subject) in one batch
    twice = [
        NewRecord(alive, "support", {"message": "kept?"}),
        NewRecord(alive, "identity", {"given_name": "A"}),
        NewRecord(alive, "identity", {"given_name": "B"}),
    ]
    with pytest.raises(AlreadyExists):
        client.batch_create_records(twice)
    info, _ = _details(_raw_create(stubs[1], twice))
    assert info.metadata["index"] == "2"
    # one already stored: the database refuses the batch, which is rolled back whole
    client.create_record(alive, "identity", {"given_name": "A"})
    with pytest.raises(AlreadyExists):
        client.batch_create_records([NewRecord(alive, "support", {"message": "kept?"}), twice[2]])
    assert [r.category for r in client.list_records(alive, purpose="service")] == ["identity"]


def test_batch_put_names_the_item_whose_profile_record_already_exists(
    stack: Stack, stubs: tuple[pb_grpc.SubjectServiceStub, pb_grpc.RecordServiceStub]
) -> None:
    subject_id = stack.client.create_subject().subject_id
    stack.client.create_record(subject_id, "identity", {"given_name": "A"})
    info, _ = _details(
        _raw_create(
            stubs[1],
            [
                NewRecord(subject_id, "support", {"message": "m"}),
                NewRecord(subject_id, "identity", {"given_name": "B"}),
            ],
        )
    )
    assert info.reason == "ALREADY_EXISTS"
    assert info.metadata["index"] == "1"
    assert info.metadata["category"] == "identity"


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (NewRecord("", "support", {"not_a_field": CANARY}), "requests[1].fields"),
        (NewRecord("", "no_such_category", {"message": CANARY}), "requests[1].category"),
        (NewRecord("", "support", {}), "requests[1].fields"),
        (NewRecord("", "support", {"message": ""}), "requests[1].fields.message"),
        (NewRecord("", "support", {"message": CANARY}, origin=CANARY), "requests[1].origin"),
        (NewRecord(CANARY, "support", {"message": CANARY}), "requests[1].subject_id"),
    ],
)
def test_invalid_item_is_named_by_its_index(
    stack: Stack,
    stubs: tuple[pb_grpc.SubjectServiceStub, pb_grpc.RecordServiceStub],
    bad: NewRecord,
    field: str,
) -> None:
    subject_id = stack.client.create_subject().subject_id
    bad = NewRecord(bad.subject_id or subject_id, bad.category, bad.fields, bad.origin)
    batch = [NewRecord(subject_id, "support", {"message": "fine"}), bad]

    with pytest.raises(InvalidArgument) as raised:
        stack.client.batch_create_records(batch)

    assert raised.value.field == field
    assert "canary" not in str(raised.value).lower()
    info, violation = _details(_raw_create(stubs[1], batch))
    assert violation == field
    assert info.metadata["index"] == "1" and info.metadata["field"] == field
    assert stack.client.get_subject(subject_id).record_count == 0


def _raw_status(call: Any, request: Any) -> tuple[grpc.StatusCode, str, str]:
    """A batch call that must fail: its code, message and BadRequest field."""
    with pytest.raises(grpc.RpcError) as raised:
        call(request, metadata=AUTH, timeout=30)
    return raised.value.code(), raised.value.details() or "", _details(raised.value)[1]


@pytest.mark.parametrize("size", [0, MAX_BATCH_ITEMS + 1])
def test_the_server_takes_1_to_1000_items_a_call(
    stack: Stack,
    stubs: tuple[pb_grpc.SubjectServiceStub, pb_grpc.RecordServiceStub],
    size: int,
) -> None:
    subjects, records = stubs
    subject_id = stack.client.create_subject().subject_id
    put = pb.BatchCreateRecordsRequest(
        requests=[
            pb.CreateRecordRequest(
                subject_id=subject_id, category="support", fields={"message": "m"}
            )
        ]
        * size
    )
    get = pb.BatchGetRecordsRequest(
        requests=[
            pb.GetRecordRequest(subject_id=subject_id, record_id=_fake_id(n), purpose="support")
            for n in range(size)
        ]
    )
    shred = pb.BatchShredSubjectsRequest(subject_ids=[_fake_id(n) for n in range(size)])
    for call, request, field in (
        (records.BatchCreateRecords, put, "requests"),
        (records.BatchGetRecords, get, "requests"),
        (subjects.BatchShredSubjects, shred, "subject_ids"),
    ):
        code, message, violation = _raw_status(call, request)
        assert (code, violation) == (grpc.StatusCode.INVALID_ARGUMENT, field)
        assert str(MAX_BATCH_ITEMS) in message
    assert stack.client.get_subject(subject_id).record_count == 0


def test_the_client_splits_at_the_servers_maximum(stack: Stack) -> None:
    """The typed client sends 1 001 items as 1 000 + 1 (the server's maximum per call,
    the client's BATCH_MAX), and nothing for none."""
    client = stack.client
    assert BATCH_MAX == MAX_BATCH_ITEMS
    subject_id = client.create_subject().subject_id
    made = client.batch_create_records(
        [NewRecord(subject_id, "support", {"message": f"m{n}"}) for n in range(BATCH_MAX + 1)]
    )
    assert [r.fields["message"] for r in made] == [f"m{n}" for n in range(BATCH_MAX + 1)]
    assert client.get_subject(subject_id).record_count == BATCH_MAX + 1
    reads = [(subject_id, r.record_id, "support") for r in made]
    got = client.batch_get_records(reads)
    assert [r.record_id for r in got if isinstance(r, Record)] == [r.record_id for r in made]
    ids = [client.create_subject().subject_id for _ in range(2)]
    ids += [_fake_id(n) for n in range(BATCH_MAX - 1)]
    results = client.shred_subjects(ids)
    assert [type(r) for r in results[:2]] == [ShredReceipt, ShredReceipt]
    assert {type(r) for r in results[2:]} == {NotFound} and len(results) == BATCH_MAX + 1
    assert client.batch_create_records([]) == []
    assert client.batch_get_records([]) == [] and client.shred_subjects([]) == []


def test_a_later_chunk_that_fails_says_what_was_stored(stack: Stack) -> None:
    """Chunks are atomic one by one: when the second is refused, BatchIncomplete holds
    the first chunk's records (stored) and counts the rest (not stored)."""
    client = stack.client
    subject_id = client.create_subject().subject_id
    good = [NewRecord(subject_id, "support", {"message": "m"})] * BATCH_MAX
    bad = [NewRecord(subject_id, "no-such-category", {"message": "m"})]
    with pytest.raises(BatchIncomplete) as raised:
        client.batch_create_records(good + bad)
    assert len(raised.value.done) == BATCH_MAX and raised.value.remaining == 1
    assert isinstance(raised.value.cause, InvalidArgument)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert client.get_subject(subject_id).record_count == BATCH_MAX
    with pytest.raises(InvalidArgument):  # a first chunk that fails is the plain error
        client.batch_create_records(bad + good)
    assert client.get_subject(subject_id).record_count == BATCH_MAX


def test_a_batch_of_1000_items_is_accepted(stack: Stack) -> None:
    client = stack.client
    subject_id = client.create_subject().subject_id
    results = client.batch_get_records(
        [(subject_id, _fake_id(n), "support") for n in range(MAX_BATCH_ITEMS)]
    )
    assert len(results) == MAX_BATCH_ITEMS
    assert {(type(r), getattr(r, "reason", "")) for r in results} == {
        (NotFound, "RECORD_NOT_FOUND")
    }


def test_a_batch_over_8_mib_is_refused_by_grpc(stack: Stack) -> None:
    client = stack.client
    subject_id = client.create_subject().subject_id
    value = "v" * (60 * 1024)  # within the 64 KiB field limit; 150 of them exceed 8 MiB
    with pytest.raises(OubliClientError) as raised:
        client.batch_create_records([NewRecord(subject_id, "support", {"message": value})] * 150)
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.get_subject(subject_id).record_count == 0


def test_batch_get_items_succeed_or_fail_alone(stack: Stack) -> None:
    client = stack.client
    subject_id = client.create_subject().subject_id
    other = client.create_subject().subject_id
    erased = client.create_subject().subject_id
    ticket = client.create_record(subject_id, "support", {"message": "hello"})
    contact = client.create_record(subject_id, "contact", {"email": "own@example.org"})
    others = client.create_record(other, "support", {"message": "not yours"})
    lost = client.create_record(erased, "support", {"message": "bye"})
    client.shred_subject(erased)

    results = client.batch_get_records(
        [
            (subject_id, ticket.record_id, "support"),  # ok
            (erased, lost.record_id, "support"),  # erased subject
            (subject_id, _fake_id(3), "support"),  # no such record
            (subject_id, others.record_id, "support"),  # another subject's record
            (subject_id, contact.record_id, "analytics"),  # purpose the category refuses
            (_fake_id(4), ticket.record_id, "support"),  # no such subject
            ("not-an-id", ticket.record_id, "support"),  # malformed id
            (subject_id, contact.record_id, "service"),  # ok, after all those failures
        ]
    )

    assert len(results) == 8
    first, shredded, missing, foreign, refused, nobody, malformed, last = results
    assert isinstance(first, Record) and first.fields == {"message": "hello"}
    assert isinstance(last, Record) and last.fields == {"email": "own@example.org"}
    assert isinstance(shredded, NotFound) and shredded.reason == "SUBJECT_SHREDDED"
    assert isinstance(missing, NotFound) and missing.reason == "RECORD_NOT_FOUND"
    assert isinstance(foreign, NotFound) and foreign.reason == "RECORD_NOT_FOUND"
    assert isinstance(refused, PermissionDenied)
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.reason == "PURPOSE_NOT_ALLOWED"
    assert isinstance(nobody, NotFound) and nobody.reason == "SUBJECT_NOT_FOUND"
    assert isinstance(malformed, InvalidArgument)
    assert malformed.code == grpc.StatusCode.INVALID_ARGUMENT
    for error in (shredded, missing, foreign, refused, nobody, malformed):
        assert error.message
        assert "example.org" not in str(error) and "hello" not in str(error)


# --- BatchShredSubjects ---------------------------------------------------------------


def test_batch_shred_gives_a_receipt_per_subject_and_is_idempotent(stack: Stack) -> None:
    client = stack.client
    subjects = [_subject_with_records(client) for _ in range(12)]  # more than 8 workers
    unknown = _fake_id(11)

    first = client.shred_subjects([*subjects, unknown])

    assert len(first) == 13
    receipts = first[:12]
    assert all(isinstance(r, ShredReceipt) for r in receipts)
    assert [r.subject_id for r in receipts] == subjects  # type: ignore[union-attr]
    for receipt in receipts:
        assert isinstance(receipt, ShredReceipt)
        assert receipt.records_deleted == 1
        assert receipt.kms_backend == stack.kms.backend_name
        assert not stack.kms.key_exists(receipt.key_id)
    assert isinstance(first[12], NotFound) and first[12].reason == "SUBJECT_NOT_FOUND"
    for subject_id in subjects:
        assert client.get_subject(subject_id).state == "shredded"

    # again, in another order: the same receipts (the first ones), the same error
    again = client.shred_subjects([unknown, *reversed(subjects)])
    assert again[1:] == list(reversed(receipts))
    assert isinstance(again[0], NotFound) and again[0].reason == "SUBJECT_NOT_FOUND"
    assert client.shred_subject(subjects[0]) == receipts[0]


def test_batch_shred_items_fail_alone_and_duplicates_are_refused(stack: Stack) -> None:
    client = stack.client
    subject_id = _subject_with_records(client)
    with pytest.raises(InvalidArgument) as twice:
        client.shred_subjects([subject_id, _fake_id(1), subject_id])
    assert twice.value.field == "subject_ids"
    assert client.get_subject(subject_id).state == "active"  # nothing was shredded

    results = client.shred_subjects(["not-an-id", subject_id])
    assert isinstance(results[0], InvalidArgument)
    assert isinstance(results[1], ShredReceipt) and results[1].subject_id == subject_id


# --- StreamExport -------------------------------------------------------------------------


def _without_export_time(document: bytes) -> bytes:
    return re.sub(rb'"exported_at": "[^"]*"', b'"exported_at": null', document, count=1)


def test_stream_export_is_the_export_document_in_chunks(
    stack: Stack, stubs: tuple[pb_grpc.SubjectServiceStub, pb_grpc.RecordServiceStub]
) -> None:
    client = stack.client
    subject_id = client.create_subject().subject_id
    tickets = EXPORT_PAGE + 150  # several pages of one category
    client.batch_create_records(
        [NewRecord(subject_id, "contact", {"email": "big@example.org", "city": "Zürich"})]
        + [NewRecord(subject_id, "support", {"message": f"ticket {n}"}) for n in range(tickets)]
    )
    client.create_record(subject_id, "identity", {"given_name": "Zoé"})
    total = tickets + 2

    messages = list(
        stubs[0].StreamExport(
            pb.StreamExportRequest(subject_id=subject_id, purpose="portability"),
            metadata=AUTH,
            timeout=120,
        )
    )
    streamed = b"".join(m.chunk for m in messages)
    whole = stubs[0].ExportSubject(
        pb.ExportSubjectRequest(subject_id=subject_id, purpose="portability"),
        metadata=AUTH,
        timeout=120,
    )

    counts = [m.record_count for m in messages]
    assert sum(counts) == total
    assert len(messages) >= 4 and max(counts) <= EXPORT_PAGE
    document = json.loads(streamed)
    expected = client.export_subject(subject_id)
    for doc in (document, expected):
        doc.pop("exported_at")
    assert document == expected
    assert len(document["categories"]["support"]["records"]) == tickets
    # byte for byte the ExportSubject document (but for the time of the export)
    assert _without_export_time(streamed) == _without_export_time(whole.json)
    # compact JSON, one record per line
    record_lines = [line for line in streamed.decode("utf-8").splitlines() if '"record_id"' in line]
    assert len(record_lines) == total
    for line in record_lines:
        assert set(json.loads(line.rstrip(","))) >= {"record_id", "fields"}
    # the client yields the same bytes
    client_bytes = b"".join(client.stream_export(subject_id))
    assert _without_export_time(client_bytes) == _without_export_time(streamed)


def test_stream_export_purposes_and_refusals(stack: Stack) -> None:
    client = stack.client
    subject_id = client.create_subject().subject_id
    client.create_record(subject_id, "contact", {"email": "p@example.org"})
    client.create_record(subject_id, "usage", {"page": "/"}, "web")
    streamed = json.loads(b"".join(client.stream_export(subject_id, "billing")))
    assert sorted(streamed["categories"]) == ["contact"]  # usage is not for billing
    expected = client.export_subject(subject_id, "billing")
    streamed.pop("exported_at")
    expected.pop("exported_at")
    assert streamed == expected

    empty = client.create_subject().subject_id
    assert json.loads(b"".join(client.stream_export(empty)))["categories"] == {}

    client.shred_subject(subject_id)
    with pytest.raises(NotFound) as erased:
        b"".join(client.stream_export(subject_id))
    assert erased.value.reason == "SUBJECT_SHREDDED"
    with pytest.raises(InvalidArgument) as purpose:
        b"".join(client.stream_export(empty, "no_such_purpose"))
    assert purpose.value.field == "purpose"


# --- audit ------------------------------------------------------------------------------


def test_batch_get_is_audited_once_per_subject_and_purpose(stack: Stack) -> None:
    client = stack.client
    a, b, erased = (client.create_subject().subject_id for _ in range(3))
    ticket = client.create_record(a, "support", {"message": "m"})
    contact = client.create_record(b, "contact", {"email": "b@example.org", "city": "Nice"})
    lost = client.create_record(erased, "usage", {"page": "/"}, "web")
    client.shred_subject(erased)

    client.batch_get_records(
        [
            (a, ticket.record_id, "support"),
            (b, contact.record_id, "service"),
            (b, contact.record_id, "billing"),
            (erased, lost.record_id, "service"),
        ]
    )

    action = "RecordService.BatchGetRecords"
    [on_a] = _batch_entries(client, a, action)
    assert (on_a.caller, on_a.categories, on_a.fields, on_a.purpose, on_a.outcome) == (
        CALLER,
        ("support",),
        ("message",),
        "support",
        "OK",
    )
    on_b = _batch_entries(client, b, action)
    assert sorted(e.purpose for e in on_b) == ["billing", "service"]
    for entry in on_b:
        assert (entry.categories, entry.fields, entry.outcome) == (
            ("contact",),
            ("city", "email"),
            "OK",
        )
    [on_erased] = _batch_entries(client, erased, action)
    assert on_erased.outcome == "SUBJECT_SHREDDED" and on_erased.categories == ()
    # one call: one request id; a read has no STARTED entry
    assert len({e.request_id for e in [on_a, *on_b, on_erased]}) == 1


def test_batch_create_and_shred_are_audited_started_then_outcome_per_subject(
    stack: Stack,
) -> None:
    client = stack.client
    a, b = (client.create_subject().subject_id for _ in range(2))
    client.batch_create_records(
        [
            NewRecord(a, "support", {"message": "m"}),
            NewRecord(b, "usage", {"page": "/", "action": "click"}, "web"),
            NewRecord(a, "contact", {"email": "a@example.org"}),
        ]
    )
    expected = {
        a: (("contact", "support"), ("email", "message")),
        b: (("usage",), ("action", "page")),
    }
    request_ids = set()
    for subject_id, (categories, fields) in expected.items():
        entries = _batch_entries(client, subject_id, "RecordService.BatchCreateRecords")
        assert [e.outcome for e in entries] == ["STARTED", "OK"]
        started, done = entries
        # Before the batch runs its names are unchecked caller input: subject only.
        assert (started.caller, started.categories, started.fields) == (CALLER, (), ())
        assert (done.caller, done.categories, done.fields) == (CALLER, categories, fields)
        request_ids.update({started.request_id, done.request_id})
    assert len(request_ids) == 1

    unknown = _fake_id(5)
    client.shred_subjects([a, unknown])
    entries = _batch_entries(client, a, "SubjectService.BatchShredSubjects")
    assert [e.outcome for e in entries] == ["STARTED", "OK"]
    entries = _batch_entries(client, unknown, "SubjectService.BatchShredSubjects")
    assert [e.outcome for e in entries] == ["STARTED", "SUBJECT_NOT_FOUND"]


def test_stream_export_is_audited(stack: Stack) -> None:
    client = stack.client
    subject_id = client.create_subject().subject_id
    client.create_record(subject_id, "contact", {"email": "s@example.org"})
    b"".join(client.stream_export(subject_id))
    entries = _batch_entries(client, subject_id, "SubjectService.StreamExport")
    assert [e.outcome for e in entries] == ["STARTED", "OK"]
    assert entries[-1].categories == ("contact",) and entries[-1].fields == ("email",)
    assert entries[-1].purpose == "portability"


def test_a_batch_put_failing_while_sealing_gives_every_subject_an_outcome(
    tmp_path: Path,
) -> None:
    from tests.stack import start_stack

    kms = InMemoryKeyManager()
    server, storage = start_stack(f"sqlite:///{tmp_path / 'oubli.db'}", kms)
    try:
        with OubliClient(f"127.0.0.1:{server.port}", token=TEST_TOKEN, max_attempts=1) as client:
            subjects = [client.create_subject().subject_id for _ in range(3)]
            for subject_id in subjects:  # cold keys: sealing needs the KMS
                server.vault.crypto.cache.evict(storage.subject(subject_id).key_id)
            kms.unavailable = True
            with pytest.raises(OubliClientError):
                client.batch_create_records(
                    [NewRecord(s, "support", {"message": "m"}) for s in subjects]
                )
            kms.unavailable = False
            for subject_id in subjects:
                entries = _batch_entries(client, subject_id, "RecordService.BatchCreateRecords")
                assert [e.outcome for e in entries] == ["STARTED", "BACKEND_UNAVAILABLE"]
    finally:
        server.stop(grace=0)


@pytest.mark.parametrize("rpc", ["BatchGetRecords", "StreamExport"])
def test_batch_and_stream_readers_appear_in_the_access_report(stack: Stack, rpc: str) -> None:
    client = stack.client
    subject_id = client.create_subject().subject_id
    ticket = client.create_record(subject_id, "support", {"message": "m"})
    if rpc == "BatchGetRecords":
        [got] = client.batch_get_records([(subject_id, ticket.record_id, "support")])
        assert isinstance(got, Record)
    else:
        b"".join(client.stream_export(subject_id))
    report = client.access_report(subject_id)
    assert CALLER in report["categories"]["support"]["recipients_seen"]


# --- personal data stays out of errors and the audit trail ------------------------------


def _no_canary(value: Any) -> None:
    text = repr(value)
    # Parts of the canary too (a hash or id can hold any 4 hex digits, so not "7f3a").
    assert CANARY not in text and "canary-bulk" not in text and "7f3a@example" not in text


def test_pii_canary_of_a_failed_batch_stays_out_of_errors_and_audit(
    stack: Stack, stubs: tuple[pb_grpc.SubjectServiceStub, pb_grpc.RecordServiceStub]
) -> None:
    client = stack.client
    alive = client.create_subject().subject_id
    erased = client.create_subject().subject_id
    client.shred_subject(erased)
    failing_batches = [
        # another item's subject is erased
        [
            NewRecord(alive, "contact", {"email": CANARY, "city": "Lyon"}),
            NewRecord(erased, "support", {"message": "x"}),
        ],
        # another item is invalid
        [
            NewRecord(alive, "contact", {"email": CANARY}),
            NewRecord(alive, "support", {"message": CANARY, "nope": "x"}),
        ],
        # the canary's own item is invalid
        [
            NewRecord(alive, "support", {"message": "fine"}),
            NewRecord(alive, "contact", {"email": CANARY * 3000}),
        ],
    ]
    for batch in failing_batches:
        with pytest.raises(OubliClientError) as raised:
            client.batch_create_records(batch)
        _no_canary(raised.value)
        _no_canary(raised.value.message)
        error = _raw_create(stubs[1], batch)
        _no_canary(error.details())
        _no_canary(error.trailing_metadata())
    # nothing stored, nothing indexed
    assert client.get_subject(alive).record_count == 0
    assert client.find_subject(email=CANARY, purpose="service") == []
    for subject_id in (alive, erased):
        entries = _batch_entries(client, subject_id, "RecordService.BatchCreateRecords")
        # per failing call: STARTED and the error; the erased subject is in one batch only
        assert len(entries) == 2 * 2 * (1 if subject_id == erased else len(failing_batches))
        assert "OK" not in {e.outcome for e in entries}
        _no_canary(entries)


def test_unknown_field_names_of_a_batch_put_are_not_recorded(stack: Stack) -> None:
    client = stack.client
    subject_id = client.create_subject().subject_id
    with pytest.raises(InvalidArgument):
        client.batch_create_records(
            [NewRecord(subject_id, "contact", {"canary_bulk_7f3a_ophelie": "x"})]
        )
    entries = _batch_entries(client, subject_id, "RecordService.BatchCreateRecords")
    # The refused batch is recorded (started, then refused), without the unknown name.
    assert [e.outcome for e in entries] == ["STARTED", "INVALID_ARGUMENT"]
    for entry in entries:
        assert "canary_bulk_7f3a_ophelie" not in entry.fields
    assert "canary_bulk_7f3a_ophelie" not in audit_dump(stack.storage)


# --- the caller's data permissions apply to each item ---------------------------------


def test_callers_categories_and_purposes_apply_per_item(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'oubli.db'}")
    migrate(engine)
    vault = vault_service(Storage(engine), InMemoryKeyManager())
    auth = Authenticator({token_hash("billing-token"): "billing"}), CallerPolicy.load()
    server = start_server(ServerConfig(listen="127.0.0.1:0"), vault=vault, auth=auth)
    try:
        subject_id = vault.create_subject().subject_id
        usage = vault.create_record(subject_id, "usage", {"page": "/"}, "web")
        contact = vault.create_record(subject_id, "contact", {"email": "c@example.org"}, "c")
        with OubliClient(f"127.0.0.1:{server.port}", token="billing-token") as billing:
            got = billing.batch_get_records(
                [
                    (subject_id, contact.record_id, "billing"),
                    (subject_id, usage.record_id, "billing"),
                    (subject_id, contact.record_id, "marketing"),
                ]
            )
            assert isinstance(got[0], Record)
            assert isinstance(got[1], PermissionDenied)
            assert got[1].reason == "CATEGORY_NOT_ALLOWED_FOR_CALLER"
            assert isinstance(got[2], PermissionDenied)
            assert got[2].reason == "PURPOSE_NOT_ALLOWED_FOR_CALLER"
            with pytest.raises(PermissionDenied) as refused:
                billing.batch_create_records(
                    [
                        NewRecord(subject_id, "billing", {"amount": "1.00"}, "billing"),
                        NewRecord(subject_id, "usage", {"page": "/"}, "billing"),
                    ]
                )
            assert refused.value.reason == "CATEGORY_NOT_ALLOWED_FOR_CALLER"
            assert vault.get_subject(subject_id).record_count == 2
            with pytest.raises(PermissionDenied) as shred:
                billing.shred_subjects([subject_id])
            assert shred.value.reason == "RPC_NOT_ALLOWED"
    finally:
        server.stop(grace=0)
