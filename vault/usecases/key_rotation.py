"""Key rotation: every key oubli uses gets a new version, or is replaced, at the end of
its cryptoperiod (docs/keys.md#rotation).

One pass of a rotation handles at most ``limit`` keys and reports what it did and what
is still due (:class:`RotationReport`); passes are idempotent and resumable (a key
rotated is no longer due), so the operator's loop or the RPC caller runs passes until
nothing remains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from vault.clock import Clock, utc_now
from vault.errors import FailedPrecondition, InvalidArgument
from vault.storage.key_rotation import KeyOwner, KeyRotationRepository

if TYPE_CHECKING:  # the passes import RotationReport from here
    from vault.usecases.dek_rotation import DekRotation
    from vault.usecases.kek_rotation import KekRotation


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


@dataclass(frozen=True, slots=True)
class Cryptoperiods:
    """How long each kind of key is used before rotation is due
    (docs/keys.md#cryptoperiods argues the defaults from NIST SP 800-57 Part 1 and
    PCI DSS)."""

    subjects: timedelta = timedelta(days=365)
    buckets: timedelta = timedelta(days=365)
    deks: timedelta = timedelta(days=365)
    index: timedelta = timedelta(days=730)
    signing: timedelta = timedelta(days=365)

    def __post_init__(self) -> None:
        for kind in RotationKind:
            if self.of(kind) <= timedelta(0):
                raise ValueError(f"the cryptoperiod of {kind} keys must be positive")

    def of(self, kind: RotationKind) -> timedelta:
        period: timedelta = getattr(self, kind.value)
        return period


#: A rotation of a service key (index, signing): dry run, force, cryptoperiod, limit.
ServiceKeyPass = Callable[[bool, bool, timedelta, int], RotationReport]


class KeyRotation:
    """Every kind of rotation behind one call (the RPC's and ``oubli keys rotate``)."""

    def __init__(
        self,
        *,
        keks: KekRotation,
        deks: DekRotation,
        service_keys: Mapping[RotationKind, ServiceKeyPass],
        periods: Cryptoperiods,
        clock: Clock = utc_now,
    ) -> None:
        self.keks = keks
        self.deks = deks
        self.service_keys = dict(service_keys)
        self.periods = periods
        self.clock = clock

    def cutoff(self, kind: RotationKind, *, force: bool) -> datetime:
        """Keys whose latest version is older than this are due: now minus the
        cryptoperiod, or now itself when forced (every key made before the call)."""
        now = self.clock()
        return now if force else now - self.periods.of(kind)

    def rotate(
        self,
        kind: RotationKind,
        *,
        dry_run: bool = False,
        force: bool = False,
        limit: int = 1000,
        rotated_before: datetime | None = None,
        rate: float | None = None,
    ) -> RotationReport:
        """One pass of ``kind``'s rotation (see each kind's module).

        ``rotated_before`` fixes the cut-off across passes (a forced rotation run as
        several passes must not rotate again the keys its first pass rotated); by
        default :meth:`cutoff`.
        """
        if limit < 1:
            raise InvalidArgument("limit", "a rotation pass needs a limit of at least 1")
        if rate is not None and rate <= 0:
            raise InvalidArgument("rate", "the rate must be positive")
        cutoff = rotated_before or self.cutoff(kind, force=force)
        if kind == RotationKind.SUBJECTS:
            return self.keks.rotate(
                KeyOwner.SUBJECTS, rotated_before=cutoff, dry_run=dry_run, limit=limit, rate=rate
            )
        if kind == RotationKind.BUCKETS:
            return self.keks.rotate(
                KeyOwner.BUCKETS, rotated_before=cutoff, dry_run=dry_run, limit=limit, rate=rate
            )
        if kind == RotationKind.DEKS:
            return self.deks.rotate(created_before=cutoff, dry_run=dry_run, limit=limit, rate=rate)
        run = self.service_keys.get(kind)
        if run is None:
            raise FailedPrecondition(
                "ROTATION_UNAVAILABLE", f"{kind} keys cannot be rotated by this process"
            )
        return run(dry_run, force, self.periods.of(kind), limit)

    def ages(self) -> list[KeyAge]:
        """:func:`key_ages` of this rotation's database and cryptoperiods."""
        return key_ages(self.keks.storage, self.periods, self.clock())


#: The service keys' names in ``service_keys`` (a prefix: the index key has one row
#: per generation, the newest counts).
SERVICE_KEY_NAMES = {RotationKind.INDEX: "lookup-index", RotationKind.SIGNING: "audit-signing"}


@dataclass(frozen=True, slots=True)
class KeyAge:
    """The oldest live key of a kind: when it got its current version (None: no key
    of this kind yet), its cryptoperiod, and whether a rotation is due."""

    kind: RotationKind
    oldest: datetime | None
    cryptoperiod: timedelta
    due: bool


def key_ages(storage: KeyRotationRepository, periods: Cryptoperiods, now: datetime) -> list[KeyAge]:
    """The age of the oldest key of every kind (one query each, no KMS call)."""
    oldest = storage.oldest_keys({k.value: name for k, name in SERVICE_KEY_NAMES.items()})
    ages = []
    for kind in RotationKind:
        when = oldest.get(kind.value)
        period = periods.of(kind)
        ages.append(KeyAge(kind, when, period, when is not None and now - when >= period))
    return ages
