"""Rotation of the blind-index key (vault/usecases/index_rotation.py): tags recomputed
under a new generation, the old key destroyed, writes and lookups of replicas that do
not know the new generation yet, resumption, dry run; on SQLite and PostgreSQL with the
in-memory KMS, once with real OpenBao and PostgreSQL, and killed at its fault points."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from kms.base import KeyDestroyed, KeyManager
from kms.local_keystore import LocalKeystore
from tests.clock import FakeClock
from tests.memory_kms import InMemoryKeyManager
from tests.stack import erasure_of, scratch_ledger
from vault.catalog import Catalog
from vault.clock import Clock, utc_now
from vault.crypto.blind_index import INDEXED_FIELDS, BlindIndex, IndexKeyStore
from vault.crypto.record_crypto import RecordCrypto
from vault.errors import FailedPrecondition, InvalidArgument, KeyDestroyedError
from vault.storage import Storage, make_engine, migrate
from vault.storage.tables import BlindIndexRow, ServiceKeyRow
from vault.usecases.erasure_ledger import RETIRED, ErasureLedger
from vault.usecases.index_rotation import INDEXED_CATEGORIES, IndexKeyRotation
from vault.usecases.key_rotation import RotationKind, RotationReport
from vault.usecases.lookup import SubjectFinder
from vault.usecases.restore_fence import RestoreFence
from vault.usecases.service import VaultService

ROOT = Path(__file__).resolve().parents[3]
YEAR = timedelta(days=365)
#: Wide tags: no coincidence among the few rows of a test, so "matches nothing" is exact.
BITS = 31


@dataclass
class Person:
    subject_id: str
    contact_id: str
    email: str
    phone: str
    credentials_id: str
    recovery: str


def make(
    storage: Storage, kms: KeyManager, clock: Clock, ledger: ErasureLedger | None = None
) -> VaultService:
    """A replica's VaultService over ``storage`` and ``kms`` (its own DEK cache)."""
    crypto = RecordCrypto(storage, kms, clock=clock)
    return VaultService(
        storage,
        crypto,
        Catalog.load(),
        ledger=ledger or scratch_ledger(clock),
        clock=clock,
        lookup_bits=BITS,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 15, tzinfo=UTC))


@pytest.fixture
def vault(storage: Storage, memory_kms: InMemoryKeyManager, clock: FakeClock) -> VaultService:
    return make(storage, memory_kms, clock)


def populate(vault: VaultService, n: int, tag: str = "p") -> list[Person]:
    people = []
    for i in range(n):
        sid = vault.create_subject().subject_id
        email, recovery = f"{tag}{i}@example.org", f"{tag}{i}@backup.example"
        phone = f"+33{len(tag)}{i:08d}"  # distinct across tags
        contact = vault.create_record(sid, "contact", {"email": email, "phone": phone}, "c")
        creds = vault.create_record(sid, "credentials", {"recovery_email": recovery}, "c")
        vault.create_record(sid, "identity", {"given_name": f"N{i}"}, "c")  # not indexed
        people.append(Person(sid, contact.record_id, email, phone, creds.record_id, recovery))
    return people


def find(vault: VaultService, kind: str, value: str) -> list[str]:
    return SubjectFinder(vault).find(kind, value, "service")


def assert_all_found(vault: VaultService, people: list[Person]) -> None:
    for p in people:
        assert find(vault, "email", p.email) == [p.subject_id]
        assert find(vault, "phone", p.phone) == [p.subject_id]
        assert find(vault, "email", p.recovery) == [p.subject_id]


