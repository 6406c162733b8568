"""A token revoked with `oubli token` is refused by every replica from its next call.

Two server processes share one database (a SQLite file, or the real PostgreSQL) and the
KMS (real OpenBao); the commands run as their own processes too, as an operator would
run them on another machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oubli_client import OubliClient
from oubli_client.errors import OubliClientError
from tests.integration.processes import ServerProcess, replica_args
from vault.app.openbao_process import OpenBaoDevServer


def _oubli_token(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "vault.app.cli", "token", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _reason(target: str, token: str) -> str:
    with OubliClient(target, token=token, max_attempts=1) as client:
        try:
            client.create_subject()
        except OubliClientError as e:
            return f"{e.code.name}/{e.reason}"
    return "OK"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_revoke_and_rotate_reach_every_replica_at_once(
    backend: str, tmp_path: Path, openbao: OpenBaoDevServer, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    args = replica_args(url, openbao.address)
    with (
        ServerProcess(tmp_path / "a", *args, env={"VAULT_TOKEN": openbao.token}) as a,
        ServerProcess(tmp_path / "b", *args, env={"VAULT_TOKEN": openbao.token}) as b,
    ):
        # The operator's shell: the database and the caller policy, no KMS credentials.
        env = {
            **os.environ,
            "OUBLI_DATABASE_URL": url,
            "OUBLI_CALLERS": str(a.workdir / "callers.toml"),
        }
        env.pop("VAULT_TOKEN", None)
        first = _oubli_token(env, "create", "test-admin").strip()
        second = _oubli_token(env, "create", "test-admin").strip()
        replicas = (a.target, b.target)
        assert [_reason(t, token) for t in replicas for token in (first, second)] == ["OK"] * 4

        listed = [json.loads(line) for line in _oubli_token(env, "list", "--json").splitlines()]
        made = sorted((r for r in listed if r["source"] == "created"), key=lambda r: r["created"])
        first_id, second_id = made[0]["token_id"], made[1]["token_id"]

        _oubli_token(env, "revoke", first_id)
        revoked = "UNAUTHENTICATED/TOKEN_REVOKED"
        assert [_reason(t, first) for t in replicas] == [revoked, revoked]
        assert [_reason(t, second) for t in replicas] == ["OK", "OK"]

        third = _oubli_token(env, "rotate", second_id, "--now").strip()
        assert [_reason(t, second) for t in replicas] == [revoked, revoked]
        assert [_reason(t, third) for t in replicas] == ["OK", "OK"]
        # The suite's token, imported from each replica's tokens file, is untouched.
        assert [_reason(t, a.token) for t in replicas] == ["OK", "OK"]
