"""Rotation of the subjects' DEKs: each due subject is re-keyed (vault.usecases.rekey):
a new KMS key and DEK, every record re-encrypted under it in one compare-and-set
transaction, the old key recorded in the erasure ledger and destroyed.

Resumable by construction: a re-keyed subject's ``dek_created_at`` is now, so it is no
longer due; a pass stopped anywhere leaves every subject either on its old key or on
its new one (the re-key's own crash guarantees, docs/keys.md#re-keying).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from vault.errors import OubliError, SubjectNotFound, SubjectShredded
from vault.storage import Storage
from vault.usecases.kek_rotation import Pacer
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
        for subject_id in due_ids:
            pacer.step()
            try:
                self.rekeying.rekey(subject_id)
                rotated += 1
            except (SubjectShredded, SubjectNotFound):
                continue  # erased meanwhile: nothing left to rotate
            except OubliError:
                failed += 1
        return RotationReport(
            RotationKind.DEKS,
            False,
            due=len(due_ids),
            rotated=rotated,
            failed=failed,
            remaining=self.storage.count_deks_due(created_before),
            kms_calls=kms.calls - calls,
        )
