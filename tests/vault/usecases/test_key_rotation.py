"""Rotation of subject keys, bucket keys and DEKs (vault.usecases.kek_rotation,
dek_rotation, key_rotation): records read back, old versions are refused then trimmed,
an old database copy behaves as docs/keys.md says, passes are bounded and resumable.

Both databases, in-memory KMS; tests/integration/test_key_rotation_openbao.py runs the
same promises against real OpenBao."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from kms.base import KmsError
from tests.clock import FakeClock
from tests.memory_kms import InMemoryKeyManager
from tests.stack import erasure_of, key_rotation_of
from vault.crypto.keycache import DataKeyCache
from vault.errors import IntegrityFailure, InvalidArgument, SubjectShredded
from vault.storage import Storage
from vault.storage.key_rotation import KeyOwner
from vault.storage.tables import RetentionBucketRow, SubjectRow
from vault.usecases.kek_rotation import Pacer
from vault.usecases.key_rotation import Cryptoperiods, KeyRotation, RotationKind
from vault.usecases.service import VaultService

Builder = Callable[..., VaultService]
START = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
CONTACT = {"email": "ada@example.org", "phone": "+44 20 7946 0000"}
LOG = {"ip_address": "192.0.2.7", "event": "login"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def vault(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder, clock: FakeClock
) -> VaultService:
    return make_vault(storage, memory_kms, clock=clock)


@pytest.fixture
def rotation(vault: VaultService) -> KeyRotation:
    return key_rotation_of(vault)


def populated(vault: VaultService, n: int = 3) -> list[tuple[str, str, str]]:
    """``n`` subjects, each with a contact (subject scheme) and a log (expiry scheme)."""
    made = []
    for _ in range(n):
        sid = vault.create_subject().subject_id
        contact = vault.create_record(sid, "contact", CONTACT, "customer").record_id
        log = vault.create_record(sid, "technical_logs", LOG, "customer").record_id
        made.append((sid, contact, log))
    clock = vault.clock
    assert isinstance(clock, FakeClock)
    clock.advance(hours=1)  # a forced rotation takes the keys made before its call
    return made


def cold(vault: VaultService) -> None:
    """Forget every DEK and bucket this process holds: the next read unwraps."""
    vault.crypto.cache = DataKeyCache()
    vault.crypto.buckets._cache = vault.crypto.cache
    vault.crypto.buckets._known.clear()


def reads_back(vault: VaultService, made: list[tuple[str, str, str]]) -> None:
    cold(vault)
    for sid, contact, log in made:
        assert vault.get_record(sid, contact, "service").fields == CONTACT
        assert vault.get_record(sid, log, "security").fields == LOG


def wrapped_deks(storage: Storage, owner: KeyOwner) -> dict[str, tuple[str, bytes]]:
    table = SubjectRow if owner == KeyOwner.SUBJECTS else RetentionBucketRow
    ident = SubjectRow.subject_id if owner == KeyOwner.SUBJECTS else RetentionBucketRow.bucket_id
    with storage.engine.begin() as c:
        return {
            r[0]: (r[1], bytes(r[2]))
            for r in c.execute(select(ident, table.key_id, table.wrapped_dek))
            if r[2] is not None
        }


def restore_wraps(storage: Storage, owner: KeyOwner, old: dict[str, tuple[str, bytes]]) -> None:
    """What restoring a database copy taken before the rotation does to the key rows."""
    table = SubjectRow if owner == KeyOwner.SUBJECTS else RetentionBucketRow
    ident = SubjectRow.subject_id if owner == KeyOwner.SUBJECTS else RetentionBucketRow.bucket_id
    with storage.engine.begin() as c:
        for owner_id, (_, wrapped) in old.items():
            c.execute(update(table).where(ident == owner_id).values(wrapped_dek=wrapped))


@pytest.mark.parametrize("owner", list(KeyOwner))
def test_a_rotation_rewraps_every_key_and_retires_the_old_version(
    vault: VaultService, rotation: KeyRotation, memory_kms: InMemoryKeyManager, owner: KeyOwner
) -> None:
    made = populated(vault)
    before = wrapped_deks(vault.storage, owner)
    kind = RotationKind(owner.value)

    report = rotation.rotate(kind, force=True)

    assert (report.due, report.rotated, report.failed, report.remaining) == (
        len(before),
        len(before),
        0,
        0,
    )
    assert report.kms_calls == 3 * len(before)  # rotate, rewrap, raise the minimum
    after = wrapped_deks(vault.storage, owner)
    for owner_id, (key_id, old_wrapped) in before.items():
        assert after[owner_id][0] == key_id  # same key, a new version
        assert after[owner_id][1] != old_wrapped
        versions = memory_kms.key_versions(key_id)
        assert (versions.latest, versions.min_decryption, versions.min_available) == (2, 2, 1)
        assert memory_kms.wrapped_version(key_id, after[owner_id][1]) == 2
        with pytest.raises(KmsError, match="not allowed"):
            memory_kms.unwrap(key_id, old_wrapped)
    reads_back(vault, made)
    assert rotation.rotate(kind, force=False).due == 0  # rotated now: not due


def test_keys_are_due_at_the_end_of_their_cryptoperiod(
    vault: VaultService, memory_kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    rotation = key_rotation_of(vault, periods=Cryptoperiods(subjects=timedelta(days=365)))
    populated(vault, 2)
    clock.advance(days=364)
    assert rotation.rotate(RotationKind.SUBJECTS, dry_run=True).due == 0
    assert rotation.rotate(RotationKind.SUBJECTS).rotated == 0
    clock.advance(days=2)
    plan = rotation.rotate(RotationKind.SUBJECTS, dry_run=True)
    assert (plan.due, plan.remaining, plan.rotated) == (2, 2, 0)
    assert rotation.rotate(RotationKind.SUBJECTS).rotated == 2


def test_a_dry_run_changes_nothing_and_calls_no_kms(
    vault: VaultService, rotation: KeyRotation, memory_kms: InMemoryKeyManager
) -> None:
    populated(vault, 2)
    before = wrapped_deks(vault.storage, KeyOwner.SUBJECTS)
    calls = memory_kms.calls
    for kind in (RotationKind.SUBJECTS, RotationKind.BUCKETS, RotationKind.DEKS):
        report = rotation.rotate(kind, dry_run=True, force=True)
        assert report.dry_run and report.due > 0 and report.rotated == 0
    assert memory_kms.calls == calls
    assert wrapped_deks(vault.storage, KeyOwner.SUBJECTS) == before


def test_passes_are_bounded_and_resume_where_the_last_one_stopped(
    vault: VaultService, rotation: KeyRotation, clock: FakeClock
) -> None:
    made = populated(vault, 5)
    cutoff = clock()
    clock.advance(hours=1)
    remaining = []
    for _ in range(3):
        report = rotation.rotate(RotationKind.SUBJECTS, limit=2, rotated_before=cutoff)
        remaining.append(report.remaining)
    assert remaining == [3, 1, 0]
    assert rotation.rotate(RotationKind.SUBJECTS, rotated_before=cutoff).due == 0
    reads_back(vault, made)


def test_old_versions_are_trimmed_once_the_backup_retention_has_passed(
    vault: VaultService, rotation: KeyRotation, memory_kms: InMemoryKeyManager, clock: FakeClock
) -> None:
    made = populated(vault, 2)
    rotation.rotate(RotationKind.SUBJECTS, force=True)
    keys = {key_id for key_id, _ in wrapped_deks(vault.storage, KeyOwner.SUBJECTS).values()}
    clock.advance(days=6)
    assert rotation.rotate(RotationKind.SUBJECTS, force=False).trimmed == 0
    assert all(memory_kms.key_versions(k).min_available == 1 for k in keys)
    clock.advance(days=2)  # 8 days > the 7-day trim delay
    assert rotation.rotate(RotationKind.SUBJECTS, dry_run=True).trimmed == 2
    assert rotation.rotate(RotationKind.SUBJECTS, force=False).trimmed == 2
    assert all(memory_kms.key_versions(k).min_available == 2 for k in keys)
    assert rotation.rotate(RotationKind.SUBJECTS, force=False).trimmed == 0  # done once
    reads_back(vault, made)


def test_an_old_database_copy_is_unreadable_until_the_next_pass_and_lost_once_trimmed(
    vault: VaultService, rotation: KeyRotation, clock: FakeClock
) -> None:
    """docs/keys.md#what-an-old-database-copy-yields-after-a-rotation."""
    made = populated(vault, 2)
    sid, contact, _ = made[0]
    old = wrapped_deks(vault.storage, KeyOwner.SUBJECTS)
    rotation.rotate(RotationKind.SUBJECTS, force=True)

    restore_wraps(vault.storage, KeyOwner.SUBJECTS, old)  # the copy, restored
    cold(vault)
    with pytest.raises(IntegrityFailure):
        vault.get_record(sid, contact, "service")
    # The runbook: a forced rotation pass re-opens, re-wraps and retires again.
    clock.advance(hours=1)
    report = rotation.rotate(RotationKind.SUBJECTS, force=True)
    assert (report.rotated, report.failed) == (2, 0)
    reads_back(vault, made)

    # Once trimmed, a copy from before the rotation is lost for good.
    old = wrapped_deks(vault.storage, KeyOwner.SUBJECTS)
    clock.advance(hours=1)
    rotation.rotate(RotationKind.SUBJECTS, force=True)
    clock.advance(days=8)
    assert rotation.rotate(RotationKind.SUBJECTS).trimmed == 2
    restore_wraps(vault.storage, KeyOwner.SUBJECTS, old)
    cold(vault)
    with pytest.raises(IntegrityFailure):
        vault.get_record(sid, contact, "service")
    clock.advance(hours=1)
    assert rotation.rotate(RotationKind.SUBJECTS, force=True).failed == 2


