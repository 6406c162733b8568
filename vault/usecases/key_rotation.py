"""Key rotation: every key oubli uses gets a new version, or is replaced, at the end of
its cryptoperiod (docs/keys.md#rotation).

One pass of a rotation handles at most ``limit`` keys and reports what it did and what
is still due (:class:`RotationReport`); passes are idempotent and resumable (a key
rotated is no longer due), so the operator's loop or the RPC caller runs passes until
nothing remains.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RotationKind(StrEnum):
    """What ``oubli keys rotate`` rotates."""

    #: Subjects' KMS keys (KEKs): a new version, the DEK re-wrapped, older versions
    #: refused, then trimmed once the backup retention has passed.
    SUBJECTS = "subjects"
    #: Retention buckets' KMS keys, the same way.
    BUCKETS = "buckets"
    #: Subjects' DEKs: records re-encrypted under a new key (a re-key).
    DEKS = "deks"
    #: The blind-index key: tags recomputed under a new key, the old one destroyed.
    INDEX = "index"
    #: The audit signing key: a new version signs; older ones still verify.
    SIGNING = "signing"


@dataclass(frozen=True, slots=True)
class RotationReport:
    """One pass of a rotation (or its dry run: what a pass would do)."""

    kind: RotationKind
    dry_run: bool
    #: Keys found due (older than the cryptoperiod, or all when forced) in this pass.
    due: int = 0
    #: Keys rotated by this pass (a dry run: 0).
    rotated: int = 0
    #: Keys whose versions older than the current one were trimmed by this pass.
    trimmed: int = 0
    #: Keys this pass could not rotate (each left as it was, to be retried).
    failed: int = 0
    #: Keys still due after this pass: 0 when the rotation is complete.
    remaining: int = 0
    #: Records re-encrypted or re-indexed (DEK and index rotations).
    records: int = 0
    #: KMS round trips this pass made.
    kms_calls: int = 0
