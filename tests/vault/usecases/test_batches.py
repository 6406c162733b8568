"""Batch put, get, shred and the streamed export, on both databases (unit level, the
in-memory KMS; the same calls through gRPC and real OpenBao are in tests/api)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from tests.memory_kms import InMemoryKeyManager
from vault.access import caller_scope
from vault.crypto.keycache import DataKeyCache
from vault.errors import (
    AlreadyExists,
    InvalidArgument,
    PermissionDenied,
    RecordNotFound,
    SubjectNotFound,
    SubjectShredded,
    Unavailable,
)
from vault.storage import Storage
from vault.storage.tables import RecordRow
from vault.usecases.batches import MAX_BATCH_ITEMS, BulkOps, NewRecord, RecordRead
from vault.usecases.erasure import Erasure
from vault.usecases.export import export_chunks, export_json
from vault.usecases.receipts import ShredReceipt
from vault.usecases.service import VaultService

Builder = Callable[..., VaultService]


@pytest.fixture
def vault(storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder) -> VaultService:
    return make_vault(storage, memory_kms)


@pytest.fixture
def bulk(vault: VaultService) -> BulkOps:
    return BulkOps(vault)


def _records(storage: Storage) -> int:
    with storage.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(RecordRow)).scalar() or 0)


def test_batch_put_across_subjects_then_batch_get(vault: VaultService, bulk: BulkOps) -> None:
    subjects = [vault.create_subject().subject_id for _ in range(5)]
    items = [
        NewRecord(subjects[i % 5], "support", {"message": f"ticket {i}"}, "bench")
        for i in range(20)
    ]

    created = bulk.create_records(items)

    assert [(r.subject_id, r.fields["message"]) for r in created] == [
        (i.subject_id, i.fields["message"]) for i in items
    ]
    got = bulk.get_records([RecordRead(r.subject_id, r.record_id, "support") for r in created])
    assert [g.fields for g in got if not isinstance(g, Exception)] == [r.fields for r in created]
    single = vault.get_record(created[7].subject_id, created[7].record_id, "support")
    assert single.fields == {"message": "ticket 7"}


def test_batch_put_is_all_or_nothing(vault: VaultService, bulk: BulkOps, erasure: Erasure) -> None:
    alive = vault.create_subject().subject_id
    erased = vault.create_subject().subject_id
    erasure.shred(erased)
    before = _records(vault.storage)

    with pytest.raises(SubjectShredded) as caught:
        bulk.create_records(
            [
                NewRecord(alive, "support", {"message": "a"}, "bench"),
                NewRecord(erased, "support", {"message": "b"}, "bench"),
            ]
        )

    assert caught.value.metadata["index"] == "1"
    assert _records(vault.storage) == before  # the valid item was not written either


def test_batch_put_names_the_invalid_item(vault: VaultService, bulk: BulkOps) -> None:
    sid = vault.create_subject().subject_id
    with pytest.raises(InvalidArgument) as caught:
        bulk.create_records(
            [
                NewRecord(sid, "support", {"message": "ok"}, "bench"),
                NewRecord(sid, "support", {"not_a_field": "x"}, "bench"),
            ]
        )
    assert caught.value.field.startswith("requests[1].")
    with pytest.raises(SubjectNotFound) as missing:
        bulk.create_records([NewRecord("a" * 26, "support", {"message": "x"}, "bench")])
    assert missing.value.metadata["index"] == "0"


def test_batch_put_refuses_two_singletons_of_one_subject(
    vault: VaultService, bulk: BulkOps
) -> None:
    sid = vault.create_subject().subject_id
    with pytest.raises(AlreadyExists):
        bulk.create_records(
            [
                NewRecord(sid, "identity", {"given_name": "A"}, "bench"),
                NewRecord(sid, "identity", {"given_name": "B"}, "bench"),
            ]
        )
    vault.create_record(sid, "identity", {"given_name": "A"}, "customer")
    with pytest.raises(AlreadyExists):  # one already stored: the whole batch is refused
        bulk.create_records([NewRecord(sid, "identity", {"given_name": "B"}, "bench")])
    assert _records(vault.storage) == 1


@pytest.mark.parametrize("size", [0, MAX_BATCH_ITEMS + 1])
def test_batch_size_is_bounded(bulk: BulkOps, size: int, erasure: Erasure) -> None:
    with pytest.raises(InvalidArgument):
        bulk.create_records([NewRecord("a" * 26, "support", {}, "x")] * size)
    with pytest.raises(InvalidArgument):
        bulk.get_records([RecordRead("a" * 26, "b" * 26, "support")] * size)
    with pytest.raises(InvalidArgument):
        erasure.shred_many(["a" * 26] * size)


def test_batch_get_fails_item_by_item(vault: VaultService, bulk: BulkOps, erasure: Erasure) -> None:
    sid = vault.create_subject().subject_id
    erased = vault.create_subject().subject_id
    kept = vault.create_record(sid, "support", {"message": "hi"}, "customer")
    lost = vault.create_record(erased, "support", {"message": "bye"}, "customer")
    erasure.shred(erased)

    results = bulk.get_records(
        [
            RecordRead(sid, kept.record_id, "support"),
            RecordRead(erased, lost.record_id, "support"),
            RecordRead(sid, "b" * 26, "support"),
            RecordRead(sid, kept.record_id, "marketing"),
            RecordRead("not an id", kept.record_id, "support"),
        ]
    )

    assert results[0].fields == {"message": "hi"}  # type: ignore[union-attr]
    assert isinstance(results[1], SubjectShredded)
    assert isinstance(results[2], RecordNotFound)
    assert isinstance(results[3], PermissionDenied)
    assert isinstance(results[4], InvalidArgument)


def test_batch_get_of_cold_subjects_unwraps_together(storage: Storage, make_vault: Builder) -> None:
    kms = InMemoryKeyManager()
    writer = make_vault(storage, kms)
    subjects = [writer.create_subject().subject_id for _ in range(30)]
    records = [writer.create_record(s, "support", {"message": s}, "c") for s in subjects]
    reader = make_vault(storage, kms, cache=DataKeyCache())  # a second VaultService: all cold
    batched: list[int] = []
    real_unwrap_many = kms.unwrap_many

    def counting_unwrap_many(items):  # type: ignore[no-untyped-def]
        batched.append(len(items))
        return real_unwrap_many(items)

    kms.unwrap_many = counting_unwrap_many  # type: ignore[method-assign]
    bulk = BulkOps(reader)
    before = kms.calls

    got = bulk.get_records([RecordRead(r.subject_id, r.record_id, "support") for r in records])

    assert [g.fields["message"] for g in got] == subjects  # type: ignore[union-attr]
    assert batched == [30]  # one unwrap_many for the 30 cold subjects
    assert kms.calls - before == 30  # in-memory fake: one per key, like Transit
    warm_before = kms.calls
    bulk.get_records([RecordRead(r.subject_id, r.record_id, "support") for r in records])
    assert kms.calls == warm_before  # cached: zero KMS calls


def test_batch_notes_each_subject_for_the_audit(vault: VaultService, bulk: BulkOps) -> None:
    a, b = vault.create_subject().subject_id, vault.create_subject().subject_id
    ra = vault.create_record(a, "support", {"message": "x"}, "c")
    rb = vault.create_record(b, "contact", {"email": "canary@example.org"}, "c")
    note = caller_scope.AccessNote()
    with caller_scope.noting(note):
        bulk.get_records(
            [
                RecordRead(a, ra.record_id, "support"),
                RecordRead(b, rb.record_id, "service"),
                RecordRead(b, "c" * 26, "service"),
            ]
        )
    assert note.items[(a, "support")].categories == {"support"}
    assert note.items[(a, "support")].outcome is None
    assert note.items[(b, "service")].categories == {"contact"}
    assert note.items[(b, "service")].fields == {"email"}
    assert note.items[(b, "service")].outcome == "RECORD_NOT_FOUND"


def test_batch_shred_each_subject_independently(
    vault: VaultService, bulk: BulkOps, erasure: Erasure
) -> None:
    subjects = [vault.create_subject().subject_id for _ in range(12)]
    for sid in subjects:
        vault.create_record(sid, "support", {"message": "m"}, "c")
    first = erasure.shred(subjects[0])

    results = erasure.shred_many([*subjects, "z" * 26])

    assert isinstance(results[0], ShredReceipt)
    assert results[0].key_id == first.key_id  # idempotent: the first receipt
    assert all(isinstance(r, ShredReceipt) for r in results[:12])
    assert isinstance(results[12], SubjectNotFound)
    assert _records(vault.storage) == 0
    with pytest.raises(InvalidArgument):
        erasure.shred_many([subjects[1], subjects[1]])


def test_batch_shred_reports_an_outage_per_subject(
    vault: VaultService, bulk: BulkOps, memory_kms: InMemoryKeyManager, erasure: Erasure
) -> None:
    sid = vault.create_subject().subject_id
    memory_kms.unavailable = True
    [result] = erasure.shred_many([sid])
    assert isinstance(result, Unavailable)
    memory_kms.unavailable = False
    [retried] = erasure.shred_many([sid])
    assert isinstance(retried, ShredReceipt)


def test_streamed_export_pages_and_matches_the_document(vault: VaultService) -> None:
    sid = vault.create_subject().subject_id
    vault.create_record(sid, "contact", {"email": "e@example.org", "phone": "+33 1"}, "c")
    for i in range(23):
        vault.create_record(sid, "support", {"message": f"m{i}"}, "c")
    now = vault.clock()

    chunks = list(export_chunks(vault, sid, now, page_size=5))

    assert sum(count for _, count in chunks) == 24
    assert max(count for _, count in chunks) == 5  # never more than a page in memory
    document = json.loads(b"".join(chunk for chunk, _ in chunks))
    assert document == json.loads(export_json(vault, sid, now))
    assert sorted(document["categories"]) == ["contact", "support"]
    messages = [r["fields"]["message"] for r in document["categories"]["support"]["records"]]
    assert sorted(messages) == sorted(f"m{i}" for i in range(23))
    ids = [r["record_id"] for r in document["categories"]["support"]["records"]]
    assert ids == sorted(ids)


def test_streamed_export_of_a_subject_without_records(vault: VaultService) -> None:
    sid = vault.create_subject().subject_id
    document = json.loads(export_json(vault, sid, vault.clock()))
    assert document["categories"] == {}
    assert document["subject"]["subject_id"] == sid


def test_batch_shred_keeps_invoices_under_their_hold(
    vault: VaultService, bulk: BulkOps, erasure: Erasure
) -> None:
    """A subject with records a law requires to keep has them moved to their hold
    bucket, one without is erased whole, in one batch; both end erased with their
    receipts."""
    plain = vault.create_subject().subject_id
    billed = vault.create_subject().subject_id
    vault.create_record(plain, "support", {"message": "m"}, "c")
    vault.create_record(billed, "support", {"message": "m"}, "c")
    vault.create_record(billed, "billing", {"invoice_number": "F-1", "amount": "9"}, "c")

    results = erasure.shred_many([plain, billed])

    assert all(isinstance(r, ShredReceipt) for r in results)
    assert [(r.records_deleted, r.records_retained) for r in results] == [  # type: ignore[union-attr]
        (1, 0),
        (1, 1),
    ]
    assert vault.get_subject(plain).state == "shredded"
    assert vault.get_subject(billed).state == "held"
    with pytest.raises(SubjectShredded):
        vault.get_record(plain, "a" * 26, "support")


def test_batch_shred_destroys_each_key_once_and_writes_the_ledger(
    vault: VaultService, bulk: BulkOps, memory_kms: InMemoryKeyManager, erasure: Erasure
) -> None:
    subjects = [vault.create_subject() for _ in range(5)]
    keys = [vault.subject_info(s.subject_id).key_id for s in subjects]
    before = memory_kms.calls

    erasure.shred_many([s.subject_id for s in subjects])

    assert memory_kms.calls - before == 5  # one destroy per subject key
    assert not any(memory_kms.key_exists(k) for k in keys)
    assert sorted(vault.storage.ledger_key_ids()) == sorted(keys)


def test_export_splices_each_record_as_sealed(vault: VaultService) -> None:
    """The export writes each record's decrypted canonical JSON as it is (no parse, no
    re-encoding): the document is valid JSON, holds every value exactly, each record's
    ``fields`` are byte for byte the canonical encoding, and the audit note names the
    fields read — values that look like keys, quotes, escapes and non-ASCII included."""
    sid = vault.create_subject().subject_id
    values = ['"message":"x"', 'a"b\\', "\u00e9t\u00e9 \u2603", "tab\there\nnew", '":"', "}{"]
    written = {
        vault.create_record(sid, "support", {"message": v, "channel": f"c{i}"}, "c").record_id: {
            "message": v,
            "channel": f"c{i}",
        }
        for i, v in enumerate(values)
    }
    contact = {"email": "e@example.org", "city": 'Saint-"Quote"'}
    written[vault.create_record(sid, "contact", contact, "c").record_id] = contact
    note = caller_scope.AccessNote()
    with caller_scope.noting(note):
        raw = export_json(vault, sid, vault.clock())

    document = json.loads(raw)  # valid JSON
    got = {
        r["record_id"]: r["fields"]
        for category in document["categories"].values()
        for r in category["records"]
    }
    assert got == written
    for record_id, fields in written.items():
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert f'"record_id": "{record_id}"'.encode() in raw
        assert f'"fields": {canonical}}}'.encode() in raw  # as sealed, not re-encoded
    assert note.categories == {"support", "contact"}
    assert note.fields == {"message", "channel", "email", "city"}
