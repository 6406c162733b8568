"""Benchmarks report ratios to baselines measured in the same run (machines are noisy).

    .venv/bin/python -m pytest benchmarks                       full run, table + JSON
    .venv/bin/python -m pytest benchmarks --benchmark-disable   smoke: each once, no timing

Servers run in their own processes (client and server share the machine's 2 cores),
exactly as a billing service would call oubli over loopback.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from kms.openbao_process import OpenBaoDevServer
from tests.conftest import PG_ADMIN_URL
from tests.integration.processes import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results.json"


@pytest.fixture(scope="session")
def echo_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port_file = tmp_path_factory.mktemp("echo") / "port"
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.echo_server", str(port_file)])
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("echo server did not start")
        time.sleep(0.05)
    yield f"127.0.0.1:{port_file.read_text()}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def bench_openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    with OpenBaoDevServer(tmp_path_factory.mktemp("bao") / "openbao.log") as server:
        yield server


@pytest.fixture(scope="session")
def pg_bench_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server the tests use."""
    name = f"oubli_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def oubli_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    bench_openbao: OpenBaoDevServer,
) -> Iterator[ServerProcess]:
    """oubli with real OpenBao, in its own process, on each database."""
    work = tmp_path_factory.mktemp(f"oubli-{request.param}")
    database = (
        ["--data-dir", str(work / "data")]
        if request.param == "sqlite"
        else ["--database-url", request.getfixturevalue("pg_bench_url")]
    )
    with ServerProcess(
        work,
        "serve",
        *database,
        "--kms",
        "vault",
        "--vault-addr",
        bench_openbao.address,
        "--vault-mount",
        f"transit-{request.param}",
        env={"VAULT_TOKEN": bench_openbao.token},
    ) as server:
        yield server


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Print ops/s and the ratios to the ceiling (echo) and the naive alternative."""
    plugin = getattr(session.config, "_benchmarksession", None)
    benchmarks = getattr(plugin, "benchmarks", []) if plugin else []
    rates = {
        b.name.removeprefix("test_"): 1.0 / b.stats.mean
        for b in benchmarks
        if getattr(b, "stats", None) and b.stats.mean
    }
    if not rates:
        return
    echo = next((r for n, r in rates.items() if n.startswith("ceiling_echo_unary")), None)
    naive = next(
        (r for n, r in rates.items() if n.startswith("naive_vault_encrypt_per_record")), None
    )
    rows = []
    for name, rate in sorted(rates.items()):
        rows.append(
            {
                "name": name,
                "ops_per_s": round(rate, 1),
                "x_echo": round(rate / echo, 3) if echo else None,
                "x_naive": round(rate / naive, 2) if naive else None,
            }
        )
    print(f"\n\n{'name':<48} {'ops/s':>9} {'x echo':>8} {'x naive':>8}")
    for row in rows:
        print(f"{row['name']:<48} {row['ops_per_s']:>9} {row['x_echo']!s:>8} {row['x_naive']!s:>8}")
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
