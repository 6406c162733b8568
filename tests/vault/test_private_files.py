"""What oubli writes is 0700 / 0600 under the common umask 022, and what it finds open
to others in its data directory is tightened (or refused)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from kms.local_keystore import LocalKeystore
from tests.file_modes import mode, open_to_others, umask
from vault.app.cli import app
from vault.app.config import ServerConfig
from vault.app.server import build_vault
from vault.private_files import (
    OpenToOthers,
    make_private_dir,
    tighten,
    write_private,
)
from vault.storage import make_engine, migrate


def test_directories_are_made_0700_and_existing_ones_left(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir(mode=0o755)
    os.chmod(tmp_path / "shared", 0o755)
    with umask(0o022):
        make_private_dir(tmp_path / "shared" / "a" / "b")
    assert mode(tmp_path / "shared") == 0o755  # not ours
    assert open_to_others(tmp_path / "shared" / "a") == {}


def test_written_files_are_0600_replacing_whatever_was_there(tmp_path: Path) -> None:
    old = tmp_path / "old.token"
    old.write_text("previous")
    os.chmod(old, 0o644)
    target = tmp_path / "elsewhere"
    target.write_text("not to be followed")
    link = tmp_path / "link.token"
    link.symlink_to(target)
    with umask(0o022):
        for path in (tmp_path / "new.token", old, link):
            write_private(path, b"secret")
            assert mode(path) == 0o600 and path.read_bytes() == b"secret"
    assert not link.is_symlink() and target.read_text() == "not to be followed"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "elsewhere",
        "link.token",
        "new.token",
        "old.token",
    ]


def test_tighten_takes_group_and_other_bits_off(tmp_path: Path) -> None:
    directory, file = tmp_path / "dir", tmp_path / "file"
    directory.mkdir()
    file.write_text("")
    os.chmod(directory, 0o755)
    os.chmod(file, 0o644)
    tighten([directory, file, tmp_path / "missing"])
    assert (mode(directory), mode(file)) == (0o700, 0o600)


def test_tighten_refuses_what_it_cannot_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)

    def not_the_owner(path: object, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("vault.private_files.os.chmod", not_the_owner)
    with pytest.raises(OpenToOthers, match=r"open to other users \(mode 0755\)"):
        tighten([data])


def test_the_sqlite_database_and_its_journals_are_0600(tmp_path: Path) -> None:
    with umask(0o022):
        engine = make_engine(f"sqlite:///{tmp_path / 'oubli.db'}")
        migrate(engine)
        with engine.connect() as connection:  # an open connection keeps -wal and -shm
            connection.execute(text("SELECT 1"))
            assert sorted(p.name for p in tmp_path.iterdir()) == [
                "oubli.db",
                "oubli.db-shm",
                "oubli.db-wal",
            ]
            assert open_to_others(tmp_path) == {}
        engine.dispose()


def test_the_keystore_and_the_directories_above_it_are_private(tmp_path: Path) -> None:
    with umask(0o022):
        keystore = LocalKeystore(tmp_path / "a" / "keystore" / "keys.db")
        keystore.create_key("k1")
        assert open_to_others(tmp_path / "a") == {}
        keystore.close()


def test_the_embedded_default_is_private_and_an_open_one_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "oubli-data"
    config = ServerConfig(data_dir=data, tokens_path=None)
    with umask(0o022):
        vault = build_vault(config)
        vault.crypto.kms.create_key("k1")
        assert open_to_others(data) == {}
        vault.crypto.kms.close()
        vault.storage.engine.dispose()
        # as an earlier oubli left it: everything readable by others
        for path in (data, *data.rglob("*")):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        (data / "tokens.toml").write_text("[tokens]\n")
        os.chmod(data / "tokens.toml", 0o644)
        vault = build_vault(config)
        assert open_to_others(data) == {}
        vault.crypto.kms.close()
        vault.storage.engine.dispose()


def test_a_data_dir_that_cannot_be_made_private_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "oubli-data"
    data.mkdir()
    os.chmod(data, 0o755)

    def not_the_owner(path: object, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("vault.private_files.os.chmod", not_the_owner)
    with pytest.raises(OpenToOthers):  # what oubli serve starts with
        build_vault(ServerConfig(data_dir=data))
    result = CliRunner().invoke(app, ["reconcile", "--data-dir", str(data)])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert f"reconcile failed: {data} is open to other users (mode 0755)" in message
    assert f"chmod go= {data}" in message
    assert not (data / "oubli.db").exists()


def test_token_create_makes_the_data_dir_private(tmp_path: Path) -> None:
    data = tmp_path / "new" / "oubli-data"
    with umask(0o022):
        result = CliRunner().invoke(app, ["token", "create", "billing", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert open_to_others(tmp_path / "new") == {}
    assert (data / "oubli.db").exists()  # the token's hash is in the data database
