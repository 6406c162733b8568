"""End to end through a real gRPC server and the Python client."""

from __future__ import annotations

import json
import uuid
from importlib import resources

import grpc
import jsonschema
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from oubli_client import OubliClient
from oubli_client.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    OubliClientError,
    Unavailable,
)
from oubli_client.v1 import vault_pb2 as pb
from tests.memory_kms import InMemoryKeyManager
from tests.stack import TEST_TOKEN, Stack, start_stack
from vault.app.openbao_process import free_port

AUTH = (("authorization", f"Bearer {TEST_TOKEN}"),)
CANARY = "zz-canary-7f3a9c-Ophélie.Marchand@example.invalid"

EXPORT_SCHEMA = json.loads(
    resources.files("vault").joinpath("schemas/export.v1.schema.json").read_text()
)


def test_subject_and_record_lifecycle(stack: Stack) -> None:
    client = stack.client
    subject = client.create_subject()
    assert subject.state == "active" and len(subject.subject_id) == 26
    contact = client.create_record(
        subject.subject_id, "contact", {"email": "ada@example.org", "city": "Paris"}, "customer"
    )
    invoice = client.create_record(
        subject.subject_id, "billing", {"invoice_number": "F-1", "amount": "12.00"}, "billing"
    )
    assert (
        client.get_record(subject.subject_id, contact.record_id, "service").fields["city"]
        == "Paris"
    )
    assert {r.record_id for r in client.list_records(subject.subject_id, purpose="service")} == {
        contact.record_id,
        invoice.record_id,
    }
    assert [
        r.record_id for r in client.list_records(subject.subject_id, "billing", purpose="service")
    ] == [invoice.record_id]
    fixed = client.update_record(
        subject.subject_id, contact.record_id, {"email": "ada@example.com"}, 1
    )
    assert fixed.version == 2 and fixed.fields == {"email": "ada@example.com"}
    assert client.get_subject(subject.subject_id).record_count == 2
    client.delete_record(subject.subject_id, invoice.record_id)
    with pytest.raises(NotFound) as gone:
        client.get_record(subject.subject_id, invoice.record_id, "service")
    assert gone.value.reason == "RECORD_NOT_FOUND"


def test_export_is_valid_json_against_the_published_schema(stack: Stack) -> None:
    client = stack.client
    subject = client.create_subject()
    client.create_record(subject.subject_id, "identity", {"given_name": "Zoé"}, "customer")
    client.create_record(subject.subject_id, "usage", {"page": "/a"}, "web")
    client.create_record(subject.subject_id, "usage", {"page": "/b"}, "web")
    document = client.export_subject(subject.subject_id)
    jsonschema.validate(document, EXPORT_SCHEMA)
    assert document["subject"]["subject_id"] == subject.subject_id
    assert document["categories"]["identity"]["records"][0]["fields"] == {"given_name": "Zoé"}
    pages = sorted(r["fields"]["page"] for r in document["categories"]["usage"]["records"])
    assert pages == ["/a", "/b"]
    # raw bytes are UTF-8 JSON
    raw = stack.client._subjects.ExportSubject(
        pb.ExportSubjectRequest(subject_id=subject.subject_id, purpose="portability"),
        metadata=AUTH,
    )
    assert raw.content_type == "application/json"
    assert "Zoé" in raw.json.decode("utf-8")


def test_shred_destroys_the_key_and_refuses_the_subject(stack: Stack) -> None:
    client = stack.client
    subject = client.create_subject()
    record = client.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "customer")
    receipt = client.shred_subject(subject.subject_id)
    assert receipt.subject_id == subject.subject_id
    assert receipt.records_deleted == 1
    assert receipt.kms_backend == stack.kms.backend_name
    assert "7 days" in receipt.residual_risk
    assert not stack.kms.key_exists(receipt.key_id)
    for call in (
        lambda: client.get_record(subject.subject_id, record.record_id, "service"),
        lambda: client.list_records(subject.subject_id, purpose="service"),
        lambda: client.export_subject(subject.subject_id),
        lambda: client.create_record(subject.subject_id, "usage", {"page": "/"}, "web"),
    ):
        with pytest.raises(NotFound) as refused:
            call()
        assert refused.value.reason == "SUBJECT_SHREDDED"
    assert client.get_subject(subject.subject_id).state == "shredded"
    again = client.shred_subject(subject.subject_id)
    assert again == receipt


