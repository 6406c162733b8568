"""What a caller types never comes back in an error, nor lands in the audit trail.

Names are validated against the catalog before the caller's policy is asked about them,
so a refusal can only name what the catalog knows; the audit writes anything else as
``~invalid``; the caller's ``x-request-id`` is taken only as a canonical UUID; request
fields that cannot be converted are INVALID_ARGUMENT, never INTERNAL.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kms.local_keystore import LocalKeystore
from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from tests.audit_tables import chain_rows
from tests.callers_stack import CallersServer, start_callers_server
from vault.audit.entries import INVALID

EMAIL = "jane.doe.q5k@example.org"
CARD = "4970100000000007"
PHONE_DIGITS = "33612345678"
IBAN = "FR7630006000011234567890189"
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def served(sqlite_url: str, tmp_path: Path) -> Iterator[CallersServer]:
    served = start_callers_server(sqlite_url, LocalKeystore(tmp_path / "keys.db"))
    yield served
    served.server.stop(grace=0)


@pytest.fixture
def record(served: CallersServer) -> tuple[str, str]:
    vault = served.vault
    subject_id = vault.create_subject().subject_id
    view = vault.create_record(subject_id, "contact", {"email": "x@example.org"}, "customer")
    return subject_id, view.record_id


def _call(
    served: CallersServer,
    method: Any,
    request: Any,
    caller: str = "control-panel",
    request_id: str | None = None,
) -> tuple[Any, grpc.StatusCode, str, dict[str, Any]]:
    """(response or None, code, message, trailers) of a unary call."""
    metadata = served.auth(caller)
    if request_id is not None:
        metadata = (*metadata, ("x-request-id", request_id))
    try:
        response, call = method.with_call(request, metadata=metadata, timeout=10)
        return response, grpc.StatusCode.OK, "", dict(call.trailing_metadata())
    except grpc.RpcError as e:
        return None, e.code(), e.details(), dict(e.trailing_metadata())


def _details(trailers: dict[str, Any]) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    """The ErrorInfo and the BadRequest field names of an error's status details."""
    status = rpc_status.status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info, fields = error_details_pb2.ErrorInfo(), []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return info, fields


def _audit_rows(served: CallersServer) -> list[Any]:
    return chain_rows(served.storage)


