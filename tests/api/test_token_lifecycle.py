"""Token lifecycle through a served oubli and the `oubli token` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oubli_client import OubliClient
from oubli_client.errors import OubliClientError
from tests.clock import FakeClock
from tests.memory_kms import InMemoryKeyManager
from tests.stack import vault_service
from vault.access.tokens import TokenRegistry, token_hash
from vault.app.cli import app
from vault.app.config import ServerConfig
from vault.app.server import RunningServer, start_server, token_registry
from vault.storage import Storage, make_engine, migrate

runner = CliRunner()


@dataclass
class Served:
    server: RunningServer
    registry: TokenRegistry
    clock: FakeClock
    data_dir: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def cli(self, *args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["token", *args, "--data-dir", str(self.data_dir)])
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    # The commands read the real clock; the server's starts there and is moved.
    clock = FakeClock(datetime.now(UTC))
    config = ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path)
    engine = make_engine(config.resolved_database_url)
    migrate(engine)
    vault = vault_service(Storage(engine), InMemoryKeyManager(), clock=clock)
    server = start_server(config, vault=vault, clock=clock)
    registry = token_registry(config, clock)
    yield Served(server, registry, clock, tmp_path)
    registry.table.engine.dispose()
    server.stop(grace=0)


def _time(iso: str | None) -> datetime:
    assert iso is not None
    return datetime.fromisoformat(iso)


def _refusal(target: str, token: str) -> OubliClientError:
    with (
        OubliClient(target, token=token, max_attempts=1) as client,
        pytest.raises(OubliClientError) as refused,
    ):
        client.create_subject()
    return refused.value


def test_expired_and_revoked_tokens_are_unauthenticated_with_their_reason(
    served: Served,
) -> None:
    expiring = served.registry.create("control-panel", timedelta(hours=1))
    revoked = served.registry.create("control-panel")
    with OubliClient(served.target, token=expiring.token, max_attempts=1) as client:
        client.create_subject()
    served.registry.revoke(revoked.info.token_id)
    served.clock.advance(hours=1)
    cases = {
        expiring.token: "TOKEN_EXPIRED",
        revoked.token: "TOKEN_REVOKED",
        "oubli_never-made": "UNAUTHENTICATED",
    }
    for token, reason in cases.items():
        refusal = _refusal(served.target, token)
        assert refusal.code.name == "UNAUTHENTICATED"
        assert refusal.reason == reason
    audit = served.server.audit.audit
    # Refused calls leave no entry: only the lifecycle and the one accepted call do.
    assert {e.event.action for e in audit.query()} == {
        "token.create",
        "token.revoke",
        "SubjectService.CreateSubject",
    }


def test_the_token_commands_never_print_a_hash_and_show_a_token_once(served: Served) -> None:
    code, first, created = served.cli("create", "billing", "--expires-in", "30d")
    assert code == 0, created
    token = first.strip()
    assert token.startswith("oubli_") and "tok_" in created and token not in created
    code, second, notes = served.cli("rotate", "billing", "--grace", "10m")
    assert code == 0, notes
    new_token = second.strip()

    code, table, _ = served.cli("list")
    assert code == 0
    code, lines, _ = served.cli("list", "--json")
    assert code == 0
    for output in (table, lines):
        assert "sha256" not in output
        for secret in (token, new_token):
            assert secret not in output
            assert token_hash(secret).removeprefix("sha256:") not in output
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [(r["caller"], r["status"]) for r in rows] == [("billing", "active")] * 2
    old, new = sorted(rows, key=lambda r: r["created"] or "")
    assert old["replaced_by"] == new["token_id"]
    assert _time(old["expires"]) == _time(new["created"]) + timedelta(minutes=10)
    assert _time(new["expires"]) == _time(new["created"]) + timedelta(days=90)
    assert set(old) == {
        "token_id",
        "caller",
        "created",
        "expires",
        "status",
        "revoked",
        "replaced_by",
        "last_used",
        "source",
    }
    assert "TOKEN ID" in table and old["token_id"] in table

    served.clock.set(datetime.now(UTC) + timedelta(minutes=11))
    with (
        OubliClient(served.target, token=new_token, max_attempts=1) as billing,
        pytest.raises(OubliClientError) as refused,
    ):
        billing.get_subject("a" * 26)
    assert refused.value.reason == "SUBJECT_NOT_FOUND"  # past authentication
    assert _refusal(served.target, token).reason == "TOKEN_EXPIRED"


def test_revoke_and_rotate_now_through_the_commands(served: Served) -> None:
    code, out, _ = served.cli("create", "control-panel")
    token = out.strip()
    token_id = served.registry.find(token_hash(token)).token_id  # type: ignore[union-attr]
    code, out, _ = served.cli("revoke", token_id)
    assert code == 0 and f"{token_id} (control-panel) revoked at" in out
    assert _refusal(served.target, token).reason == "TOKEN_REVOKED"
    code, out, _ = served.cli("revoke", token_id)
    assert code == 0 and "revoked already" in out
    code, _, err = served.cli("revoke", "tok_" + "a" * 26)
    assert code == 1 and "no such token" in err

    code, out, _ = served.cli("create", "control-panel")
    old = out.strip()
    code, out, err = served.cli("rotate", "control-panel", "--now")
    assert code == 0 and "revoked" in err
    assert _refusal(served.target, old).reason == "TOKEN_REVOKED"
    with OubliClient(served.target, token=out.strip(), max_attempts=1) as client:
        client.create_subject()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "nobody"], "unknown caller"),
        (["create", "billing", "--expires-in", "366d"], "within 365 days"),
        (["create", "billing", "--expires-in", "soon"], "invalid --expires-in"),
        (["create", "billing", "--tokens-file", "x.toml"], "--tokens-file is gone"),
        (["rotate", "billing", "--grace", "31d"], "within 30 days"),
        (["rotate", "nobody"], "unknown caller"),
    ],
)
def test_token_commands_refuse_bad_arguments_with_exit_2(
    served: Served, args: list[str], message: str
) -> None:
    served.registry.create("billing")
    code, _, err = served.cli(*args)
    assert code == 2
    assert message in err


def test_rotate_with_nothing_active_fails(served: Served) -> None:
    code, _, err = served.cli("rotate", "billing")
    assert code == 1 and "no active token" in err


def test_the_commands_defaults_are_the_registrys() -> None:
    from vault.access import tokens
    from vault.app import token_cli

    assert tokens.parse_duration(token_cli.DEFAULT_EXPIRES_IN) == tokens.DEFAULT_EXPIRY
    assert tokens.parse_duration(token_cli.DEFAULT_GRACE) == tokens.DEFAULT_GRACE