@pytest.mark.parametrize(
    ("category", "fields", "error", "field"),
    [
        ("no_such_category", {"email": CANARY}, InvalidArgument, "category"),
        ("contact", {}, InvalidArgument, "fields"),
        ("contact", {"email": ""}, InvalidArgument, "fields.email"),
        ("contact", {"email": CANARY * 2000}, InvalidArgument, "fields.email"),
        ("contact", {"favourite": CANARY}, InvalidArgument, "fields"),
        ("contact", {f"x{n}": CANARY for n in range(65)}, InvalidArgument, "fields"),
        ("contact", {CANARY.replace("@", "_"): "v"}, InvalidArgument, "fields"),
    ],
)
def test_bad_records_are_invalid_argument_without_pii(
    stack: Stack, category: str, fields: dict[str, str], error: type[Exception], field: str
) -> None:
    subject = stack.client.create_subject()
    with pytest.raises(error) as raised:
        stack.client.create_record(subject.subject_id, category, fields)
    assert isinstance(raised.value, OubliClientError)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.field == field
    assert "canary" not in raised.value.message.lower()


def test_ids_origin_and_paging_are_validated(stack: Stack) -> None:
    client = stack.client
    for bad in ("", "short", CANARY, "A" * 26):
        with pytest.raises(InvalidArgument) as raised:
            client.get_subject(bad)
        assert raised.value.field == "subject_id"
        assert "canary" not in raised.value.message.lower()
    subject = client.create_subject()
    with pytest.raises(InvalidArgument) as raised:
        client.create_record(subject.subject_id, "contact", {"email": "x"}, origin=CANARY)
    assert raised.value.field == "origin"
    with pytest.raises(InvalidArgument):
        client.list_records(subject.subject_id, page_size=501, purpose="service")
    with pytest.raises(InvalidArgument):
        client.get_record(subject.subject_id, "not-an-id", "service")


def test_unknown_subject_and_record_are_not_found(stack: Stack) -> None:
    with pytest.raises(NotFound) as raised:
        stack.client.get_subject("a" * 26)
    assert raised.value.reason == "SUBJECT_NOT_FOUND"
    subject = stack.client.create_subject()
    with pytest.raises(NotFound):
        stack.client.get_record(subject.subject_id, "b" * 26, "service")


def test_stale_version_is_aborted_and_profile_duplicate_already_exists(stack: Stack) -> None:
    client = stack.client
    subject = client.create_subject()
    record = client.create_record(subject.subject_id, "identity", {"given_name": "A"})
    client.update_record(subject.subject_id, record.record_id, {"given_name": "B"}, 1)
    with pytest.raises(Conflict) as raised:
        client.update_record(subject.subject_id, record.record_id, {"given_name": "C"}, 1)
    assert raised.value.code == grpc.StatusCode.ABORTED
    assert raised.value.reason == "VERSION_CONFLICT"
    with pytest.raises(AlreadyExists):
        client.create_record(subject.subject_id, "identity", {"given_name": "D"})


