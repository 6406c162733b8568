"""Record-level erasure through the gRPC API, on both stacks (SQLite + local keystore,
PostgreSQL + real OpenBao): the response says whether the old value is erased from
every database copy, the audit entries are those of the normal calls, and writes racing
the erasing calls (threads) are never lost. Old database copies:
tests/integration/test_record_erasure.py."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import pytest

from oubli_client import OubliClient
from oubli_client.errors import NotFound, OubliClientError
from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from tests.stack import TEST_TOKEN, Stack

CARD = {"card_holder": "Ada Lovelace", "card_number": "4111111111111111", "card_expiry": "12/29"}
IDENTITY = {"given_name": "Ada", "family_name": "Byron"}
CORRECTED = {"given_name": "Ada", "family_name": "Lovelace"}
CONTACT = {"email": "ada@example.org"}
#: Bounds of the race: rounds per racer, and how long a racer may take.
ROUNDS = 3
RACER_TIMEOUT = 60.0


def records_stub(stack: Stack) -> tuple[grpc.Channel, pb_grpc.RecordServiceStub]:
    """The raw stub (the Python client's update_record returns the record only)."""
    channel = grpc.insecure_channel(stack.target)
    return channel, pb_grpc.RecordServiceStub(channel)


def update(
    stub: pb_grpc.RecordServiceStub,
    sid: str,
    record_id: str,
    fields: dict[str, str],
    version: int,
    erase: bool = False,
) -> pb.UpdateRecordResponse:
    request = pb.UpdateRecordRequest(
        subject_id=sid,
        record_id=record_id,
        fields=fields,
        expected_version=version,
        erase_everywhere=erase,
    )
    response: pb.UpdateRecordResponse = stub.UpdateRecord(
        request, timeout=10, metadata=(("authorization", f"Bearer {TEST_TOKEN}"),)
    )
    return response


def subject(client: OubliClient) -> tuple[str, str, str, str]:
    """A subject with a card, an identity and a contact: (subject, card, identity, contact)."""
    sid = client.create_subject().subject_id
    client.grant_consent(sid, "card_storage")
    card = client.create_record(sid, "payment", CARD).record_id
    identity = client.create_record(sid, "identity", IDENTITY).record_id
    contact = client.create_record(sid, "contact", CONTACT).record_id
    return sid, card, identity, contact


def key_of(stack: Stack, sid: str) -> str:
    return stack.storage.subject(sid).key_id


def test_the_response_says_whether_the_old_value_is_erased_everywhere(stack: Stack) -> None:
    client = stack.client
    sid, card, identity, contact = subject(client)
    channel, stub = records_stub(stack)
    with channel:
        keys = [key_of(stack, sid)]
        # a contact, by default: rewritten in place, same key
        plain = update(stub, sid, contact, {"email": "ada@example.com"}, 1)
        assert (plain.erased_everywhere, plain.record.version) == (False, 2)
        assert key_of(stack, sid) == keys[-1]
        # a contact with the option, an identity always: a new key each, the old destroyed
        erased = update(stub, sid, contact, {"email": "ada@lovelace.example"}, 2, erase=True)
        assert (erased.erased_everywhere, erased.record.version) == (True, 3)
        assert dict(erased.record.fields) == {"email": "ada@lovelace.example"}
        keys.append(key_of(stack, sid))
        corrected = update(stub, sid, identity, CORRECTED, 1)
        assert (corrected.erased_everywhere, corrected.record.version) == (True, 2)
        keys.append(key_of(stack, sid))
        # a stale version: ABORTED, as the normal update
        with pytest.raises(grpc.RpcError) as stale:
            update(stub, sid, identity, IDENTITY, 1)
        assert stale.value.code() == grpc.StatusCode.ABORTED
    assert client.delete_record(sid, card) is True
    keys.append(key_of(stack, sid))
    usage = client.create_record(sid, "usage", {"page": "/"}).record_id
    assert client.delete_record(sid, usage) is False
    assert key_of(stack, sid) == keys[-1]

    assert len(set(keys)) == 4
    assert [stack.kms.key_exists(k) for k in keys] == [False, False, False, True]
    assert client.get_record(sid, identity, "service").fields == CORRECTED
    assert client.get_record(sid, contact, "service").fields == {"email": "ada@lovelace.example"}
    assert client.find_subject(email="ada@lovelace.example", purpose="service") == [sid]
    assert client.find_subject(email="ada@example.com", purpose="service") == []
    with pytest.raises(NotFound):
        client.get_record(sid, card, "billing")


def test_erasing_calls_are_audited_as_the_normal_calls(stack: Stack) -> None:
    """The entries name the deleted or rewritten record's category (and the fields
    written), not the categories the move re-encrypted."""
    client = stack.client
    sid, card, identity, _ = subject(client)
    client.update_record(sid, identity, CORRECTED, 1)
    client.delete_record(sid, card)

    entries = client.query_audit(subject_id=sid)
    changes = [
        (e.action, e.outcome, e.categories, e.fields)
        for e in entries
        if e.action in ("RecordService.UpdateRecord", "RecordService.DeleteRecord")
    ]
    assert changes == [
        ("RecordService.UpdateRecord", "STARTED", (), ()),
        ("RecordService.UpdateRecord", "OK", ("identity",), tuple(sorted(CORRECTED))),
        ("RecordService.DeleteRecord", "STARTED", (), ()),
        ("RecordService.DeleteRecord", "OK", ("payment",), ()),
    ]


def test_writes_racing_erasing_calls_are_never_lost(stack: Stack) -> None:
    """Threads on one subject: rectifications of the contact and of a ticket, new usage
    records, and erasing calls (the card deleted, the identity corrected, then again).
    Every acknowledged write reads back at its version; every key the subject left is
    destroyed; no racer fails but for UNAVAILABLE, retried (a call that lost its races
    wrote nothing)."""
    client = stack.client
    sid, card, identity, contact = subject(client)
    ticket = client.create_record(sid, "support", {"ticket_id": "T-1"}).record_id
    first_key = key_of(stack, sid)
    last: dict[str, tuple[dict[str, str], int]] = {}
    created: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4, timeout=RACER_TIMEOUT)

    def retried(call: Callable[[], object]) -> object:
        for _ in range(10):
            try:
                return call()
            except OubliClientError as e:
                if e.code != grpc.StatusCode.UNAVAILABLE:
                    raise
        raise AssertionError("still unavailable after 10 tries")

    def rectify(record_id: str, make: Callable[[int], dict[str, str]], rounds: int) -> None:
        version = 1
        for n in range(rounds):
            fields = make(n)
            record = retried(lambda f=fields, v=version: client.update_record(sid, record_id, f, v))
            version = record.version
            last[record_id] = (fields, version)

    def create() -> None:
        for n in range(ROUNDS):
            made = retried(lambda n=n: client.create_record(sid, "usage", {"page": f"/{n}"}))
            created.append(made.record_id)

    def erase() -> None:
        retried(lambda: client.delete_record(sid, card))
        rectify(identity, lambda n: {**CORRECTED, "company": f"Engines {n}"}, 2)

    def racer(body: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                barrier.wait()
                body()
            except BaseException as e:  # reported below
                errors.append(e)

        return threading.Thread(target=run)

    threads = [
        racer(lambda: rectify(contact, lambda n: {"email": f"race-{n}@example.org"}, ROUNDS)),
        racer(lambda: rectify(ticket, lambda n: {"ticket_id": "T-1", "message": f"{n}"}, ROUNDS)),
        racer(create),
        racer(erase),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=RACER_TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    for record_id, purpose in ((contact, "service"), (ticket, "support"), (identity, "service")):
        fields, version = last[record_id]
        record = client.get_record(sid, record_id, purpose)
        assert (record.fields, record.version) == (fields, version)
    assert last[contact][1] == ROUNDS + 1 and last[identity][1] == 3
    pages = sorted(client.get_record(sid, r, "analytics").fields["page"] for r in created)
    assert pages == [f"/{n}" for n in range(ROUNDS)]
    with pytest.raises(NotFound):
        client.get_record(sid, card, "billing")
    assert client.find_subject(email=f"race-{ROUNDS - 1}@example.org", purpose="service") == [sid]
    retired = stack.storage.ledger_key_ids(sid)
    assert first_key in retired and len(retired) == 3  # the card, two corrections
    assert not any(stack.kms.key_exists(k) for k in retired)
    assert stack.kms.key_exists(key_of(stack, sid))
