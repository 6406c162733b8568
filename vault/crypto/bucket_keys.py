"""Retention buckets: one KMS key per (kind, category, month), shared by every subject.

- An **expiry** bucket holds records that must be gone by a month: such a record's key
  is derived (HKDF) from the subject's DEK *and* the bucket's DEK, so destroying either
  key destroys it. Destroying the bucket expires every such record of every subject with
  one KMS call, in every copy of the database.
- A **hold** bucket keeps legally retained records (invoices) after an erasure request:
  at erasure they are re-encrypted under a key derived from the bucket's DEK alone, and
  the subject's key is destroyed. They stay readable, for their legal purposes only,
  until the bucket is destroyed.

A bucket is destroyed at the first instant of its month, so data is never kept longer
than its rule promises, and at most one month less.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.base import KeyDestroyed, KeyManager, KmsAccessDenied, KmsError, KmsUnavailable
from vault.crypto.keycache import DataKeyCache
from vault.errors import AlreadyExists, OubliError
from vault.ids import RandomBytes, new_id
from vault.storage import BucketInfo, Storage
from vault.vocabulary import BucketKind, BucketState


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` plus calendar months, the day clamped to the target month's length."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    days = [31, 29 if _leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    return moment.replace(year=year, month=month, day=min(moment.day, days))


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def month_start(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def bucket_id_for(kind: BucketKind, category: str, deadline: datetime) -> str:
    return f"{kind}:{category}:{deadline.year:04d}-{deadline.month:02d}"


def _derive(ikm: bytes, label: bytes, bucket_id: str, subject_id: str) -> bytes:
    info = b"\0".join((label, bucket_id.encode(), subject_id.encode()))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


def expiry_record_key(
    subject_dek: bytes, bucket_dek: bytes, bucket_id: str, subject_id: str
) -> bytes:
    """AND: needs both the subject's and the bucket's DEK."""
    return _derive(subject_dek + bucket_dek, b"oubli/expiry/v1", bucket_id, subject_id)


def hold_record_key(bucket_dek: bytes, bucket_id: str, subject_id: str) -> bytes:
    """The hold bucket's DEK alone (the subject's key is destroyed by then)."""
    return _derive(bucket_dek, b"oubli/hold/v1", bucket_id, subject_id)


class BucketKeys:
    """Finds or creates buckets and serves their DEKs from the shared DEK cache."""

    def __init__(
        self,
        storage: Storage,
        kms: KeyManager,
        cache: DataKeyCache,
        clock: Callable[[], datetime],
        random_bytes: RandomBytes,
        kms_error: Callable[[KmsError], OubliError],
    ) -> None:
        self._storage = storage
        self._kms = kms
        self._cache = cache
        self._clock = clock
        self._random_bytes = random_bytes
        self._kms_error = kms_error
        # Bucket rows never change but for their state, which readers check in SQL.
        self._known: dict[str, BucketInfo] = {}
        self._lock = threading.Lock()

    def for_deadline(
        self, kind: BucketKind, category: str, deadline: datetime
    ) -> BucketInfo | None:
        """The bucket for ``deadline``'s month, made if needed; None when that month's
        bucket was already destroyed (the period is over: the data must go now)."""
        bucket_id = bucket_id_for(kind, category, deadline)
        found = self.get(bucket_id)
        if found is not None:
            return found
        existing = self._storage.bucket(bucket_id)
        if existing is not None:
            # Made meanwhile by another replica (use it), or already destroyed (None).
            return self.get(bucket_id) if existing.state == BucketState.ACTIVE else None
        key_id = new_id(self._random_bytes)
        try:
            self._kms.create_key(key_id)
            data_key = self._kms.generate_data_key(key_id)
        except KmsError as e:
            raise self._kms_error(e) from e
        info = BucketInfo(
            bucket_id,
            kind,
            category,
            bucket_id.rsplit(":", 1)[1],
            month_start(deadline),
            key_id,
            data_key.wrapped,
            data_key.key_version,
            BucketState.ACTIVE,
        )
        try:
            self._storage.insert_bucket(info, self._clock())
        except AlreadyExists:  # another replica made it first: use theirs
            with contextlib.suppress(KmsError):  # ours protects nothing yet
                self._kms.destroy_key(key_id)
            return self.get(bucket_id)
        self._cache.put(key_id, data_key.key_version, data_key.plaintext)
        with self._lock:
            self._known[bucket_id] = info
        return info

    def get(self, bucket_id: str) -> BucketInfo | None:
        with self._lock:
            known = self._known.get(bucket_id)
        if known is not None:
            return known
        found = self._storage.bucket(bucket_id)
        if found is not None and found.state == BucketState.ACTIVE:
            with self._lock:
                self._known[bucket_id] = found
            return found
        return None

    def dek(self, bucket: BucketInfo) -> bytes:
        cached = self._cache.get(bucket.key_id, bucket.key_version)
        if cached is not None:
            return cached
        if bucket.wrapped_dek is None:
            raise self._kms_error(KeyDestroyed("bucket key destroyed"))
        try:
            dek = self._kms.unwrap(bucket.key_id, bucket.wrapped_dek)
        except (KeyDestroyed, KmsUnavailable, KmsAccessDenied) as e:
            raise self._kms_error(e) from e
        except KmsError as e:
            # A rotation re-wrapped the DEK and retired the version this copy of the row
            # names (vault.usecases.kek_rotation): the row read again has the re-wrap.
            dek = self._unwrap_again(bucket, e)
        self._cache.put(bucket.key_id, bucket.key_version, dek)
        return dek

    def _unwrap_again(self, bucket: BucketInfo, error: KmsError) -> bytes:
        fresh = self._storage.bucket(bucket.bucket_id)
        if (
            fresh is None
            or fresh.key_id != bucket.key_id
            or fresh.wrapped_dek is None
            or fresh.wrapped_dek == bucket.wrapped_dek
        ):
            raise self._kms_error(error) from error
        with self._lock:
            if fresh.state == BucketState.ACTIVE:
                self._known[bucket.bucket_id] = fresh
        try:
            return self._kms.unwrap(fresh.key_id, fresh.wrapped_dek)
        except KmsError as e:
            raise self._kms_error(e) from e

    def forget(self, bucket: BucketInfo) -> None:
        with self._lock:
            self._known.pop(bucket.bucket_id, None)
        self._cache.evict(bucket.key_id)
