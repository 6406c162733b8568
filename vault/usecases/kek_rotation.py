"""Rotation of the KMS keys that wrap DEKs: subjects' keys and retention buckets' keys.

Per key, oldest first (docs/keys.md#rotating-subject-and-bucket-keys):

1. ``rotate``: the KMS key gets a new version (Transit ``rotate``; the local keystore
   adds a row);
2. ``rewrap``: the stored wrapped DEK is re-wrapped under the new version (the DEK
   itself does not change, so records are not touched and the DEK cache stays valid);
3. the re-wrap is stored with a compare-and-set on the wrapped DEK read at step 2's
   start (a re-key, an erasure or another replica's rotation meanwhile: nothing is
   written, the new version is harmless), with ``kek_rotated_at`` = now and
   ``kek_trim_after`` = now + the trim delay;
4. ``min_decryption_version`` is raised to the new version: the live KMS no longer
   unwraps the DEK as an older database copy stores it. The older versions are kept,
   so an operator who restores such a copy can still open it (the next rotation pass
   lowers the minimum for a stored wrap it finds refused, re-wraps it, raises it again);
5. later, once ``kek_trim_after`` has passed (the backup retention: by then no database
   backup older than the rotation is kept), the older versions are trimmed: gone for
   good from the KMS.

A reader that read the row before step 3 and unwraps after step 4 meets a refused
version; it reads the row again and unwraps the re-wrap (vault.crypto.record_crypto).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from kms.base import KeyDestroyed, KmsAccessDenied, KmsError, KmsUnavailable
from vault.clock import Clock, utc_now
from vault.crypto.record_crypto import RecordCrypto
from vault.errors import OubliError, kms_error
from vault.fault_points import fault_point
from vault.storage import Storage
from vault.storage.key_rotation import KeyOwner, WrappedKey
from vault.usecases.key_rotation import RotationKind, RotationReport

#: Keys rotated side by side (as erasure destroys up to 8 keys at once).
PARALLEL_KEYS = 8

_KINDS = {KeyOwner.SUBJECTS: RotationKind.SUBJECTS, KeyOwner.BUCKETS: RotationKind.BUCKETS}


class Pacer:
    """At most ``rate`` steps per second (None: no limit), on an injected clock."""

    def __init__(
        self,
        rate: float | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("the rate must be positive")
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._monotonic = monotonic
        self._sleep = sleep
        self._next = monotonic()

    def step(self) -> None:
        """Wait until the next step may start."""
        if not self._interval:
            return
        now = self._monotonic()
        if now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self._interval


class KekRotation:
    """Rotate subjects' or buckets' KMS keys; trim their old versions when due."""

    def __init__(
        self,
        storage: Storage,
        crypto: RecordCrypto,
        *,
        trim_after: timedelta,
        clock: Clock = utc_now,
        pacer: Callable[[float | None], Pacer] = Pacer,
    ) -> None:
        if trim_after < timedelta(0):
            raise ValueError("the trim delay cannot be negative")
        self.storage = storage
        self.crypto = crypto
        self.trim_after = trim_after
        self.clock = clock
        self._pacer = pacer

    def rotate(
        self,
        owner: KeyOwner,
        *,
        rotated_before: datetime,
        dry_run: bool = False,
        limit: int = 1000,
        rate: float | None = None,
    ) -> RotationReport:
        """One pass: trim what is due, then rotate up to ``limit`` keys whose latest
        version is older than ``rotated_before`` (at most ``rate`` per second)."""
        if limit < 1:
            raise ValueError("a pass needs a limit of at least 1")
        kind = _KINDS[owner]
        now = self.clock()
        if dry_run:
            due = self.storage.count_keks_due(owner, rotated_before)
            return RotationReport(
                kind,
                True,
                due=min(due, limit),
                trimmed=min(self.storage.count_trims_due(owner, now), limit),
                remaining=due,
            )
        kms = self.crypto.kms
        calls = kms.calls
        trimmed = failed = rotated = 0
        for key in self.storage.trims_due(owner, now, limit):
            try:
                trimmed += self._trim(owner, key)
            except OubliError:
                failed += 1
        pacer = self._pacer(rate)
        keys = self.storage.keks_due(owner, rotated_before, limit)

        def one(key: WrappedKey) -> bool | OubliError:
            try:
                return self._rotate(owner, key, self.clock())
            except OubliError as e:
                return e

        # Keys are independent: PARALLEL_KEYS at a time (the KMS round trips dominate),
        # each thread in a copy of this context (it keeps the call's KMS budget).
        with ThreadPoolExecutor(PARALLEL_KEYS, thread_name_prefix="oubli-rotate") as pool:
            futures = []
            for key in keys:
                pacer.step()
                futures.append(pool.submit(contextvars.copy_context().run, one, key))
            for future in futures:
                outcome = future.result()
                if isinstance(outcome, OubliError):
                    failed += 1
                else:
                    rotated += outcome
        return RotationReport(
            kind,
            False,
            due=len(keys),
            rotated=rotated,
            trimmed=trimmed,
            failed=failed,
            remaining=self.storage.count_keks_due(owner, rotated_before),
            kms_calls=kms.calls - calls,
        )

    def _rotate(self, owner: KeyOwner, key: WrappedKey, now: datetime) -> bool:
        """Steps 1 to 4 for one key; False when the row changed meanwhile (nothing to
        do: re-keyed, erased or rotated by another replica)."""
        kms = self.crypto.kms
        try:
            kms.rotate_key(key.key_id)
            fault_point("kek_rotation.rotated")
            rewrapped = self._rewrap(key)
            if not self.storage.store_rewrapped(owner, key, rewrapped, now, now + self.trim_after):
                return False
            fault_point("kek_rotation.stored")
            kms.set_min_decryption_version(key.key_id, kms.wrapped_version(key.key_id, rewrapped))
        except KeyDestroyed:
            return False  # erased (or its bucket destroyed) meanwhile
        except KmsError as e:
            raise kms_error(e) from e
        return True

    def _rewrap(self, key: WrappedKey) -> bytes:
        kms = self.crypto.kms
        try:
            return kms.rewrap(key.key_id, key.wrapped_dek)
        except (KeyDestroyed, KmsUnavailable, KmsAccessDenied):
            raise
        except KmsError:
            # The stored wrap names a version below the key's minimum: a database copy
            # from before an earlier rotation was restored. Open the versions still
            # held again, re-wrap, and step 4 closes them once more. A version already
            # trimmed is gone: the rewrap fails again.
            versions = kms.key_versions(key.key_id)
            kms.set_min_decryption_version(key.key_id, versions.min_available)
            return kms.rewrap(key.key_id, key.wrapped_dek)

    def _trim(self, owner: KeyOwner, key: WrappedKey) -> bool:
        """Step 5 for one key: the versions below the one wrapping the stored DEK go."""
        kms = self.crypto.kms
        try:
            version = kms.wrapped_version(key.key_id, key.wrapped_dek)
            versions = kms.key_versions(key.key_id)
            if versions.min_decryption < version:
                kms.set_min_decryption_version(key.key_id, version)
            if versions.min_available < version:
                kms.trim_key(key.key_id, version)
        except KeyDestroyed:
            return False
        except KmsError as e:
            raise kms_error(e) from e
        fault_point("kek_rotation.trimmed")
        return self.storage.trim_done(owner, key)