def test_an_unknown_purpose_is_invalid_before_the_callers_policy_is_asked(
    served: CallersServer, record: tuple[str, str]
) -> None:
    subject_id, record_id = record
    with grpc.insecure_channel(served.target) as channel:
        stub = pb_grpc.RecordServiceStub(channel)
        _, code, message, trailers = _call(
            served,
            stub.GetRecord,
            pb.GetRecordRequest(subject_id=subject_id, record_id=record_id, purpose=EMAIL),
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        info, fields = _details(trailers)
        assert fields == ["purpose"]
        assert EMAIL not in message and EMAIL.encode() not in b"".join(
            v if isinstance(v, bytes) else v.encode() for v in trailers.values()
        )
        assert EMAIL not in str(info)

        read = pb.GetRecordRequest(subject_id=subject_id, record_id=record_id, purpose=EMAIL)
        batch, code, _, _ = _call(
            served, stub.BatchGetRecords, pb.BatchGetRecordsRequest(requests=[read])
        )
        assert code == grpc.StatusCode.OK
        error = batch.results[0].error
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert EMAIL not in error.message and EMAIL not in error.reason


def test_a_catalog_purpose_outside_the_callers_policy_is_still_refused_by_name(
    served: CallersServer, record: tuple[str, str]
) -> None:
    subject_id, record_id = record
    with grpc.insecure_channel(served.target) as channel:
        stub = pb_grpc.RecordServiceStub(channel)
        request = pb.GetRecordRequest(subject_id=subject_id, record_id=record_id, purpose="billing")
        _, code, message, trailers = _call(served, stub.GetRecord, request)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    info, _ = _details(trailers)
    assert info.reason == "PURPOSE_NOT_ALLOWED_FOR_CALLER"
    assert info.metadata["purpose"] == "billing" and "billing" in message


def test_names_the_catalog_does_not_know_are_written_as_invalid(
    served: CallersServer, record: tuple[str, str]
) -> None:
    """Digit strings look like names to the audit's own filter: only the catalog can
    tell a purpose from a card, phone or account number."""
    subject_id, record_id = record
    with grpc.insecure_channel(served.target) as channel:
        records = pb_grpc.RecordServiceStub(channel)
        rights = pb_grpc.RightsServiceStub(channel)
        lookup = pb_grpc.LookupServiceStub(channel)
        read = pb.GetRecordRequest(subject_id=subject_id, record_id=record_id, purpose=CARD)
        calls = [
            (records.GetRecord, read),
            (records.BatchGetRecords, pb.BatchGetRecordsRequest(requests=[read])),
            (
                records.ListRecords,
                pb.ListRecordsRequest(
                    subject_id=subject_id, category=PHONE_DIGITS, purpose="service"
                ),
            ),
            (
                records.CreateRecord,
                pb.CreateRecordRequest(
                    subject_id=subject_id, category=IBAN, fields={"email": EMAIL}, origin="customer"
                ),
            ),
            (
                rights.ObjectToPurpose,
                pb.ObjectToPurposeRequest(subject_id=subject_id, purpose=IBAN),
            ),
            (lookup.FindSubject, pb.FindSubjectRequest(email=EMAIL, purpose=PHONE_DIGITS)),
        ]
        for method, request in calls:
            response, code, _, _ = _call(served, method, request)
            if isinstance(request, pb.BatchGetRecordsRequest):  # the item fails, not the call
                assert response.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            else:
                assert code == grpc.StatusCode.INVALID_ARGUMENT
    rows = _audit_rows(served)
    assert len(rows) >= len(calls)
    for row in rows:
        for value in (CARD, PHONE_DIGITS, IBAN, EMAIL):
            assert value not in str(tuple(row))
    assert {row.purpose for row in rows} <= {"", "service", INVALID}
    assert sum(INVALID in row.purpose for row in rows) >= 4
    assert sum(INVALID in row.categories for row in rows) >= 2


def test_a_batch_item_with_an_unknown_purpose_is_audited_under_its_subject(
    served: CallersServer, record: tuple[str, str]
) -> None:
    subject_id, record_id = record
    other = served.vault.create_subject().subject_id
    other_record = served.vault.create_record(other, "contact", {"city": "Lyon"}, "customer")
    reads = [
        pb.GetRecordRequest(subject_id=subject_id, record_id=record_id, purpose="service"),
        pb.GetRecordRequest(subject_id=other, record_id=other_record.record_id, purpose=CARD),
    ]
    with grpc.insecure_channel(served.target) as channel:
        stub = pb_grpc.RecordServiceStub(channel)
        batch, code, _, _ = _call(
            served, stub.BatchGetRecords, pb.BatchGetRecordsRequest(requests=reads)
        )
    assert code == grpc.StatusCode.OK
    assert batch.results[0].record.record_id == record_id
    assert batch.results[1].error.reason == "INVALID_ARGUMENT"
    entries = {row.subject_id: row for row in _audit_rows(served)}
    assert (entries[subject_id].purpose, entries[subject_id].outcome) == ("service", "OK")
    assert (entries[other].purpose, entries[other].outcome) == (INVALID, "INVALID_ARGUMENT")


def test_a_request_id_is_taken_only_as_a_canonical_uuid(
    served: CallersServer, record: tuple[str, str]
) -> None:
    subject_id, _ = record
    given = str(uuid.uuid4())
    with grpc.insecure_channel(served.target) as channel:
        stub = pb_grpc.SubjectServiceStub(channel)
        request = pb.GetSubjectRequest(subject_id=subject_id)
        _, code, _, trailers = _call(served, stub.GetSubject, request, request_id=given)
        assert code == grpc.StatusCode.OK and trailers["x-request-id"] == given
        for typed in (
            PHONE_DIGITS,
            CARD,
            "req-" + PHONE_DIGITS,
            given.upper(),
            given.replace("-", ""),
        ):
            _, code, _, trailers = _call(served, stub.GetSubject, request, request_id=typed)
            assert code == grpc.StatusCode.OK
            assert trailers["x-request-id"] != typed
            assert CANONICAL_UUID.fullmatch(trailers["x-request-id"])
    rows = _audit_rows(served)
    assert rows[0].request_id == given
    assert all(CANONICAL_UUID.fullmatch(row.request_id) for row in rows)
    assert not any(PHONE_DIGITS in row.request_id or CARD in row.request_id for row in rows)


@pytest.mark.parametrize(
    ("field", "stamp"),
    [
        ("since", Timestamp(seconds=253402300800)),
        ("until", Timestamp(seconds=0, nanos=-1)),
        ("since", Timestamp(seconds=-62135596801)),
        ("until", Timestamp(seconds=1, nanos=1_000_000_000)),
    ],
)
def test_query_audit_refuses_a_timestamp_out_of_range_by_field(
    served: CallersServer, field: str, stamp: Timestamp
) -> None:
    with grpc.insecure_channel(served.target) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        request = pb.QueryAuditRequest(**{field: stamp})
        _, code, _, trailers = _call(served, stub.QueryAudit, request, caller="dpo")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = _details(trailers)
    assert fields == [field] and info.reason == "INVALID_ARGUMENT"
