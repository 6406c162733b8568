"""Restoring a KMS backup brings erased keys back; ``oubli reconcile`` destroys them again.

Uses the embedded default (local keystore): the backup is a copy of the keystore file
taken before a shred, restored after it, as an operator restoring last night's backup
would.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vault.cli import app
from vault.config import ServerConfig
from vault.errors import KeyDestroyedError
from vault.server import build_vault
from vault.service import VaultService
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

    receipt = vault.shred_subject(erased.subject_id)
    assert receipt.residual_copies_expire_at == receipt.shredded_at + timedelta(days=14)
    assert "14 days" in receipt.residual_risk and "oubli reconcile" in receipt.residual_risk
    vault.kms.close()

    # The operator restores last night's keystore: the erased key is back...
    _restore_sqlite(tmp_path / "keystore-backup.db", keystore)
    restored = build_vault(config)
    assert restored.kms.key_exists(receipt.key_id)
    # ...and with last night's database copy, the erased data would be readable again.
    old_copy = VaultService(
        Storage(make_engine(f"sqlite:///{tmp_path / 'database-backup.db'}")),
        restored.kms,
        restored.catalog,
    )
    assert old_copy.get_record(erased.subject_id, erased_record.record_id, "service").fields
    restored.kms.close()

    result = CliRunner().invoke(app, ["reconcile", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "1 shredded keys confirmed destroyed" in result.stdout

    after = build_vault(config)
    assert not after.kms.key_exists(receipt.key_id)
    old_copy = VaultService(
        Storage(make_engine(f"sqlite:///{tmp_path / 'database-backup.db'}")),
        after.kms,
        after.catalog,
    )
    with pytest.raises(KeyDestroyedError):
        old_copy.get_record(erased.subject_id, erased_record.record_id, "service")
    assert old_copy.get_record(kept.subject_id, kept_record.record_id, "service").fields == {
        "email": "k@x.y"
    }
    assert after.reconcile_shreds() == 1  # idempotent
