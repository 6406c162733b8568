"""OpenBaoDevServer keeps its root token out of the process table, the home directory
and any file others can read."""

from __future__ import annotations

from pathlib import Path

import hvac
import pytest

from tests.file_modes import mode, umask
from vault.app.openbao_process import OpenBaoDevServer

pytestmark = pytest.mark.openbao


def test_the_root_token_is_not_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    log = tmp_path / "openbao.log"
    with umask(0o022), OpenBaoDevServer(log) as bao:
        assert bao.pid is not None
        command_line = Path(f"/proc/{bao.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-dev" in command_line  # the dev server itself, not a wrapper
        assert not [arg for arg in command_line if bao.token.encode() in arg]
        # ... and the token it was given (through the environment) is the root token
        client = hvac.Client(url=bao.address, token=bao.token)
        assert client.auth.token.lookup_self()["data"]["policies"] == ["root"]
        client.adapter.close()
        assert mode(log) == 0o600  # the log prints the token
    # the dev server did not write its token to ~/.vault-token (nor ~/.bao-token)
    assert list((tmp_path / "home").iterdir()) == []
