"""Backup test: a database copy taken before a shred is useless for that subject.

Copy the SQLite file (online backup API) / pg_dump the PostgreSQL database, shred a
subject, then point a fresh server at the old copy with the same OpenBao: the shredded
subject's data cannot be decrypted, every other subject's can.
"""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from kms.base import KeyDestroyed
from kms.vault_transit import VaultTransitKeyManager
from oubli_client import OubliClient
from oubli_client.errors import NotFound
from tests.conftest import PG_ADMIN_URL
from tests.integration.processes import ServerProcess
from vault.app.openbao_process import OpenBaoDevServer
from vault.storage import Storage, make_engine


def _serve(workdir: Path, database_url: str, bao: OpenBaoDevServer, mount: str) -> ServerProcess:
    return ServerProcess(
        workdir,
        "serve",
        "--database-url",
        database_url,
        "--kms",
        "vault",
        "--vault-addr",
        bao.address,
        "--vault-mount",
        mount,
        env={"VAULT_TOKEN": bao.token},
    )


def _sqlite_copy(url: str, workdir: Path) -> str:
    source = sqlite3.connect(url.removeprefix("sqlite:///"))
    copy_path = workdir / "backup-copy.db"
    target = sqlite3.connect(copy_path)
    source.backup(target)
    source.close()
    target.close()
    return f"sqlite:///{copy_path}"


def _pg_copy(url: str, workdir: Path, created: list[str]) -> str:
    parsed = make_url(url)
    dump = workdir / "dump.sql"
    subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-f", str(dump), parsed.database or ""],
        check=True,
        timeout=120,
    )
    name = f"oubli_restore_{secrets.token_hex(4)}"
    created.append(name)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    subprocess.run(
        ["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", name, "-f", str(dump)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    return parsed.set(database=name).render_as_string(hide_password=False)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_old_database_copy_is_useless_for_the_shredded_subject(
    backend: str, tmp_path: Path, openbao: OpenBaoDevServer, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    mount = f"transit-{secrets.token_hex(4)}"
    restored: list[str] = []
    with (
        _serve(tmp_path / "a", url, openbao, mount) as live,
        OubliClient(live.target, token=live.token) as client,
    ):
        doomed = client.create_subject()
        kept = client.create_subject()
        doomed_record = client.create_record(
            doomed.subject_id, "contact", {"email": "doomed@example.org"}
        )
        kept_record = client.create_record(
            kept.subject_id, "contact", {"email": "kept@example.org"}
        )
        copy_url = (
            _sqlite_copy(url, tmp_path)
            if backend == "sqlite"
            else _pg_copy(url, tmp_path, restored)
        )
        receipt = client.shred_subject(doomed.subject_id)
    try:
        with (
            _serve(tmp_path / "b", copy_url, openbao, mount) as old,
            OubliClient(old.target, max_attempts=1, token=old.token) as client,
        ):
            # The copy still says "active" and still holds the wrapped DEK and ciphertext...
            assert client.get_subject(doomed.subject_id).state == "active"
            with pytest.raises(NotFound) as refused:
                client.get_record(doomed.subject_id, doomed_record.record_id, "service")
            assert refused.value.reason == "KEY_DESTROYED"
            with pytest.raises(NotFound):
                client.export_subject(doomed.subject_id)
            # ...while every other subject is fully readable from the copy.
            assert client.get_record(kept.subject_id, kept_record.record_id, "service").fields == {
                "email": "kept@example.org"
            }
            assert client.export_subject(kept.subject_id)["categories"]["contact"]
        # Below the API too: the wrapped DEK in the copy cannot be unwrapped by the KMS.
        engine = make_engine(copy_url)
        info = Storage(engine).subject(doomed.subject_id)
        engine.dispose()
        assert info.wrapped_dek is not None and info.key_id == receipt.key_id
        kms = VaultTransitKeyManager(openbao.address, openbao.token, mount_point=mount)
        with pytest.raises(KeyDestroyed):
            kms.unwrap(info.key_id, info.wrapped_dek)
        assert not kms.key_exists(info.key_id)
    finally:
        if restored:
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                for name in restored:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