def test_a_reader_holding_the_row_from_before_the_rotation_reads_the_rewrap(
    vault: VaultService, rotation: KeyRotation
) -> None:
    sid, contact, _ = populated(vault, 1)[0]
    stale = vault.storage.subject(sid)
    rotation.rotate(RotationKind.SUBJECTS, force=True)
    cold(vault)
    # Its wrap names the retired version: refused, so the row is read again.
    assert vault.crypto.subject_dek(stale) == vault.crypto.subject_dek(vault.storage.subject(sid))
    assert vault.get_record(sid, contact, "service").fields == CONTACT


def test_a_bucket_copy_cached_before_the_rotation_is_refreshed(
    vault: VaultService, rotation: KeyRotation
) -> None:
    made = populated(vault, 1)
    sid, _, log = made[0]
    stale_known = dict(vault.crypto.buckets._known)
    assert stale_known
    rotation.rotate(RotationKind.BUCKETS, force=True)
    cold(vault)
    vault.crypto.buckets._known.update(stale_known)  # another replica's stale copy
    assert vault.get_record(sid, log, "security").fields == LOG


def test_a_dek_rotation_rekeys_each_subject_and_destroys_its_old_key(
    vault: VaultService, rotation: KeyRotation, memory_kms: InMemoryKeyManager
) -> None:
    made = populated(vault, 3)
    before = wrapped_deks(vault.storage, KeyOwner.SUBJECTS)
    report = rotation.rotate(RotationKind.DEKS, force=True)
    assert (report.rotated, report.failed, report.remaining) == (3, 0, 0)
    after = wrapped_deks(vault.storage, KeyOwner.SUBJECTS)
    for sid, (old_key, _) in before.items():
        assert after[sid][0] != old_key
        assert not memory_kms.key_exists(old_key)
    assert set(vault.storage.ledger_key_ids()) >= {k for k, _ in before.values()}
    reads_back(vault, made)


def test_a_dek_rotation_skips_erased_subjects(vault: VaultService, rotation: KeyRotation) -> None:
    made = populated(vault, 2)
    erasure_of(vault).shred(made[0][0])
    report = rotation.rotate(RotationKind.DEKS, force=True)
    assert (report.due, report.rotated, report.failed) == (1, 1, 0)
    with pytest.raises(SubjectShredded):
        vault.get_record(made[0][0], made[0][1], "service")


def test_bad_pass_arguments_are_refused(rotation: KeyRotation) -> None:
    with pytest.raises(InvalidArgument):
        rotation.rotate(RotationKind.SUBJECTS, limit=0)
    with pytest.raises(InvalidArgument):
        rotation.rotate(RotationKind.SUBJECTS, rate=0)


def test_the_pacer_spaces_steps_by_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(4.0, monotonic=lambda: now[0], sleep=sleep)
    for _ in range(5):
        pacer.step()
    assert slept == [0.25, 0.25, 0.25, 0.25]
    assert now[0] == pytest.approx(1.0)
