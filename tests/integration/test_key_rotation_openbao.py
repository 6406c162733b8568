"""An old database copy after each kind of rotation, with real OpenBao, on SQLite and
PostgreSQL: it behaves as docs/keys.md#what-an-old-database-copy-yields says.

- subject keys rotated: the copy's wrapped DEKs name a version below the live key's
  min_decryption_version, so the copy is unreadable; a forced rotation pass run on the
  restored copy re-opens the versions still held, re-wraps and retires them again, and
  the copy reads; once the old versions are trimmed (the backup retention after the
  rotation), nothing brings the copy back;
- DEKs rotated: the old keys are destroyed, the copy is unreadable for good.

Records of the live database read back after every rotation.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kms.vault_transit import VaultTransitKeyManager
from tests.clock import FakeClock
from tests.conftest import PG_ADMIN_URL
from tests.integration.test_backup import _pg_copy, _sqlite_copy
from tests.stack import key_rotation_of, vault_service
from vault.errors import IntegrityFailure, KeyDestroyedError
from vault.storage import Storage, make_engine, migrate
from vault.usecases.key_rotation import RotationKind
from vault.usecases.service import VaultService

CONTACT = {"email": "copy@example.org", "city": "Gent"}
LOG = {"ip_address": "203.0.113.9", "event": "login"}


@pytest.fixture(params=["sqlite", "postgresql"])
def live_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


@pytest.fixture
def copies() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        for name in made:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _open(url: str, kms: VaultTransitKeyManager, clock: FakeClock) -> VaultService:
    engine = make_engine(url)
    migrate(engine)
    return vault_service(Storage(engine), kms, clock=clock)


def _copy(url: str, workdir: Path, copies: list[str]) -> str:
    if url.startswith("sqlite"):
        return _sqlite_copy(url, workdir)
    return _pg_copy(url, workdir, copies)


def _populate(vault: VaultService, clock: FakeClock) -> list[tuple[str, str, str]]:
    made = []
    for _ in range(2):
        sid = vault.create_subject().subject_id
        contact = vault.create_record(sid, "contact", CONTACT, "customer").record_id
        log = vault.create_record(sid, "technical_logs", LOG, "customer").record_id
        made.append((sid, contact, log))
    clock.advance(hours=1)
    return made


def _read(vault: VaultService, made: list[tuple[str, str, str]]) -> None:
    for sid, contact, log in made:
        vault.crypto.cache.evict(vault.storage.subject(sid).key_id)
        assert vault.get_record(sid, contact, "service").fields == CONTACT
        assert vault.get_record(sid, log, "security").fields == LOG


def test_a_copy_from_before_a_subject_key_rotation(
    live_url: str,
    vault_kms: VaultTransitKeyManager,
    tmp_path: Path,
    copies: list[str],
) -> None:
    clock = FakeClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    live = _open(live_url, vault_kms, clock)
    made = _populate(live, clock)
    copy_url = _copy(live_url, tmp_path, copies)
    rotation = key_rotation_of(live)

    report = rotation.rotate(RotationKind.SUBJECTS, force=True)
    assert (report.rotated, report.failed) == (2, 0)
    for subject_id, _, _ in made:
        versions = vault_kms.key_versions(live.storage.subject(subject_id).key_id)
        assert versions.min_decryption == versions.latest == 2  # v1 below the minimum
    _read(live, made)

    restored = _open(copy_url, vault_kms, clock)
    sid, contact, _ = made[0]
    with pytest.raises(IntegrityFailure):  # DATA_LOSS: the copy's wrap names v1
        restored.get_record(sid, contact, "service")
    # The runbook's step after restoring a copy older than a rotation.
    clock.advance(hours=1)
    assert key_rotation_of(restored).rotate(RotationKind.SUBJECTS, force=True).rotated == 2
    _read(restored, made)

    # Trimmed once the backup retention (7 days by default) has passed. The restored
    # copy is the live database now; the other one stands for a copy taken before
    # this last rotation: lost for good.
    clock.advance(days=8)
    trimmed = key_rotation_of(restored).rotate(RotationKind.SUBJECTS)
    assert trimmed.trimmed == 2
    for subject_id, _, _ in made:
        key_id = restored.storage.subject(subject_id).key_id
        assert vault_kms.key_versions(key_id).min_available == 3
    _read(restored, made)
    live.crypto.cache.evict(live.storage.subject(sid).key_id)
    with pytest.raises(IntegrityFailure):
        live.get_record(sid, contact, "service")  # its wrap names v2, trimmed
    assert key_rotation_of(live).rotate(RotationKind.SUBJECTS, force=True).failed == 2


def test_a_copy_from_before_a_dek_rotation_is_unreadable_for_good(
    live_url: str,
    vault_kms: VaultTransitKeyManager,
    tmp_path: Path,
    copies: list[str],
) -> None:
    clock = FakeClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    live = _open(live_url, vault_kms, clock)
    made = _populate(live, clock)
    copy_url = _copy(live_url, tmp_path, copies)

    report = key_rotation_of(live).rotate(RotationKind.DEKS, force=True)
    assert (report.rotated, report.failed) == (2, 0)
    _read(live, made)

    restored = _open(copy_url, vault_kms, clock)
    for sid, contact, log in made:
        with pytest.raises(KeyDestroyedError):
            restored.get_record(sid, contact, "service")
        with pytest.raises(KeyDestroyedError):
            restored.get_record(sid, log, "security")
