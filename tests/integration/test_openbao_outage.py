"""OpenBao going away mid-run: UNAVAILABLE, and nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from kms.vault_transit import VaultTransitKeyManager
from oubli_client import OubliClient
from oubli_client.errors import Unavailable
from tests.stack import TEST_TOKEN, start_stack
from vault.app.openbao_process import OpenBaoDevServer
from vault.storage.tables import SubjectRow


def test_vault_outage_is_unavailable_and_writes_nothing(tmp_path: Path, sqlite_url: str) -> None:
    bao = OpenBaoDevServer(tmp_path / "bao.log").start()
    kms = VaultTransitKeyManager(bao.address, bao.token, timeout=2)
    kms.ensure_mount()
    server, storage = start_stack(sqlite_url, kms)
    try:
        with OubliClient(
            f"127.0.0.1:{server.port}", max_attempts=2, timeout=10, token=TEST_TOKEN
        ) as client:
            subject = client.create_subject()
            record = client.create_record(subject.subject_id, "contact", {"email": "a@b.c"})
            server.vault.crypto.cache.evict(storage.subject(subject.subject_id).key_id)
            bao.stop()
            with pytest.raises(Unavailable):
                client.get_record(subject.subject_id, record.record_id, "service")
            with pytest.raises(Unavailable):
                client.create_subject()
            with pytest.raises(Unavailable):
                client.shred_subject(subject.subject_id)
            with storage.engine.connect() as c:
                assert c.scalar(select(func.count()).select_from(SubjectRow)) == 1
            # the interrupted shred left the subject refused, not half-deleted
            assert client.get_subject(subject.subject_id).state == "shredding"
    finally:
        server.stop(grace=0)
        bao.stop()
