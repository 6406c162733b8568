"""Retention buckets (vault.crypto.bucket_keys): calendar arithmetic, key derivation, BucketKeys.

BucketKeys runs on both databases with the in-memory KMS; KMS round trips are counted
with ``memory_kms.calls``.
"""

from __future__ import annotations

import calendar
import os
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.base import KmsError
from tests.memory_kms import InMemoryKeyManager
from vault.crypto.bucket_keys import (
    BucketKeys,
    add_months,
    bucket_id_for,
    expiry_record_key,
    hold_record_key,
    month_start,
)
from vault.crypto.keycache import DataKeyCache
from vault.errors import KeyDestroyedError, OubliError, Unavailable, kms_error
from vault.storage import Storage
from vault.vocabulary import BucketKind, BucketState

NOW = datetime(2026, 5, 17, 8, 30, tzinfo=UTC)


def at(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


# --- add_months -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (at(2026, 1, 15), 1, at(2026, 2, 15)),
        (at(2026, 1, 15), 0, at(2026, 1, 15)),
        (at(2026, 1, 31), 1, at(2026, 2, 28)),  # clamped to the month's end
        (at(2028, 1, 31), 1, at(2028, 2, 29)),  # leap year
        (at(2028, 2, 29), 12, at(2029, 2, 28)),  # leap day, next year has none
        (at(2028, 2, 29), 48, at(2032, 2, 29)),  # ... four years on it has
        (at(2100, 1, 31), 1, at(2100, 2, 28)),  # 2100 is not a leap year
        (at(2000, 1, 31), 1, at(2000, 2, 29)),  # 2000 is
        (at(2026, 3, 31), 1, at(2026, 4, 30)),
        (at(2026, 8, 31), 1, at(2026, 9, 30)),
        (at(2026, 10, 31), 1, at(2026, 11, 30)),
        (at(2026, 12, 31), 2, at(2027, 2, 28)),
        (at(2026, 12, 15), 1, at(2027, 1, 15)),  # year wrap
        (at(2026, 11, 30), 2, at(2027, 1, 30)),
        (at(2026, 12, 1), 12, at(2027, 12, 1)),
        (at(2026, 7, 4), 36, at(2029, 7, 4)),
        (at(2026, 7, 4), 120, at(2036, 7, 4)),
        (at(2026, 1, 1), 1200, at(2126, 1, 1)),
    ],
)
def test_add_months(start: datetime, months: int, expected: datetime) -> None:
    assert add_months(start, months) == expected


def test_add_months_keeps_time_and_zone() -> None:
    moment = datetime(2026, 1, 31, 23, 59, 58, 123456, tzinfo=UTC)
    assert add_months(moment, 1) == datetime(2026, 2, 28, 23, 59, 58, 123456, tzinfo=UTC)
    assert add_months(moment, 1).tzinfo is UTC


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2200, 12, 31),
        timezones=st.just(UTC),
    ),
    st.integers(min_value=0, max_value=1200),
)
def test_add_months_lands_in_the_month_n_later(moment: datetime, months: int) -> None:
    result = add_months(moment, months)
    index = moment.year * 12 + moment.month - 1 + months
    assert (result.year, result.month - 1) == divmod(index, 12)
    assert result.day <= moment.day
    last = calendar.monthrange(result.year, result.month)[1]
    assert result.day == min(moment.day, last)
    assert result.time() == moment.time() and result.tzinfo == moment.tzinfo
    assert result >= moment
    # monotonic in n
    assert add_months(moment, months + 1) > result


# --- month_start and bucket ids -------------------------------------------------------


def test_month_start() -> None:
    assert month_start(datetime(2026, 5, 17, 8, 30, 1, 2, tzinfo=UTC)) == at(2026, 5, 1)
    assert month_start(at(2026, 5, 1)) == at(2026, 5, 1)
    assert month_start(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)) == at(2026, 12, 1)
    assert month_start(NOW).tzinfo is UTC


def test_bucket_id_for() -> None:
    assert bucket_id_for(BucketKind.EXPIRY, "technical_logs", at(2027, 1, 15)) == (
        "expiry:technical_logs:2027-01"
    )
    assert bucket_id_for(BucketKind.HOLD, "billing", at(2029, 12, 31, 23)) == "hold:billing:2029-12"
    assert bucket_id_for(BucketKind.HOLD, "billing", at(987, 3, 1)) == "hold:billing:0987-03"
    # the same month gives the same bucket, whatever the day
    assert bucket_id_for(BucketKind.EXPIRY, "usage", at(2027, 2, 1)) == bucket_id_for(
        BucketKind.EXPIRY, "usage", at(2027, 2, 28, 23)
    )


# --- key derivation -------------------------------------------------------------------