def index_rows(storage: Storage) -> list[tuple[str, str, str, int, int]]:
    with storage.engine.connect() as c:
        rows = c.execute(
            select(
                BlindIndexRow.subject_id,
                BlindIndexRow.record_id,
                BlindIndexRow.kind,
                BlindIndexRow.generation,
                BlindIndexRow.tag,
            ).order_by(BlindIndexRow.subject_id, BlindIndexRow.record_id, BlindIndexRow.kind)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def service_key_rows(storage: Storage) -> list[tuple[str, str, bytes]]:
    with storage.engine.connect() as c:
        rows = c.execute(
            select(ServiceKeyRow.name, ServiceKeyRow.key_id, ServiceKeyRow.wrapped_dek).order_by(
                ServiceKeyRow.name
            )
        ).all()
    return [(row.name, row.key_id, bytes(row.wrapped_dek)) for row in rows]


def generations(storage: Storage) -> set[int]:
    return {row[3] for row in index_rows(storage)}


def rotate(vault: VaultService, **options: Any) -> RotationReport:
    settings: dict[str, Any] = {"dry_run": False, "force": False, "cryptoperiod": YEAR}
    return IndexKeyRotation(vault).rotate(**(settings | options))


# --- a whole rotation ----------------------------------------------------------------


def test_rotation_reindexes_every_record_and_destroys_the_old_key(
    storage: Storage, vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    people = populate(vault, 7)
    before = index_rows(storage)
    assert len(before) == 3 * 7 and generations(storage) == {1}
    [(name, old_key, _)] = service_key_rows(storage)
    assert name == "lookup-index" and memory_kms.key_exists(old_key)

    calls = memory_kms.calls
    report = rotate(vault, force=True, batch_size=3)
    assert report == RotationReport(
        RotationKind.INDEX,
        False,
        due=1,
        rotated=1,
        records=2 * 7,  # contact and credentials of each; identity is not indexed
        kms_calls=memory_kms.calls - calls,
    )
    # create_key, generate_data_key, unwrap of the new key, destroy_key of the old one
    assert report.kms_calls >= 4

    after = index_rows(storage)
    assert generations(storage) == {2}
    assert [row[:3] for row in after] == [row[:3] for row in before]  # the same rows, re-tagged
    [(name, new_key, _)] = service_key_rows(storage)
    assert name == "lookup-index.2" and new_key != old_key
    assert not memory_kms.key_exists(old_key) and memory_kms.key_exists(new_key)
    assert vault.lookup_index().generations == (2,)
    assert_all_found(vault, people)
    assert_all_found(make(storage, memory_kms, vault.clock), people)  # a fresh replica too

    # The old key is in both ledgers, with no subject: the restore fence erases no one.
    [entry] = [e for e in vault.ledger.entries() if e.key_id == old_key]
    assert (entry.kind, entry.subject_id) == (RETIRED, None)
    assert (old_key, "retired", None) in storage.key_ledger()
    assert storage.ledger_position() == entry.seq
    fence = RestoreFence(erasure_of(vault))
    plan = fence.plan()
    assert plan.keys_to_destroy == [] and plan.subjects_to_erase == []
    assert plan.keys_to_record == []
    fence.run()
    assert {vault.get_subject(p.subject_id).state for p in people} == {"active"}

    calls = memory_kms.calls
    assert rotate(vault) == RotationReport(RotationKind.INDEX, False)  # not due any more
    assert memory_kms.calls == calls + 1  # the live key's existence (a restored copy's is gone)


def test_an_old_database_copy_matches_nothing_and_its_index_key_is_gone(
    storage: Storage, vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    people = populate(vault, 4)
    copy_rows, copy_keys = index_rows(storage), service_key_rows(storage)  # the "backup"
    index = vault.lookup_index()
    values = [(k, v) for p in people for k, v in (("email", p.email), ("phone", p.phone))]
    values += [("email", p.recovery) for p in people]
    old_tags = {(kind, index.tag(kind, value, 1)) for kind, value in values}
    assert {(row[2], row[4]) for row in copy_rows} == old_tags  # the copy's tags: the old key's

    assert rotate(vault, force=True).rotated == 1

    live = vault.lookup_index()
    assert live.generations == (2,)
    new_tags = {(kind, live.tag(kind, value)) for kind, value in values}
    assert {(row[2], row[4]) for row in index_rows(storage)} == new_tags
    # Under the live key, not one of the copy's tags matches, whatever its generation.
    assert {(row[2], row[4]) for row in copy_rows}.isdisjoint(new_tags)
    # And the key that made them cannot be had again: the copy's wrapped DEK is dead.
    [(name, key_id, wrapped)] = copy_keys
    assert name == "lookup-index"
    with pytest.raises(KeyDestroyed):
        memory_kms.unwrap(key_id, wrapped)


def test_a_sqlite_file_copy_cannot_be_looked_up_after_rotation(
    sqlite_url: str, tmp_path: Path, memory_kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    """A copy of the database file taken before the rotation, opened by a server: its
    lookups need the old index key, which the KMS no longer has."""
    storage = opened(sqlite_url)
    vault = make(storage, memory_kms, clock)
    [person] = populate(vault, 1)
    backup = tmp_path / "backup.db"
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as live_db:
        with sqlite3.connect(backup) as copy_db:
            live_db.backup(copy_db)
        copy_db.close()
    assert rotate(vault, force=True).rotated == 1
    assert_all_found(vault, [person])

    copy = opened(f"sqlite:///{backup}")
    old_server = make(copy, memory_kms, clock)
    with pytest.raises(KeyDestroyedError):
        find(old_server, "email", person.email)
    assert old_server.get_record(person.subject_id, person.contact_id, "service").fields == {
        "email": person.email,
        "phone": person.phone,
    }  # the records themselves read as before
    with pytest.raises(KeyDestroyedError):  # stored, then its indexing fails (keys.md)
        newcomer = old_server.create_subject().subject_id
        old_server.create_record(newcomer, "contact", {"city": "Paris"}, "c")
    # The copy's rows are all of the retired generation: none is the live key's tag.
    live_tag = vault.lookup_index().tag("email", person.email)
    assert generations(copy) == {1}
    assert ("email", live_tag) not in {(row[2], row[4]) for row in index_rows(copy)}

    # The runbook's step after such a restore: a pass forgets the lost generation and
    # indexes everything again under a new one (above it: a name never used before).
    assert rotate(old_server, dry_run=True).rotated == 0  # a dry run calls no KMS
    report = rotate(old_server)
    assert (report.rotated, report.failed, report.remaining, report.records) == (1, 0, 0, 2)
    assert generations(copy) == {2}
    repaired = make(copy, memory_kms, clock)  # a server started after the repair
    assert find(repaired, "email", person.email) == [person.subject_id]
    other = repaired.create_subject().subject_id
    repaired.create_record(other, "contact", {"email": "new@example.org"}, "c")
    assert find(repaired, "email", "new@example.org") == [other]
    assert rotate(repaired) == RotationReport(RotationKind.INDEX, False)  # nothing due
    copy.engine.dispose()
    storage.engine.dispose()


def opened(url: str) -> Storage:
    engine = make_engine(url)
    migrate(engine)
    return Storage(engine)


# --- replicas that do not know the new generation --------------------------------------


def test_a_replica_that_does_not_know_the_new_generation_writes_and_finds_under_it(
    storage: Storage, vault: VaultService, memory_kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    people = populate(vault, 4)
    writer = make(storage, memory_kms, clock)  # another replica, started before
    reader = make(storage, memory_kms, clock)
    assert writer.lookup_index().generations == (1,) == reader.lookup_index().generations

    first = rotate(vault, force=True, limit=1)  # the new generation exists, one record done
    assert (first.rotated, first.remaining, first.records) == (0, 1, 1)
    assert writer.lookup_index().generations == (1,)  # nobody told it

    # Its next write finds out in its transaction, loads the new key, writes both.
    [newcomer] = populate(writer, 1, tag="new")
    assert writer.lookup_index().generations == (1, 2)
    rows = [row for row in index_rows(storage) if row[0] == newcomer.subject_id]
    assert {row[3] for row in rows} == {1, 2} and len(rows) == 6
    moved = "moved@example.org"
    writer.update_record(people[1].subject_id, people[1].contact_id, {"email": moved}, 1)
    rows = [row for row in index_rows(storage) if row[1] == people[1].contact_id]
    assert sorted((row[2], row[3]) for row in rows) == [("email", 1), ("email", 2)]

    # A replica's lookup finds out too; records of either generation are found.
    assert find(reader, "email", newcomer.email) == [newcomer.subject_id]
    assert reader.lookup_index().generations == (1, 2)
    assert find(reader, "email", moved) == [people[1].subject_id]
    assert find(reader, "email", people[1].email) == []

    done = rotate(vault)  # under way: resumed without force
    assert (done.due, done.rotated, done.remaining) == (1, 1, 0)
    assert generations(storage) == {2}

    # The writer still holds the retired key: its next write drops it, writes no row of it.
    assert writer.lookup_index().generations == (1, 2)
    writer.update_record(people[2].subject_id, people[2].contact_id, {"email": "x@example.org"}, 1)
    assert writer.lookup_index().generations == (2,)
    assert generations(storage) == {2}
    people[1].email, people[2].email = moved, "x@example.org"
    people[1].phone = people[2].phone = ""
    for replica in (vault, writer, reader):
        for p in [*people, newcomer]:
            assert find(replica, "email", p.email) == [p.subject_id]
            assert find(replica, "email", p.recovery) == [p.subject_id]
            if p.phone:
                assert find(replica, "phone", p.phone) == [p.subject_id]


def test_a_stale_write_after_the_backfill_holds_the_retirement_back(
    storage: Storage, vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    """What a PostgreSQL writer that checked the generations just before the new one
    was committed could leave: a record with rows of the old generation only, written
    after the backfill. The retirement's transaction finds it and retires nothing; the
    next pass re-indexes it, then retires."""
    people = populate(vault, 3)
    real = storage.retire_index_generations
    stale = people[0].contact_id

    def after_a_stale_write(*args: Any, **kwargs: Any) -> bool:
        with storage.engine.begin() as c:
            c.execute(
                text("DELETE FROM blind_index WHERE record_id = :r AND generation = 2"),
                {"r": stale},
            )
        return real(*args, **kwargs)

    storage.retire_index_generations = after_a_stale_write  # type: ignore[method-assign]
    [(_, old_key, _)] = service_key_rows(storage)
    report = rotate(vault, force=True)
    assert (report.rotated, report.remaining, report.failed) == (0, 1, 0)
    assert memory_kms.key_exists(old_key)
    assert [row[0] for row in service_key_rows(storage)] == ["lookup-index", "lookup-index.2"]
    assert_all_found(vault, people)  # the old generation still finds the stale record

    storage.retire_index_generations = real  # type: ignore[method-assign]
    report = rotate(vault)
    assert (report.records, report.rotated, report.remaining) == (1, 1, 0)
    assert not memory_kms.key_exists(old_key)
    assert generations(storage) == {2}
    assert_all_found(vault, people)


def test_concurrent_writers_during_a_rotation_leave_every_record_indexed(
    storage: Storage, vault: VaultService, memory_kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    people = populate(vault, 6)
    replicas = [make(storage, memory_kms, clock) for _ in range(2)]
    for replica in replicas:
        replica.lookup_index()  # started before the rotation: generation 1 only
    current = {p.subject_id: p.email for p in people}
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(replica: VaultService, mine: list[Person]) -> None:
        try:
            after = 0
            for n in range(1, 2000):  # bounded; two rounds go on after the rotation ends
                for p in mine:
                    email = f"{p.subject_id[-6:].lower()}.{n}@example.org"
                    replica.update_record(p.subject_id, p.contact_id, {"email": email}, n)
                    current[p.subject_id] = email
                if stop.is_set():
                    after += 1
                    if after == 2:
                        return
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [
        threading.Thread(target=write, args=(replica, people[i::2]))
        for i, replica in enumerate(replicas)
    ]
    for t in threads:
        t.start()
    reports = []
    for _ in range(40):  # bounded: passes of two records until the rotation is done
        reports.append(rotate(vault, force=not reports, batch_size=2, limit=2))
        if reports[-1].remaining == 0:
            break
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert reports[-1].remaining == 0 and sum(r.rotated for r in reports) == 1
    for replica in replicas:  # each wrote after the retirement and dropped the old key
        assert replica.lookup_index().generations == (2,)
    assert generations(storage) == {2}
    for replica in (vault, *replicas):
        for p in people:
            assert find(replica, "email", current[p.subject_id]) == [p.subject_id]
            assert find(replica, "email", p.email) == []  # the first address, replaced
            assert find(replica, "email", p.recovery) == [p.subject_id]


# --- passes ------------------------------------------------------------------------------


def test_a_limited_pass_resumes_where_the_last_one_stopped(
    storage: Storage, vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    people = populate(vault, 5)  # 10 indexed records
    first = rotate(vault, force=True, limit=4, batch_size=3)
    assert (first.due, first.records, first.rotated, first.remaining) == (1, 4, 0, 1)
    assert storage.index_backlog_count(2, INDEXED_CATEGORIES) == 6
    keys = service_key_rows(storage)
    assert [row[0] for row in keys] == ["lookup-index", "lookup-index.2"]
    assert_all_found(vault, people)  # mid-rotation: each record under one generation or both

    # Under way: due without force, however young the key; the new key is not made again.
    second = rotate(vault, limit=4)
    assert (second.due, second.records, second.rotated, second.remaining) == (1, 4, 0, 1)
    assert service_key_rows(storage) == keys
    assert storage.index_backlog_count(2, INDEXED_CATEGORIES) == 2

    third = rotate(vault, limit=4)
    assert (third.records, third.rotated, third.remaining) == (2, 1, 0)
    # No record was done twice: the backlog is the progress.
    assert first.records + second.records + third.records == 10
    assert generations(storage) == {2}
    assert not memory_kms.key_exists(keys[0][1])
    assert_all_found(vault, people)


def test_a_pass_limited_to_nothing_makes_the_new_generation_only(
    storage: Storage, vault: VaultService
) -> None:
    people = populate(vault, 2)
    report = rotate(vault, force=True, limit=0)
    assert (report.due, report.records, report.rotated, report.remaining) == (1, 0, 0, 1)
    assert [row[0] for row in service_key_rows(storage)] == ["lookup-index", "lookup-index.2"]
    assert generations(storage) == {1}
    assert_all_found(vault, people)
    assert rotate(vault).rotated == 1
    assert_all_found(vault, people)


def test_dry_run_changes_nothing_and_calls_no_kms(
    storage: Storage, vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    populate(vault, 3)
    rows, keys, calls = index_rows(storage), service_key_rows(storage), memory_kms.calls
    report = rotate(vault, dry_run=True, force=True)
    assert report == RotationReport(RotationKind.INDEX, True, due=1, records=6)
    limited = rotate(vault, dry_run=True, force=True, limit=2)
    assert limited == RotationReport(RotationKind.INDEX, True, due=1, records=2, remaining=1)
    assert rotate(vault, dry_run=True) == RotationReport(RotationKind.INDEX, True)  # not due
    assert (index_rows(storage), service_key_rows(storage)) == (rows, keys)
    assert memory_kms.calls == calls

    rotate(vault, force=True, limit=4)  # under way: a dry run tells what is left
    rows, keys, calls = index_rows(storage), service_key_rows(storage), memory_kms.calls
    left = rotate(vault, dry_run=True)
    assert left == RotationReport(RotationKind.INDEX, True, due=1, records=2)
    assert (index_rows(storage), service_key_rows(storage)) == (rows, keys)
    assert memory_kms.calls == calls


def test_due_at_the_end_of_the_cryptoperiod(
    storage: Storage, vault: VaultService, clock: FakeClock
) -> None:
    people = populate(vault, 1)
    assert rotate(vault).due == 0
    clock.advance(days=364)
    assert rotate(vault).due == 0
    clock.advance(days=1)
    report = rotate(vault)
    assert (report.due, report.rotated) == (1, 1)
    assert rotate(vault).due == 0  # the new key is as young as the clock
    clock.advance(days=30)
    assert rotate(vault, cryptoperiod=timedelta(days=30)).rotated == 1
    assert [row[0] for row in service_key_rows(storage)] == ["lookup-index.3"]
    assert_all_found(vault, people)


def test_nothing_to_rotate_before_the_first_index_key(
    storage: Storage, vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    vault.create_subject()
    calls = memory_kms.calls
    assert rotate(vault, force=True) == RotationReport(RotationKind.INDEX, False)
    assert memory_kms.calls == calls and service_key_rows(storage) == []


def test_bad_arguments_are_refused(vault: VaultService) -> None:
    with pytest.raises(InvalidArgument):
        rotate(vault, batch_size=0)
    with pytest.raises(InvalidArgument):
        rotate(vault, limit=-1)


def test_index_key_names_and_generations() -> None:
    from vault.storage.blind_index import index_key_generation, index_key_name

    assert [index_key_name(g) for g in (1, 2, 12)] == [
        "lookup-index",
        "lookup-index.2",
        "lookup-index.12",
    ]
    for generation in (1, 2, 12):
        assert index_key_generation(index_key_name(generation)) == generation
    for other in ("lookup-index.1", "lookup-index.02", "lookup-index.x", "lookup-indexes", "audit"):
        assert index_key_generation(other) is None
    with pytest.raises(ValueError):
        index_key_name(0)
    assert set(INDEXED_CATEGORIES) == set(INDEXED_FIELDS)


def test_an_index_that_cannot_reload_refuses_a_rotated_key(
    storage: Storage, vault: VaultService
) -> None:
    [person] = populate(vault, 1)
    fixed = BlindIndex(storage, bytes(range(32)), bits=BITS)  # no reload
    rotate(vault, force=True)
    with pytest.raises(FailedPrecondition) as caught:
        fixed.index(person.subject_id, person.contact_id, {"email": person.email})
    assert caught.value.reason == "INDEX_KEY_ROTATED"
    assert generations(storage) == {2}


def test_load_generations_unwraps_only_new_generations(
    storage: Storage, vault: VaultService, memory_kms: InMemoryKeyManager
) -> None:
    populate(vault, 1)
    store = IndexKeyStore(storage)
    known = store.load_generations(memory_kms)
    assert list(known) == [1]
    rotate(vault, force=True, limit=0)
    calls = memory_kms.calls
    both = store.load_generations(memory_kms, known)
    assert list(both) == [1, 2] and both[1] == known[1]
    assert memory_kms.calls - calls == 1  # generation 2's unwrap only


# --- real OpenBao and PostgreSQL ------------------------------------------------------------


def test_rotation_with_real_openbao_and_postgresql(
    pg_url: str, vault_kms: KeyManager, clock: FakeClock
) -> None:
    storage = opened(pg_url)
    try:
        vault = make(storage, vault_kms, clock)
        people = populate(vault, 3)
        copy_rows, copy_keys = index_rows(storage), service_key_rows(storage)
        [(_, old_key, old_wrapped)] = copy_keys

        first = rotate(vault, force=True, limit=2, batch_size=1)
        assert (first.records, first.rotated, first.remaining) == (2, 0, 1)
        assert_all_found(vault, people)
        done = rotate(vault)
        assert (done.records, done.rotated, done.remaining) == (4, 1, 0)
        assert done.kms_calls >= 1

        assert generations(storage) == {2}
        assert_all_found(vault, people)
        assert not vault_kms.key_exists(old_key)
        with pytest.raises(KeyDestroyed):
            vault_kms.unwrap(old_key, old_wrapped)
        live = vault.lookup_index()
        new_tags = {(row[2], row[4]) for row in index_rows(storage)}
        assert {(row[2], row[4]) for row in copy_rows}.isdisjoint(new_tags)
        assert all(
            row[4] == live.tag(row[2], _value(people, row[1], row[2]))
            for row in index_rows(storage)
        )
    finally:
        storage.engine.dispose()


def _value(people: list[Person], record_id: str, kind: str) -> str:
    for p in people:
        if record_id == p.contact_id:
            return p.email if kind == "email" else p.phone
        if record_id == p.credentials_id:
            return p.recovery
    raise AssertionError(record_id)


# --- killed at a fault point -------------------------------------------------------------

CHILD = """
import sys
from datetime import timedelta
from kms.local_keystore import LocalKeystore
from tests.vault.usecases.test_index_rotation import make, opened
from vault.clock import utc_now
from vault.usecases.erasure_ledger import ErasureLedger
from vault.usecases.index_rotation import IndexKeyRotation

database, keystore, ledger = sys.argv[1:4]
vault = make(opened(database), LocalKeystore(keystore), utc_now, ErasureLedger(ledger))
IndexKeyRotation(vault).rotate(dry_run=False, force=True, cryptoperiod=timedelta(days=365))
print("not killed")
"""


@dataclass
class Deployment:
    database: str
    keystore: Path
    ledger: str

    def open(self) -> tuple[VaultService, LocalKeystore]:
        kms = LocalKeystore(self.keystore)
        storage = opened(self.database)
        return make(storage, kms, utc_now, ErasureLedger(self.ledger)), kms


@pytest.fixture
def deployment(sqlite_url: str, tmp_path: Path) -> Iterator[Deployment]:
    yield Deployment(sqlite_url, tmp_path / "keystore.db", f"sqlite:///{tmp_path / 'ledger.db'}")


def _close(vault: VaultService, kms: LocalKeystore) -> None:
    kms.close()
    vault.storage.engine.dispose()


@pytest.mark.parametrize("point", ["index_rotation.committed", "index_rotation.ledger_appended"])
def test_killed_at_a_fault_point_the_restore_fence_destroys_the_old_key(
    point: str, deployment: Deployment
) -> None:
    vault, kms = deployment.open()
    people = populate(vault, 2)
    [(_, old_key, _)] = service_key_rows(vault.storage)
    _close(vault, kms)

    clean = {k: v for k, v in os.environ.items() if not k.startswith("OUBLI_")}
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            deployment.database,
            str(deployment.keystore),
            deployment.ledger,
        ],
        env={**clean, "OUBLI_FAULT_POINT": point, "OUBLI_TESTING": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == -9, child.stderr
    assert "not killed" not in child.stdout

    vault, kms = deployment.open()
    try:
        # Retired in the database, not destroyed: the key ledger names it.
        assert [row[0] for row in service_key_rows(vault.storage)] == ["lookup-index.2"]
        assert generations(vault.storage) == {2}
        assert kms.key_exists(old_key)
        assert (old_key, "retired", None) in vault.storage.key_ledger()
        in_ledger = [e for e in vault.ledger.entries() if e.key_id == old_key]
        assert len(in_ledger) == (1 if point.endswith("ledger_appended") else 0)

        fence = RestoreFence(erasure_of(vault))
        plan = fence.plan()
        assert plan.keys_to_destroy == [old_key] and plan.subjects_to_erase == []
        fence.run()
        assert not kms.key_exists(old_key)
        [entry] = [e for e in vault.ledger.entries() if e.key_id == old_key]
        assert (entry.kind, entry.subject_id) == (RETIRED, None)
        assert vault.storage.ledger_position() >= entry.seq
        assert {vault.get_subject(p.subject_id).state for p in people} == {"active"}
        assert_all_found(vault, people)
        assert rotate(vault).due == 0  # nothing under way: the rotation is complete
    finally:
        _close(vault, kms)