def test_invalid_utf8_is_invalid_argument(stack: Stack) -> None:
    subject = stack.client.create_subject()
    valid = pb.CreateRecordRequest(
        subject_id=subject.subject_id, category="contact", fields={"email": "AAAA"}
    ).SerializeToString()
    broken = valid.replace(b"AAAA", b"\xff\xfe\xfd\xfc")
    with grpc.insecure_channel(stack.target) as channel:
        call = channel.unary_unary("/oubli.v1.RecordService/CreateRecord")
        with pytest.raises(grpc.RpcError) as raised:
            call(broken, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stack.client.get_subject(subject.subject_id).record_count == 0


def test_health_and_reflection_are_served(stack: Stack) -> None:
    with grpc.insecure_channel(stack.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "oubli.v1.SubjectService", "oubli.v1.RecordService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in response.list_services_response.service}
    assert {"oubli.v1.SubjectService", "oubli.v1.RecordService"} <= names


def test_kms_outage_is_unavailable_and_writes_nothing(sqlite_url: str) -> None:
    kms = InMemoryKeyManager()
    server, storage = start_stack(sqlite_url, kms)
    try:
        with OubliClient(f"127.0.0.1:{server.port}", max_attempts=1, token=TEST_TOKEN) as client:
            kms.unavailable = True
            with pytest.raises(Unavailable) as raised:
                client.create_subject()
            assert raised.value.reason == "BACKEND_UNAVAILABLE"
            kms.unavailable = False
            subject = client.create_subject()
            server.vault.crypto.cache.evict(storage.subject(subject.subject_id).key_id)
            kms.unavailable = True
            with pytest.raises(Unavailable):
                client.create_record(subject.subject_id, "contact", {"email": "x"})
            kms.unavailable = False
            assert client.get_subject(subject.subject_id).record_count == 0
    finally:
        server.stop(grace=0)


def test_client_retries_idempotent_calls_only() -> None:
    sleeps: list[float] = []
    dead = f"127.0.0.1:{free_port()}"
    with OubliClient(dead, timeout=2, max_attempts=3, sleep=sleeps.append) as client:
        with pytest.raises(Unavailable):
            client.get_subject("a" * 26)
        assert len(sleeps) == 2
        sleeps.clear()
        with pytest.raises(Unavailable):
            client.create_subject()
        assert sleeps == []


def test_database_outage_is_unavailable(pg_url: str) -> None:
    """The PostgreSQL database disappears under a running server."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from tests.conftest import PG_ADMIN_URL

    kms = InMemoryKeyManager()
    server, _ = start_stack(pg_url, kms)
    try:
        with OubliClient(f"127.0.0.1:{server.port}", max_attempts=1, token=TEST_TOKEN) as client:
            subject = client.create_subject()
            server.vault.storage.engine.dispose()
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                name = make_url(pg_url).database
                c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            admin.dispose()
            keys_before = len(kms._keys)
            for call in (
                lambda: client.get_subject(subject.subject_id),
                lambda: client.create_record(subject.subject_id, "contact", {"email": "x"}),
                client.create_subject,
            ):
                with pytest.raises(Unavailable) as raised:
                    call()
                assert raised.value.reason == "BACKEND_UNAVAILABLE"
            # the key made for the subject that could not be stored was destroyed again
            assert len(kms._keys) == keys_before
    finally:
        server.stop(grace=0)


def test_request_id_is_returned_on_success_and_on_error(stack: Stack) -> None:
    from oubli_client.v1 import vault_pb2_grpc as pb_grpc

    ok_id, error_id = str(uuid.uuid4()), str(uuid.uuid4())  # canonical UUIDs only

    subject = stack.client.create_subject()
    with grpc.insecure_channel(stack.target) as channel:
        stub = pb_grpc.SubjectServiceStub(channel)
        _, call = stub.GetSubject.with_call(
            pb.GetSubjectRequest(subject_id=subject.subject_id),
            metadata=(("x-request-id", ok_id), *AUTH),
            timeout=5,
        )
        assert dict(call.trailing_metadata())["x-request-id"] == ok_id
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetSubject(
                pb.GetSubjectRequest(subject_id="a" * 26),
                metadata=(("x-request-id", error_id), *AUTH),
                timeout=5,
            )
        trailers = dict(raised.value.trailing_metadata())
        assert trailers["x-request-id"] == error_id
        assert "grpc-status-details-bin" in trailers
        _, call = stub.GetSubject.with_call(
            pb.GetSubjectRequest(subject_id=subject.subject_id),
            metadata=(("x-request-id", "has spaces; and * stars"), *AUTH),
            timeout=5,
        )
        generated = dict(call.trailing_metadata())["x-request-id"]
        assert generated != "has spaces; and * stars" and str(uuid.UUID(generated)) == generated
