"""OpenBaoRaftServer keeps its Transit keys on disk: they decrypt after a restart."""

from __future__ import annotations

import base64
from pathlib import Path

import hvac
import pytest

from vault.app.openbao_process import OpenBaoRaftServer

pytestmark = pytest.mark.openbao


def test_transit_keys_survive_a_restart(tmp_path: Path) -> None:
    server = OpenBaoRaftServer(tmp_path / "raft", log_path=tmp_path / "openbao.log")
    plaintext = base64.b64encode(b"kept across restarts").decode()
    with server:
        assert server.running and server.pid is not None and server.token
        bao = hvac.Client(url=server.address, token=server.token)
        assert bao.sys.read_seal_status()["storage_type"] == "raft"
        bao.sys.enable_secrets_engine("transit", path="transit")
        bao.secrets.transit.create_key("subject-key", mount_point="transit")
        ciphertext = bao.secrets.transit.encrypt_data("subject-key", plaintext)["data"][
            "ciphertext"
        ]
        answer = bao.secrets.transit.decrypt_data("subject-key", ciphertext)
        assert answer["data"]["plaintext"] == plaintext
        bao.adapter.close()
    assert not server.running and server.pid is None
    assert (tmp_path / "raft" / "raft").is_dir()

    with server:  # same object: same data dir, ports, unseal key and root token
        bao = hvac.Client(url=server.address, token=server.token)
        answer = bao.secrets.transit.decrypt_data("subject-key", ciphertext)
        assert answer["data"]["plaintext"] == plaintext
        bao.adapter.close()