SUBJECT_DEK = bytes(range(32))
BUCKET_DEK = bytes(range(32, 64))
BUCKET = "expiry:technical_logs:2027-01"
SUBJECT = "aaaaaaaaaaaaaaaaaaaaaaaaaa"
OTHER_SUBJECT = "bbbbbbbbbbbbbbbbbbbbbbbbbb"


def test_expiry_record_key_needs_both_deks() -> None:
    key = expiry_record_key(SUBJECT_DEK, BUCKET_DEK, BUCKET, SUBJECT)
    assert len(key) == 32
    assert key == expiry_record_key(SUBJECT_DEK, BUCKET_DEK, BUCKET, SUBJECT)  # deterministic
    other_subject_dek = bytes(31) + b"\x01"
    other_bucket_dek = bytes(range(1, 33))
    assert expiry_record_key(other_subject_dek, BUCKET_DEK, BUCKET, SUBJECT) != key
    assert expiry_record_key(SUBJECT_DEK, other_bucket_dek, BUCKET, SUBJECT) != key
    assert expiry_record_key(SUBJECT_DEK, BUCKET_DEK, BUCKET, OTHER_SUBJECT) != key
    assert expiry_record_key(SUBJECT_DEK, BUCKET_DEK, "expiry:usage:2027-01", SUBJECT) != key
    # neither DEK alone is the key
    assert key not in (SUBJECT_DEK, BUCKET_DEK)


def test_hold_record_key_differs_from_expiry() -> None:
    hold = hold_record_key(BUCKET_DEK, BUCKET, SUBJECT)
    assert len(hold) == 32
    assert hold == hold_record_key(BUCKET_DEK, BUCKET, SUBJECT)
    assert hold != expiry_record_key(SUBJECT_DEK, BUCKET_DEK, BUCKET, SUBJECT)
    assert hold != BUCKET_DEK
    assert hold_record_key(BUCKET_DEK, BUCKET, OTHER_SUBJECT) != hold
    assert hold_record_key(bytes(range(1, 33)), BUCKET, SUBJECT) != hold
    assert hold_record_key(BUCKET_DEK, "hold:billing:2029-01", SUBJECT) != hold


def test_derivation_fields_do_not_run_together() -> None:
    # NUL-separated info: moving characters between bucket id and subject id changes it.
    assert hold_record_key(BUCKET_DEK, "ab", "c") != hold_record_key(BUCKET_DEK, "a", "bc")


# --- BucketKeys -----------------------------------------------------------------------


def bucket_keys(
    storage: Storage, kms: InMemoryKeyManager, cache: DataKeyCache | None = None
) -> BucketKeys:
    return BucketKeys(storage, kms, cache or DataKeyCache(), lambda: NOW, os.urandom, kms_error)


def test_for_deadline_creates_once_then_reuses(
    storage: Storage, memory_kms: InMemoryKeyManager
) -> None:
    keys = bucket_keys(storage, memory_kms)
    before = memory_kms.calls
    bucket = keys.for_deadline(BucketKind.EXPIRY, "technical_logs", at(2027, 5, 17, 8))
    assert memory_kms.calls - before == 2  # create_key + generate_data_key
    assert bucket.bucket_id == "expiry:technical_logs:2027-05"
    assert (bucket.kind, bucket.category, bucket.month) == (
        BucketKind.EXPIRY,
        "technical_logs",
        "2027-05",
    )
    assert bucket.destroy_at == at(2027, 5, 1)
    assert bucket.state == BucketState.ACTIVE and bucket.wrapped_dek
    assert storage.bucket(bucket.bucket_id) == bucket
    assert memory_kms.key_exists(bucket.key_id)

    before = memory_kms.calls
    again = keys.for_deadline(BucketKind.EXPIRY, "technical_logs", at(2027, 5, 31, 23))
    assert again == bucket
    assert memory_kms.calls == before  # same month: no KMS call, no new row

    # a fresh BucketKeys (fresh cache, as on another replica) finds the row: no KMS call
    replica = bucket_keys(storage, memory_kms)
    assert replica.for_deadline(BucketKind.EXPIRY, "technical_logs", at(2027, 5, 2)) == bucket
    assert memory_kms.calls == before

    # another month, kind or category is another bucket
    other = {
        keys.for_deadline(BucketKind.EXPIRY, "technical_logs", at(2027, 6, 1)).key_id,
        keys.for_deadline(BucketKind.HOLD, "technical_logs", at(2027, 5, 1)).key_id,
        keys.for_deadline(BucketKind.EXPIRY, "usage", at(2027, 5, 1)).key_id,
    }
    assert len(other) == 3 and bucket.key_id not in other
    assert memory_kms.calls - before == 6


