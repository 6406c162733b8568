"""The domain service on both databases, with the in-memory KMS (unit level).

KMS call counting (the in-memory KMS's counter), KMS outages (its ``unavailable``
switch) and a shred crashing half-way (a monkeypatched storage step) are checked here.
"Another replica" here is a second VaultService, with its own DEK cache, in the same
process over the same database. Against real OpenBao: an outage, leaving an
interrupted shred refused, in tests/integration/test_openbao_outage.py; a shred through
one server process refused by another at once in tests/integration/test_two_processes.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.memory_kms import InMemoryKeyManager
from tests.stack import erasure_of
from vault.crypto.keycache import DataKeyCache
from vault.errors import (
    AlreadyExists,
    InvalidArgument,
    KeyDestroyedError,
    RecordNotFound,
    SubjectNotFound,
    SubjectShredded,
    Unavailable,
    VersionConflict,
)
from vault.storage import Storage
from vault.storage.tables import RecordRow, SubjectRow
from vault.usecases.service import VaultService

Builder = Callable[..., VaultService]


@pytest.fixture
def vault(storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder) -> VaultService:
    return make_vault(storage, memory_kms)


def test_record_lifecycle(vault: VaultService) -> None:
    subject = vault.create_subject()
    created = vault.create_record(
        subject.subject_id, "contact", {"email": "ada@example.org", "phone": "+33 1"}, "customer"
    )
    assert created.version == 1
    got = vault.get_record(subject.subject_id, created.record_id, "service")
    assert got.fields == {"email": "ada@example.org", "phone": "+33 1"}
    assert got.origin == "customer"
    updated = vault.update_record(
        subject.subject_id, created.record_id, {"email": "ada@example.com"}, 1, "support"
    )
    assert updated.version == 2 and updated.origin == "support"
    assert vault.get_record(subject.subject_id, created.record_id, "service").fields == {
        "email": "ada@example.com"
    }
    assert vault.get_subject(subject.subject_id).record_count == 1
    vault.delete_record(subject.subject_id, created.record_id)
    with pytest.raises(RecordNotFound):
        vault.get_record(subject.subject_id, created.record_id, "service")
    with pytest.raises(RecordNotFound):
        vault.delete_record(subject.subject_id, created.record_id)


def test_stale_version_is_a_conflict(vault: VaultService) -> None:
    subject = vault.create_subject()
    record = vault.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "customer")
    vault.update_record(subject.subject_id, record.record_id, {"email": "b@b.c"}, 1)
    with pytest.raises(VersionConflict):
        vault.update_record(subject.subject_id, record.record_id, {"email": "c@b.c"}, 1)
    assert vault.get_record(subject.subject_id, record.record_id, "service").fields == {
        "email": "b@b.c"
    }


def test_profile_category_holds_one_record(vault: VaultService) -> None:
    subject = vault.create_subject()
    vault.create_record(subject.subject_id, "identity", {"given_name": "Ada"}, "customer")
    with pytest.raises(AlreadyExists):
        vault.create_record(subject.subject_id, "identity", {"given_name": "Bob"}, "customer")
    # event categories hold many
    for n in range(3):
        vault.create_record(subject.subject_id, "billing", {"amount": str(n)}, "billing")
    assert len(vault.list_records(subject.subject_id, "billing", purpose="service").records) == 3


def test_list_pages_through_every_record(vault: VaultService) -> None:
    subject = vault.create_subject()
    ids = {
        vault.create_record(subject.subject_id, "usage", {"page": f"/p{n}"}, "web").record_id
        for n in range(7)
    }
    seen: list[str] = []
    token = ""
    while True:
        page = vault.list_records(
            subject.subject_id, page_size=3, page_token=token, purpose="service"
        )
        assert len(page.records) <= 3
        seen += [r.record_id for r in page.records]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids)


@pytest.mark.parametrize(
    ("category", "fields", "field"),
    [
        ("nope", {"email": "x"}, "category"),
        ("Contact", {"email": "x"}, "category"),
        ("contact", {}, "fields"),
        ("contact", {"email": ""}, "fields.email"),
        ("contact", {"shoe_size": "42"}, "fields"),
        ("contact", {"Email": "x"}, "fields"),
        ("contact", {"email": "x" * (64 * 1024 + 1)}, "fields.email"),
        ("contact", {f"f{n}": "x" for n in range(65)}, "fields"),
    ],
)
def test_bad_input_is_invalid_argument(
    vault: VaultService, category: str, fields: dict[str, str], field: str
) -> None:
    subject = vault.create_subject()
    with pytest.raises(InvalidArgument) as raised:
        vault.create_record(subject.subject_id, category, fields, "customer")
    assert raised.value.field == field
    for value in fields.values():
        assert value not in str(raised.value) or len(value) < 2


@pytest.mark.parametrize("bad_id", ["", "x", "A" * 26, "../../etc/passwd", "1" * 26, "a" * 27])
def test_malformed_ids_are_invalid_argument(vault: VaultService, bad_id: str) -> None:
    with pytest.raises(InvalidArgument):
        vault.get_subject(bad_id)
    subject = vault.create_subject()
    with pytest.raises(InvalidArgument):
        vault.get_record(subject.subject_id, bad_id, "service")


def test_unknown_subject_is_not_found(vault: VaultService) -> None:
    with pytest.raises(SubjectNotFound):
        vault.get_subject("a" * 26)
    with pytest.raises(SubjectNotFound):
        vault.create_record("a" * 26, "contact", {"email": "x"}, "customer")


def test_cached_subject_makes_no_kms_call(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    vault = make_vault(storage, memory_kms)
    subject = vault.create_subject()
    record = vault.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "customer")
    vault.create_record(subject.subject_id, "usage", {"page": "/"}, "web")  # makes the bucket
    before = memory_kms.calls
    for _ in range(5):
        vault.get_record(subject.subject_id, record.record_id, "service")
        vault.create_record(subject.subject_id, "usage", {"page": "/"}, "web")
    vault.list_records(subject.subject_id, purpose="service")
    assert memory_kms.calls == before


def test_cold_subject_costs_one_unwrap_then_none(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    writer = make_vault(storage, memory_kms)
    subject = writer.create_subject()
    record = writer.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "customer")
    reader = make_vault(storage, memory_kms)  # a second VaultService, empty cache
    before = memory_kms.calls
    reader.get_record(subject.subject_id, record.record_id, "service")
    assert memory_kms.calls == before + 1
    reader.get_record(subject.subject_id, record.record_id, "service")
    reader.list_records(subject.subject_id, purpose="service")
    assert memory_kms.calls == before + 1


def test_cache_expiry_costs_one_more_unwrap(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    now = [0.0]
    vault = make_vault(storage, memory_kms, cache=DataKeyCache(100, 60, timer=lambda: now[0]))
    subject = vault.create_subject()
    record = vault.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "customer")
    before = memory_kms.calls
    now[0] = 61.0
    vault.get_record(subject.subject_id, record.record_id, "service")
    assert memory_kms.calls == before + 1


def test_shred_destroys_key_rows_and_refuses_subject(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    clock_time = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    vault = make_vault(storage, memory_kms, clock=lambda: clock_time)
    subject = vault.create_subject()
    other = vault.create_subject()
    for n in range(3):
        vault.create_record(subject.subject_id, "usage", {"page": f"/{n}"}, "web")
    kept = vault.create_record(other.subject_id, "usage", {"page": "/"}, "web")
    receipt = erasure_of(vault).shred(subject.subject_id)
    assert receipt.records_deleted == 3
    assert receipt.shredded_at == clock_time
    assert receipt.kms_backend == "memory"
    assert not memory_kms.key_exists(receipt.key_id)
    with storage.engine.connect() as c:
        assert not c.execute(
            select(RecordRow).where(RecordRow.subject_id == subject.subject_id)
        ).all()
        row = c.execute(select(SubjectRow).where(SubjectRow.subject_id == subject.subject_id)).one()
        assert row.state == "shredded" and row.wrapped_dek is None
    with pytest.raises(SubjectShredded):
        vault.create_record(subject.subject_id, "usage", {"page": "/"}, "web")
    with pytest.raises(SubjectShredded):
        vault.list_records(subject.subject_id, purpose="service")
    assert vault.get_subject(subject.subject_id).state == "shredded"
    # a second shred is OK and returns the same receipt
    assert erasure_of(vault).shred(subject.subject_id) == receipt
    # other subjects are untouched
    assert vault.get_record(other.subject_id, kept.record_id, "service").fields == {"page": "/"}


def test_shred_is_refused_by_another_replica_with_a_warm_cache(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    """Two VaultService objects in this process, each with its own DEK cache, over one
    database stand for two replicas (two processes: tests/integration/test_two_processes.py)."""
    replica_a = make_vault(storage, memory_kms)
    replica_b = make_vault(storage, memory_kms)
    subject = replica_a.create_subject()
    record = replica_a.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "x")
    replica_b.get_record(subject.subject_id, record.record_id, "service")  # B caches the DEK
    erasure_of(replica_a).shred(subject.subject_id)
    with pytest.raises(SubjectShredded):
        replica_b.get_record(subject.subject_id, record.record_id, "service")


def test_shred_interrupted_by_kms_outage_refuses_then_completes_on_retry(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    vault = make_vault(storage, memory_kms)
    subject = vault.create_subject()
    record = vault.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "x")
    memory_kms.unavailable = True
    with pytest.raises(Unavailable):
        erasure_of(vault).shred(subject.subject_id)
    memory_kms.unavailable = False
    # half-done: refused already, key still there
    assert vault.get_subject(subject.subject_id).state == "shredding"
    with pytest.raises(SubjectShredded):
        vault.get_record(subject.subject_id, record.record_id, "service")
    receipt = erasure_of(vault).shred(subject.subject_id)
    assert receipt.records_deleted == 1
    assert not memory_kms.key_exists(receipt.key_id)


def test_shred_interrupted_after_key_destruction_completes_on_retry(
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    make_vault: Builder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vault = make_vault(storage, memory_kms)
    subject = vault.create_subject()
    vault.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "x")

    def crash(*args: object, **kwargs: object) -> None:
        raise Unavailable("database went away")

    monkeypatch.setattr(storage, "finish_shreds", crash)
    with pytest.raises(Unavailable):
        erasure_of(vault).shred(subject.subject_id)
    monkeypatch.undo()
    receipt = erasure_of(vault).shred(subject.subject_id)  # key already gone: still completes
    assert receipt.records_deleted == 1
    assert vault.get_subject(subject.subject_id).state == "shredded"


def test_kms_outage_on_create_writes_nothing(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    vault = make_vault(storage, memory_kms)
    memory_kms.unavailable = True
    with pytest.raises(Unavailable):
        vault.create_subject()
    with storage.engine.connect() as c:
        assert c.execute(select(SubjectRow)).all() == []


def test_kms_outage_on_cold_read_is_unavailable(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    writer = make_vault(storage, memory_kms)
    subject = writer.create_subject()
    record = writer.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "x")
    memory_kms.unavailable = True
    with pytest.raises(Unavailable):
        make_vault(storage, memory_kms).get_record(subject.subject_id, record.record_id, "service")


def test_database_copy_without_key_is_key_destroyed(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    """The KMS forgot the key but the database still says active (an old backup)."""
    vault = make_vault(storage, memory_kms)
    subject = vault.create_subject()
    record = vault.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "x")
    info = storage.subject(subject.subject_id)
    memory_kms.destroy_key(info.key_id)
    with pytest.raises(KeyDestroyedError):
        make_vault(storage, memory_kms).get_record(subject.subject_id, record.record_id, "service")


def test_database_outage_is_unavailable(
    memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    from vault.storage import make_engine

    dead = Storage(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"))
    vault = make_vault(dead, memory_kms)
    with pytest.raises(Unavailable):
        vault.get_subject("a" * 26)
    with pytest.raises(Unavailable):
        vault.create_subject()
    # the key made for the subject that could not be stored was destroyed again
    assert memory_kms.calls >= 3


def test_times_come_from_the_injected_clock(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder
) -> None:
    moments = iter(datetime(2030, 1, 1, tzinfo=UTC) + timedelta(minutes=n) for n in range(10))
    vault = make_vault(storage, memory_kms, clock=lambda: next(moments))
    subject = vault.create_subject()
    # identity: no blind index and no retention bucket to make (each reads the clock)
    record = vault.create_record(subject.subject_id, "identity", {"given_name": "A"}, "x")
    updated = vault.update_record(subject.subject_id, record.record_id, {"given_name": "B"}, 1)
    stored = vault.get_record(subject.subject_id, record.record_id, "service")
    assert stored.created_at == datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
    assert stored.updated_at == updated.updated_at == datetime(2030, 1, 1, 0, 2, tzinfo=UTC)


def test_write_racing_a_shred_leaves_no_row(
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    make_vault: Builder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create that passed the state check before a shred began writes nothing after it."""
    vault = make_vault(storage, memory_kms)
    subject = vault.create_subject()
    record = vault.create_record(subject.subject_id, "contact", {"email": "a@b.c"}, "x")
    real_dek = vault.crypto.subject_dek

    def dek_then_shred_starts(info, key_version=None):  # type: ignore[no-untyped-def]
        dek = real_dek(info, key_version)
        storage.mark_shredding([subject.subject_id], datetime.now(UTC))
        return dek

    monkeypatch.setattr(vault.crypto, "subject_dek", dek_then_shred_starts)
    with pytest.raises(SubjectShredded):
        vault.create_record(subject.subject_id, "usage", {"page": "/"}, "web")
    with pytest.raises(SubjectShredded):
        vault.update_record(subject.subject_id, record.record_id, {"email": "b@b.c"}, 1)
    monkeypatch.undo()
    assert storage.record_count(subject.subject_id) == 1
    assert erasure_of(vault).shred(subject.subject_id).records_deleted == 1


def test_largest_record_of_escaped_characters_round_trips(vault: VaultService) -> None:
    """Control characters grow 6x in JSON; a record within the limits still fits."""
    subject = vault.create_subject()
    nasty = "\x01" * (64 * 1024 - 20)
    fields = {"message": nasty, "subject_line": nasty, "channel": nasty, "ticket_id": nasty}
    record = vault.create_record(subject.subject_id, "support", fields, "support")
    assert vault.get_record(subject.subject_id, record.record_id, "support").fields == fields
