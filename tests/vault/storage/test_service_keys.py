"""The audit signing key's id (vault.audit.recorder.signing_key_id) in ``service_keys``:
chosen once per database, a race between replicas settled by the primary key, a
database outage reported as Unavailable."""

from __future__ import annotations

from pathlib import Path

import pytest

from vault.audit.recorder import SIGNING_KEY_NAME, signing_key_id
from vault.clock import utc_now
from vault.errors import Unavailable
from vault.storage import Storage, make_engine
from vault.storage.service_keys import ServiceKey


def test_signing_key_id_is_chosen_once_per_database(storage: Storage) -> None:
    key_id = signing_key_id(storage, utc_now)
    assert signing_key_id(Storage(storage.engine), utc_now) == key_id  # a restart
    stored = storage.service_key(SIGNING_KEY_NAME)
    assert stored is not None
    assert (stored.key_id, stored.wrapped_dek, stored.key_version) == (key_id, b"", 0)


class _LateReader(Storage):
    """A replica that looked before another one's insert committed: its first read
    finds nothing."""

    looked = False

    def service_key(self, name: str) -> ServiceKey | None:
        if not self.looked:
            self.looked = True
            return None
        return super().service_key(name)


def test_signing_key_id_race_uses_the_other_replicas_key(storage: Storage) -> None:
    theirs = signing_key_id(storage, utc_now)
    late = _LateReader(storage.engine)
    assert signing_key_id(late, utc_now) == theirs
    assert late.looked


def test_signing_key_id_without_database_is_unavailable(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'oubli.db'}")
    with pytest.raises(Unavailable):
        signing_key_id(Storage(engine), utc_now)
    engine.dispose()