def test_dek_is_cached(storage: Storage, memory_kms: InMemoryKeyManager) -> None:
    keys = bucket_keys(storage, memory_kms)
    bucket = keys.for_deadline(BucketKind.EXPIRY, "usage", at(2027, 1, 3))
    before = memory_kms.calls
    dek = keys.dek(bucket)
    assert len(dek) == 32
    assert keys.dek(bucket) == dek
    assert memory_kms.calls == before  # put in the cache at creation

    replica = bucket_keys(storage, memory_kms)  # cold cache
    found = replica.get(bucket.bucket_id)
    assert found == bucket
    assert replica.dek(found) == dek
    assert memory_kms.calls == before + 1  # one unwrap
    assert replica.dek(found) == dek
    assert replica.dek(found) == dek
    assert memory_kms.calls == before + 1


def test_dek_of_a_destroyed_bucket(storage: Storage, memory_kms: InMemoryKeyManager) -> None:
    keys = bucket_keys(storage, memory_kms)
    bucket = keys.for_deadline(BucketKind.EXPIRY, "usage", at(2027, 1, 3))
    keys.forget(bucket)
    memory_kms.destroy_key(bucket.key_id)
    with pytest.raises(KeyDestroyedError):
        keys.dek(bucket)
    storage.mark_bucket_destroying(bucket.bucket_id)
    storage.finish_bucket(bucket.bucket_id, NOW)
    assert keys.get(bucket.bucket_id) is None  # only active buckets are served
    gone = storage.bucket(bucket.bucket_id)
    assert gone is not None and gone.wrapped_dek is None
    with pytest.raises(KeyDestroyedError):
        keys.dek(gone)


def test_for_deadline_kms_outage_is_unavailable_and_leaves_no_row(
    storage: Storage, memory_kms: InMemoryKeyManager
) -> None:
    keys = bucket_keys(storage, memory_kms)
    memory_kms.unavailable = True
    with pytest.raises(Unavailable):
        keys.for_deadline(BucketKind.EXPIRY, "usage", at(2027, 1, 3))
    memory_kms.unavailable = False
    assert storage.bucket("expiry:usage:2027-01") is None
    assert keys.for_deadline(BucketKind.EXPIRY, "usage", at(2027, 1, 3)).state == BucketState.ACTIVE


def test_concurrent_creation_uses_the_winner(
    storage: Storage, memory_kms: InMemoryKeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two BucketKeys over one database (as two replicas have, here in one process) miss
    the bucket at once; the loser uses the winner's and drops its key."""
    loser = bucket_keys(storage, memory_kms)
    winner = bucket_keys(storage, memory_kms)
    deadline = at(2027, 3, 9)
    won: list[str] = []
    created: list[str] = []
    real_create = memory_kms.create_key

    def racing_create(key_id: str) -> None:
        created.append(key_id)
        real_create(key_id)
        if not won:  # the loser is making its key: the winner inserts meanwhile
            won.append("")
            won[0] = winner.for_deadline(BucketKind.EXPIRY, "technical_logs", deadline).key_id

    monkeypatch.setattr(memory_kms, "create_key", racing_create)

    bucket = loser.for_deadline(BucketKind.EXPIRY, "technical_logs", deadline)
    assert bucket is not None
    assert len(created) == 2 and created[1] == won[0]
    assert bucket.key_id == won[0]
    assert storage.bucket(bucket.bucket_id) == bucket
    # the loser's own key is destroyed: no orphan key in the KMS
    assert not memory_kms.key_exists(created[0])
    assert memory_kms.key_exists(won[0])
    # both serve the same DEK, and the loser remembers the winner's bucket
    assert loser.dek(bucket) == winner.dek(bucket)
    before = memory_kms.calls
    assert loser.for_deadline(BucketKind.EXPIRY, "technical_logs", deadline) == bucket
    assert memory_kms.calls == before


def test_errors_are_translated(storage: Storage, memory_kms: InMemoryKeyManager) -> None:
    keys = bucket_keys(storage, memory_kms)
    bucket = keys.for_deadline(BucketKind.HOLD, "billing", at(2029, 1, 1))
    cold = bucket_keys(storage, memory_kms)
    memory_kms.unavailable = True
    with pytest.raises(OubliError) as caught:
        cold.dek(bucket)
    assert not isinstance(caught.value, KmsError)
    assert isinstance(caught.value, Unavailable)


def test_buckets_of_one_month_share_one_destroy_time(
    storage: Storage, memory_kms: InMemoryKeyManager
) -> None:
    keys = bucket_keys(storage, memory_kms)
    start = at(2026, 1, 1)
    seen = {
        keys.for_deadline(BucketKind.EXPIRY, "usage", start + timedelta(hours=h)).bucket_id
        for h in range(0, 31 * 24, 7)
    }
    assert seen == {"expiry:usage:2026-01"}
