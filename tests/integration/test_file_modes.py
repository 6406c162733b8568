"""Real ``oubli`` processes under umask 022 leave nothing another user can read: the
data directory, the databases and their journals, the ready file, an export, the dev
server's directory, tokens and OpenBao log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oubli_client import OubliClient
from tests.file_modes import mode, open_to_others
from tests.integration.processes import ServerProcess
from vault.access.caller_policy import CallerPolicy


def _export(server: ServerProcess, subject_id: str, output: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "vault.app.cli", "subject", "export", subject_id, "-o", str(output)],
        env={**os.environ, "OUBLI_TOKEN": server.token, "OUBLI_TARGET": server.target},
        umask=0o022,
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_serve_and_export_keep_personal_data_private(tmp_path: Path) -> None:
    with (
        ServerProcess(tmp_path, "serve", umask=0o022) as server,
        OubliClient(server.target, token=server.token) as client,
    ):
        subject = client.create_subject()
        client.create_record(subject.subject_id, "contact", {"email": "private@example.org"})
        data = tmp_path / "oubli-data"
        names = {str(p.relative_to(data)) for p in data.rglob("*")}
        # while serving, SQLite's journals are there too: they must be private as well
        assert {"oubli.db-wal", "oubli.db-shm", "keystore/keys.db-wal"} <= names
        assert open_to_others(data) == {}
        assert mode(server.ready_file) == 0o600
        # the harness wrote the tokens file 0644: oubli tightened it
        assert mode(tmp_path / "tokens.toml") == 0o600
        assert "file_mode_tightened" in server.log()

        new = tmp_path / "export.json"
        _export(server, subject.subject_id, new)
        replaced = tmp_path / "replaced.json"
        replaced.write_text("an older export")
        os.chmod(replaced, 0o644)
        _export(server, subject.subject_id, replaced)
        for exported in (new, replaced):
            assert b"private@example.org" in exported.read_bytes()
            assert mode(exported) == 0o600


def test_serve_tightens_the_data_dir_an_earlier_run_left_open(tmp_path: Path) -> None:
    data = tmp_path / "oubli-data"
    (data / "keystore").mkdir(parents=True)
    (data / "oubli.db").touch()
    (data / "keystore" / "keys.db").touch()
    for path in (data, *data.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    with ServerProcess(tmp_path, "serve", umask=0o022) as server:
        assert open_to_others(data) == {}
        assert server.log().count('"file_mode_tightened"') >= 4


@pytest.mark.openbao  # `oubli dev` starts its own OpenBao
def test_dev_keeps_its_directory_tokens_and_openbao_log_private(tmp_path: Path) -> None:
    with (
        ServerProcess(tmp_path, "dev", umask=0o022) as server,
        OubliClient(server.target, token=server.token) as client,
    ):
        client.create_subject()
        found = re.search(r"data in (\S+)", server.log())
        assert found is not None
        dev_dir = Path(found[1])
        # OpenBao prints its banner after it starts answering: wait for it.
        log_file, deadline = dev_dir / "openbao.log", time.monotonic() + 30
        while "Root Token:" not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log_file.read_text().count("Root Token:") == 1
        assert {"openbao.log", "oubli.db"} <= {p.name for p in dev_dir.iterdir()}
        assert open_to_others(dev_dir) == {}
        assert open_to_others(server.tokens_dir) == {}
        # One token per caller of the shipped policy.
        assert len(list(server.tokens_dir.iterdir())) == len(CallerPolicy.load().callers)
