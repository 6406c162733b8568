"""vault/storage/bulk_insert.py and pair_lookup.py on both databases: the COPY / prepared
executemany keeps the INSERT's all-or-nothing and uniqueness; the pair lookup finds
exactly the pairs asked for, in chunks, without records of a destroyed bucket."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from sqlalchemy import func, select, update

from tests.memory_kms import InMemoryKeyManager
from vault.errors import AlreadyExists
from vault.storage import Storage, StoredRecord, pair_lookup
from vault.storage.tables import RecordRow, RetentionBucketRow
from vault.usecases.batches import BulkOps, NewRecord
from vault.usecases.service import VaultService
from vault.vocabulary import BucketState

Builder = Callable[..., VaultService]


def _count(storage: Storage) -> int:
    with storage.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(RecordRow)).scalar() or 0)


@pytest.fixture
def vault(storage: Storage, make_vault: Builder) -> VaultService:
    return make_vault(storage, InMemoryKeyManager())


def test_bulk_insert_round_trips_every_column(vault: VaultService) -> None:
    sid = vault.create_subject().subject_id
    made = BulkOps(vault).create_records(
        [
            NewRecord(sid, "support", {"message": "m"}, "o"),
            NewRecord(sid, "technical_logs", {"event": "login"}, "o"),  # an expiry bucket
            NewRecord(sid, "contact", {"email": "e@example.org"}, "o"),  # a singleton
        ]
    )
    stored = vault.storage.records_by_id([(r.subject_id, r.record_id) for r in made])
    for view in made:
        row = stored[(view.subject_id, view.record_id)]
        assert (row.category, row.version, row.origin) == (view.category, 1, "o")
        assert row.created_at == row.updated_at == view.created_at  # aware UTC, as written
        assert row.created_at.tzinfo is not None
    logs = next(r for r in stored.values() if r.category == "technical_logs")
    assert logs.key_scheme == "expiry" and logs.bucket_id and logs.retain_until
    assert vault.storage.existing_singletons([(sid, "contact")]) == {(sid, "contact")}


def test_bulk_insert_is_all_or_nothing_on_a_duplicate(vault: VaultService) -> None:
    sid = vault.create_subject().subject_id
    [first] = BulkOps(vault).create_records([NewRecord(sid, "support", {"message": "m"}, "o")])
    [existing] = vault.storage.records_by_id([(sid, first.record_id)]).values()
    info = vault.storage.subject(sid)
    fresh = dataclasses.replace(existing, record_id="z" * 26)
    before = _count(vault.storage)

    with pytest.raises(AlreadyExists):  # the duplicate primary key, after a fresh row
        vault.storage.insert_records([(fresh, None), (existing, None)], {sid: info.key_id})
    profile: StoredRecord = dataclasses.replace(existing, record_id="y" * 26, category="contact")
    twin = dataclasses.replace(profile, record_id="x" * 26)
    with pytest.raises(AlreadyExists):  # two records of a one-record category
        vault.storage.insert_records([(profile, "contact"), (twin, "contact")], {sid: info.key_id})

    assert _count(vault.storage) == before  # nothing of either batch was written
    assert vault.storage.records_by_id([(sid, "z" * 26), (sid, "y" * 26)]) == {}


def test_pair_lookup_finds_exactly_the_pairs_in_chunks(
    vault: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pair_lookup, "SQLITE_PAIRS", 3)  # several statements on SQLite
    a, b = vault.create_subject().subject_id, vault.create_subject().subject_id
    made = BulkOps(vault).create_records(
        [NewRecord(s, "support", {"message": str(i)}, "o") for i in range(4) for s in (a, b)]
    )
    mine = [(r.subject_id, r.record_id) for r in made if r.subject_id == a]
    crossed = [(b, record_id) for _, record_id in mine]  # a's ids under b: not b's records
    found = vault.storage.records_by_id([*mine, *crossed, *mine[:1]])
    assert sorted(found) == sorted(mine)
    logs = BulkOps(vault).create_records([NewRecord(a, "technical_logs", {"event": "e"}, "o")])
    key = (a, logs[0].record_id)
    assert key in vault.storage.records_by_id([key])
    with vault.storage.engine.begin() as c:  # its bucket's key destroyed: unreadable
        c.execute(update(RetentionBucketRow).values(state=BucketState.DESTROYED))
    assert vault.storage.records_by_id([key, *mine]).keys() == set(mine)
