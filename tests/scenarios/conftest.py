"""Scenario fixtures: a real gRPC server on real OpenBao and each database, with a
clock the test moves (retention is tested by moving time, never by sleeping)."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from kms.vault_transit import VaultTransitKeyManager
from oubli_client import OubliClient
from tests.clock import FakeClock
from tests.conftest import PG_ADMIN_URL
from tests.stack import TEST_TOKEN, suite_auth, vault_service
from vault.app.config import ServerConfig
from vault.app.server import RunningServer, start_server
from vault.storage import Storage, make_engine, migrate
from vault.usecases.service import VaultService


@dataclass
class Scenario:
    client: OubliClient
    clock: FakeClock
    kms: VaultTransitKeyManager
    database_url: str
    server: RunningServer
    workdir: Path
    _copies: list[str] = field(default_factory=list)

    def copy_database(self) -> str:
        """A backup of the database as it is now (SQLite backup API / pg_dump)."""
        if self.database_url.startswith("sqlite"):
            path = self.workdir / f"copy-{secrets.token_hex(4)}.db"
            source = sqlite3.connect(self.database_url.removeprefix("sqlite:///"))
            target = sqlite3.connect(path)
            source.backup(target)
            source.close()
            target.close()
            return f"sqlite:///{path}"
        parsed = make_url(self.database_url)
        dump = self.workdir / f"dump-{secrets.token_hex(4)}.sql"
        subprocess.run(
            [
                "pg_dump",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-f",
                str(dump),
                parsed.database or "",
            ],
            check=True,
            timeout=120,
        )
        name = f"oubli_copy_{secrets.token_hex(4)}"
        self._copies.append(name)
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

    def reader(self, database_url: str) -> VaultService:
        """A fresh replica (empty caches) on a database copy, with the KMS as it is now."""
        return vault_service(Storage(make_engine(database_url)), self.kms, clock=self.clock)

    def drop_copies(self) -> None:
        if not self._copies:
            return
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            for name in self._copies:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def scenario(
    request: pytest.FixtureRequest, tmp_path: Path, vault_kms: VaultTransitKeyManager
) -> Iterator[Scenario]:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    clock = FakeClock(datetime(2026, 1, 15, 10, 0, tzinfo=UTC))
    engine = make_engine(url)
    migrate(engine)
    vault = vault_service(Storage(engine), vault_kms, clock=clock)
    server = start_server(
        ServerConfig(listen="127.0.0.1:0"), vault=vault, clock=clock, auth=suite_auth()
    )
    client = OubliClient(f"127.0.0.1:{server.port}", timeout=30, token=TEST_TOKEN)
    scenario = Scenario(client, clock, vault_kms, url, server, tmp_path)
    yield scenario
    client.close()
    server.stop(grace=0)
    scenario.drop_copies()
