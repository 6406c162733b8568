"""Restoring a KMS backup brings erased keys back; ``oubli reconcile`` destroys them again.

On the embedded default (local keystore) the backup is a copy of the keystore file
taken before a shred, restored after it, as an operator restoring last night's backup
would; on OpenBao it is a raft snapshot, restored through OpenBao's own API.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import hvac
import pytest
from typer.testing import CliRunner

from kms.vault_transit import VaultTransitKeyManager
from oubli_client import OubliClient
from tests.stack import TEST_TOKEN, start_stack, vault_service
from vault.app.cli import app
from vault.app.config import ServerConfig
from vault.app.openbao_process import OpenBaoRaftServer
from vault.app.server import build_erasure, build_vault
from vault.errors import KeyDestroyedError
from vault.storage import Storage, make_engine


def _copy_sqlite(source: Path, target: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    src.backup(dst)
    src.close()
    dst.close()


def _restore_sqlite(backup: Path, live: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{live}{suffix}").unlink(missing_ok=True)
    live.write_bytes(backup.read_bytes())


def test_reconcile_destroys_keys_a_restore_brought_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = ServerConfig.from_env({}, data_dir=data, kms_backup_retention_days=14)
    vault = build_vault(config)
    erased = vault.create_subject()
    kept = vault.create_subject()
    erased_record = vault.create_record(erased.subject_id, "contact", {"email": "e@x.y"}, "c")
    kept_record = vault.create_record(kept.subject_id, "contact", {"email": "k@x.y"}, "c")
    keystore = config.resolved_keystore_path
    database = data / "oubli.db"
    _copy_sqlite(keystore, tmp_path / "keystore-backup.db")
    _copy_sqlite(database, tmp_path / "database-backup.db")

    receipt = build_erasure(config, vault).shred(erased.subject_id)
    assert receipt.residual_copies_expire_at == receipt.shredded_at + timedelta(days=14)
    assert "14 days" in receipt.residual_risk and "oubli reconcile" in receipt.residual_risk
    vault.crypto.kms.close()

    # The operator restores last night's keystore: the erased key is back...
    _restore_sqlite(tmp_path / "keystore-backup.db", keystore)
    restored = build_vault(config)
    assert restored.crypto.kms.key_exists(receipt.key_id)
    # ...and with last night's database copy, the erased data would be readable again.
    old_copy = vault_service(
        Storage(make_engine(f"sqlite:///{tmp_path / 'database-backup.db'}")),
        restored.crypto.kms,
        restored.catalog,
    )
    assert old_copy.get_record(erased.subject_id, erased_record.record_id, "service").fields
    restored.crypto.kms.close()

    result = CliRunner().invoke(app, ["reconcile", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "1 shredded keys confirmed destroyed" in result.stdout

    after = build_vault(config)
    assert not after.crypto.kms.key_exists(receipt.key_id)
    old_copy = vault_service(
        Storage(make_engine(f"sqlite:///{tmp_path / 'database-backup.db'}")),
        after.crypto.kms,
        after.catalog,
    )
    with pytest.raises(KeyDestroyedError):
        old_copy.get_record(erased.subject_id, erased_record.record_id, "service")
    assert old_copy.get_record(kept.subject_id, kept_record.record_id, "service").fields == {
        "email": "k@x.y"
    }
    assert build_erasure(config, after).reconcile() == 1  # idempotent


def test_reconcile_destroys_keys_an_openbao_snapshot_restore_brought_back(
    tmp_path: Path, pg_url: str
) -> None:
    """PostgreSQL + a real OpenBao with raft storage, as in production: the operator
    restores a raft snapshot taken before a shred, which brings the erased subject's
    Transit key back; ``oubli reconcile --kms vault`` destroys it again."""
    bao = OpenBaoRaftServer(tmp_path / "raft", log_path=tmp_path / "openbao.log")
    with bao:
        admin = hvac.Client(url=bao.address, token=bao.token)
        kms = VaultTransitKeyManager(bao.address, bao.token, mount_point="transit")
        kms.ensure_mount()
        server, _ = start_stack(pg_url, kms)
        try:
            with OubliClient(f"127.0.0.1:{server.port}", timeout=10, token=TEST_TOKEN) as client:
                erased = client.create_subject().subject_id
                kept = client.create_subject().subject_id
                client.create_record(erased, "contact", {"email": "erased@example.org"})
                kept_record = client.create_record(kept, "contact", {"email": "kept@example.org"})
                snapshot = admin.sys.take_raft_snapshot().content  # last night's backup
                receipt = client.shred_subject(erased)
                assert not kms.key_exists(receipt.key_id)

                admin.sys.restore_raft_snapshot(snapshot)
                assert kms.key_exists(receipt.key_id)  # the erased key is back

                result = CliRunner(env={"VAULT_TOKEN": bao.token}).invoke(
                    app,
                    [
                        "reconcile",
                        "--database-url",
                        pg_url,
                        "--kms",
                        "vault",
                        "--vault-addr",
                        bao.address,
                        "--vault-mount",
                        "transit",
                        "--data-dir",
                        str(tmp_path / "data"),
                        # the erasure ledger the server wrote (the fence refuses another)
                        "--ledger-url",
                        server.vault.ledger.url,
                    ],
                )
                assert result.exit_code == 0, result.output
                assert "1 shredded keys confirmed destroyed" in result.stdout
                assert not kms.key_exists(receipt.key_id)
                # The subject the shred left alone still reads.
                read = client.get_record(kept, kept_record.record_id, "billing")
                assert read.fields == {"email": "kept@example.org"}
        finally:
            server.stop(grace=0)
            kms.close()
            admin.adapter.close()
