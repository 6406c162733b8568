"""Rotation of the subjects' DEKs: each due subject is re-keyed (vault.usecases.rekey):
a new KMS key and DEK, every record re-encrypted under it in one compare-and-set
transaction, the old key recorded in the erasure ledger and destroyed.

Resumable by construction: a re-keyed subject's ``dek_created_at`` is now, so it is no
longer due; a pass stopped anywhere leaves every subject either on its old key or on
its new one (the re-key's own crash guarantees, docs/keys.md#re-keying).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from vault.errors import OubliError, SubjectNotFound, SubjectShredded
from vault.storage import Storage
from vault.usecases.kek_rotation import PARALLEL_KEYS, Pacer
from vault.usecases.key_rotation import RotationKind, RotationReport
from vault.usecases.rekey import Rekeying


class DekRotation:
    """Re-key the subjects whose DEK is older than a cut-off."""

    def __init__(
        self,
        storage: Storage,
        rekeying: Rekeying,
        *,
        pacer: Callable[[float | None], Pacer] = Pacer,
    ) -> None:
        self.storage = storage
        self.rekeying = rekeying
        self._pacer = pacer

    def rotate(
        self,
        *,
        created_before: datetime,
        dry_run: bool = False,
        limit: int = 1000,
        rate: float | None = None,
    ) -> RotationReport:
        """One pass: re-key up to ``limit`` subjects whose DEK was made before
        ``created_before``, oldest first, at most ``rate`` per second."""
        if limit < 1:
            raise ValueError("a pass needs a limit of at least 1")
        if dry_run:
            due = self.storage.count_deks_due(created_before)
            return RotationReport(RotationKind.DEKS, True, due=min(due, limit), remaining=due)
        kms = self.rekeying.crypto.kms
        calls = kms.calls
        rotated = failed = 0
        pacer = self._pacer(rate)
        due_ids = self.storage.deks_due(created_before, limit)

        def one(subject_id: str) -> int | None:
            """1 re-keyed, 0 erased meanwhile (nothing left to rotate), None failed."""
            try:
                self.rekeying.rekey(subject_id)
            except (SubjectShredded, SubjectNotFound):
                return 0
            except OubliError:
                return None
            return 1

        # Subjects are independent (each re-key locks its own row): PARALLEL_KEYS at a
        # time, each thread in a copy of this context (the call's KMS budget).
        with ThreadPoolExecutor(PARALLEL_KEYS, thread_name_prefix="oubli-rekey") as pool:
            futures = []
            for subject_id in due_ids:
                pacer.step()
                futures.append(pool.submit(contextvars.copy_context().run, one, subject_id))
            for future in futures:
                outcome = future.result()
                if outcome is None:
                    failed += 1
                else:
                    rotated += outcome
        return RotationReport(
            RotationKind.DEKS,
            False,
            due=len(due_ids),
            rotated=rotated,
            failed=failed,
            remaining=self.storage.count_deks_due(created_before),
            kms_calls=kms.calls - calls,
        )
