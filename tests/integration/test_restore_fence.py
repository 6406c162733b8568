"""The restore fence: a restored database (and KMS) cannot bring an erased subject back.

Each test restores what an operator would — the SQLite file copied before a shred, a
pg_dump, an OpenBao raft snapshot — restarts the server and checks that the fence
erased the subject again before the first call was served, that a lost ledger refuses
the start until acknowledged, that a KMS outage keeps the server NOT_SERVING and its calls
UNAVAILABLE until the fence can finish, and that ``oubli reconcile --dry-run`` only lists.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import grpc
import hvac
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from kms.base import KmsUnavailable
from oubli_client import OubliClient
from oubli_client.errors import NotFound, Unavailable
from tests.conftest import PG_ADMIN_URL
from tests.memory_kms import InMemoryKeyManager
from tests.stack import TEST_TOKEN, suite_auth, vault_service
from vault.app.cli import app
from vault.app.config import ServerConfig
from vault.app.openbao_process import OpenBaoRaftServer
from vault.app.server import (
    RunningServer,
    build_erasure,
    build_vault,
    open_database,
    start_server,
)
from vault.usecases.erasure_ledger import ErasureLedger
from vault.usecases.restore_fence import LedgerBehind
from vault.vocabulary import SubjectState


def _copy_sqlite(source: Path, target: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    src.backup(dst)
    src.close()
    dst.close()


def _restore_sqlite(backup: Path, live: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{live}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, live)


def _health(server: RunningServer) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service="")).status)


def _client(server: RunningServer) -> OubliClient:
    return OubliClient(f"127.0.0.1:{server.port}", timeout=10, token=TEST_TOKEN, max_attempts=1)


def _config(data: Path, **overrides: object) -> ServerConfig:
    return ServerConfig.from_env({}, listen="127.0.0.1:0", data_dir=data, **overrides)


def test_a_restored_database_is_fenced_before_serving(tmp_path: Path) -> None:
    """SQLite + local keystore, the embedded default: the database copied before a
    shred is put back; the restarted server erases the subject before it serves."""
    data = tmp_path / "data"
    config = _config(data)
    server = start_server(config, auth=suite_auth())
    with _client(server) as client:
        erased = client.create_subject().subject_id
        kept = client.create_subject().subject_id
        erased_record = client.create_record(erased, "contact", {"email": "gone@example.org"})
        kept_record = client.create_record(kept, "contact", {"email": "kept@example.org"})
        _copy_sqlite(data / "oubli.db", tmp_path / "before-shred.db")
        receipt = client.shred_subject(erased)
    server.stop(grace=0)

    _restore_sqlite(tmp_path / "before-shred.db", data / "oubli.db")
    server = start_server(config, auth=suite_auth())
    try:
        assert _health(server) == health_pb2.HealthCheckResponse.SERVING
        with _client(server) as client:
            with pytest.raises(NotFound):  # the very first call: no plaintext
                client.get_record(erased, erased_record.record_id, "service")
            assert client.get_subject(erased).state == "shredded"
            assert client.get_record(kept, kept_record.record_id, "service").fields == {
                "email": "kept@example.org"
            }
        storage = server.vault.storage
        assert storage.subjects([erased])[erased].state == SubjectState.SHREDDED
        assert not server.vault.crypto.kms.key_exists(receipt.key_id)
        assert storage.ledger_position() == server.vault.ledger.head()[0] == 1
        assert server.fence.fence.lag == 1  # the restored database was one entry behind
    finally:
        server.stop(grace=0)


def _pg_dump_copy(url: str, workdir: Path) -> str:
    parsed = make_url(url)
    dump = workdir / "dump.sql"
    subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-f", str(dump), parsed.database or ""],
        check=True,
        timeout=120,
    )
    name = f"{parsed.database}_restored"
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


def _drop(url: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def test_database_and_openbao_both_restored_are_fenced_before_serving(
    tmp_path: Path, pg_url: str, pg_ledger_url: str
) -> None:
    """The disaster-recovery drill: PostgreSQL (pg_dump) and OpenBao (raft snapshot) both
    restored from before a shred, the ledger in its own PostgreSQL database. The erased
    key is back in OpenBao and the database shows the subject live; the fence destroys
    the key and erases the subject before the first call."""
    bao = OpenBaoRaftServer(tmp_path / "raft", log_path=tmp_path / "openbao.log")
    with bao:
        admin = hvac.Client(url=bao.address, token=bao.token)
        settings: dict[str, object] = {
            "kms": "vault",
            "vault_addr": bao.address,
            "vault_token": bao.token,
            "ledger_url": pg_ledger_url,
        }
        server = start_server(
            _config(tmp_path / "data", database_url=pg_url, **settings), auth=suite_auth()
        )
        with _client(server) as client:
            erased = client.create_subject().subject_id
            record = client.create_record(erased, "contact", {"email": "gone@example.org"})
            snapshot = admin.sys.take_raft_snapshot().content
            old_database = _pg_dump_copy(pg_url, tmp_path)
            receipt = client.shred_subject(erased)
        server.stop(grace=0)
        try:
            admin.sys.restore_raft_snapshot(snapshot)
            restored = _config(tmp_path / "data", database_url=old_database, **settings)
            server = start_server(restored, auth=suite_auth())
            try:
                assert _health(server) == health_pb2.HealthCheckResponse.SERVING
                with _client(server) as client, pytest.raises(NotFound):
                    client.get_record(erased, record.record_id, "service")
                assert not server.vault.crypto.kms.key_exists(receipt.key_id)
                info = server.vault.storage.subjects([erased])[erased]
                assert info.state == SubjectState.SHREDDED
            finally:
                server.stop(grace=0)
        finally:
            _drop(old_database)


def test_a_ledger_behind_the_database_refuses_to_serve_until_accepted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = _config(data)
    server = start_server(config, auth=suite_auth())
    with _client(server) as client:
        client.shred_subject(client.create_subject().subject_id)
    server.stop(grace=0)
    shutil.rmtree(data / "ledger")  # the ledger is lost

    with pytest.raises(LedgerBehind) as refused:
        start_server(config, auth=suite_auth())
    assert "ledger head seq 0" in refused.value.message
    assert "database high-water mark seq 1" in refused.value.message
    assert "--accept-ledger-behind" in refused.value.message

    server = start_server(_config(data, accept_ledger_behind=True), auth=suite_auth())
    try:
        assert _health(server) == health_pb2.HealthCheckResponse.SERVING
        # What the database's key ledger knew is in the ledger again, positions level.
        assert server.vault.ledger.head()[0] == 1
        assert server.vault.storage.ledger_position() == 1
    finally:
        server.stop(grace=0)
    server = start_server(config, auth=suite_auth())  # acknowledged once: starts again
    server.stop(grace=0)


class _FlakyKms(InMemoryKeyManager):
    """An in-memory KMS whose subject keys can be made unreachable (KmsUnavailable),
    its signing key staying reachable (the server starts, the fence cannot finish)."""

    down = False

    def key_exists(self, key_id: str) -> bool:
        if self.down and key_id not in self._signing_keys:
            raise KmsUnavailable("down")
        return super().key_exists(key_id)

    def destroy_key(self, key_id: str) -> None:
        if self.down:
            raise KmsUnavailable("down")
        super().destroy_key(key_id)


def test_a_kms_outage_keeps_the_fence_pending_then_it_recovers(tmp_path: Path) -> None:
    database = tmp_path / "oubli.db"
    ledger_url = f"sqlite:///{tmp_path / 'ledger' / 'erasures.db'}"
    config = ServerConfig(
        listen="127.0.0.1:0",
        data_dir=tmp_path,
        database_url=f"sqlite:///{database}",
        ledger_url=ledger_url,
        fence_interval_seconds=0.2,
    )
    kms = _FlakyKms()

    def start() -> RunningServer:
        storage = open_database(config)
        ledger = ErasureLedger(ledger_url)
        return start_server(
            config, vault=vault_service(storage, kms, ledger=ledger), auth=suite_auth()
        )

    server = start()
    with _client(server) as client:
        erased = client.create_subject().subject_id
        _copy_sqlite(database, tmp_path / "before.db")
        client.shred_subject(erased)
    server.stop(grace=0)
    _restore_sqlite(tmp_path / "before.db", database)

    kms.down = True
    server = start()
    try:
        assert _health(server) == health_pb2.HealthCheckResponse.NOT_SERVING
        with _client(server) as client, pytest.raises(Unavailable) as pending:
            client.get_subject(erased)
        assert pending.value.reason == "RESTORE_FENCE_PENDING"
        kms.down = False
        deadline = time.monotonic() + 15
        while _health(server) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "the fence never passed"
            time.sleep(0.1)
        with _client(server) as client:
            assert client.get_subject(erased).state == "shredded"
    finally:
        server.stop(grace=0)


def test_reconcile_dry_run_lists_and_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = _config(data)
    vault = build_vault(config)
    erased = vault.create_subject().subject_id
    vault.create_record(erased, "contact", {"email": "gone@example.org"}, "c")
    vault.storage.engine.dispose()
    _copy_sqlite(data / "oubli.db", tmp_path / "before.db")
    receipt = build_erasure(config, vault).shred(erased)
    vault.storage.engine.dispose()
    vault.crypto.kms.close()
    _restore_sqlite(tmp_path / "before.db", data / "oubli.db")

    result = CliRunner().invoke(app, ["reconcile", "--data-dir", str(data), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "ledger head 1, database position 0" in result.stdout
    assert f"would erase subject {erased}" in result.stdout
    assert "gone@example.org" not in result.stdout
    after = build_vault(config)
    assert after.storage.subjects([erased])[erased].state == SubjectState.ACTIVE  # unchanged
    assert after.storage.ledger_position() == 0
    after.storage.engine.dispose()

    result = CliRunner().invoke(app, ["reconcile", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert f"did erase subject {erased}" in result.stdout
    done = build_vault(config)
    assert done.storage.subjects([erased])[erased].state == SubjectState.SHREDDED
    assert not done.crypto.kms.key_exists(receipt.key_id)
    assert done.storage.ledger_position() == 1
