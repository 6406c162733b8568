"""Benchmarks report ratios to baselines measured in the same run (machines are noisy).

    .venv/bin/python -m pytest benchmarks                       full run, table + JSON
    .venv/bin/python -m pytest benchmarks --benchmark-disable   smoke: each once, no timing

Servers run in their own processes (client and server share the machine's 2 cores),
exactly as a billing service would call oubli over loopback. Each database gets a
measured server (``oubli_server``, with Prometheus metrics to count KMS calls) and a
``writer`` on the same database and Transit mount, which fills what the measured one
must not have seen. The table at the end gives items/s (``extra_info["items"]`` per
call), the ratio to the ceiling (bare gRPC echo calls/s) and to the naive alternative
(one Transit call per record), and is saved to benchmarks/results.json.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from benchmarks.helpers import FULL, SMOKE, Deployment, MeteredServer, Sizes
from tests.conftest import PG_ADMIN_URL
from vault.app.openbao_process import OpenBaoDevServer

RESULTS = Path(__file__).resolve().parent / "results.json"


def _echo_server(port_file: Path, *args: str) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.echo_server", str(port_file), *args]
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("echo server did not start")
        time.sleep(0.05)
    yield f"127.0.0.1:{port_file.read_text()}"
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def echo_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _echo_server(tmp_path_factory.mktemp("echo") / "port")


@pytest.fixture(scope="session")
def echo_workers_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The echo with as many worker processes as benchmarks/test_workers.py's oubli."""
    yield from _echo_server(tmp_path_factory.mktemp("echo-workers") / "port", "--workers", "2")


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


@pytest.fixture(scope="session")
def sizes(request: pytest.FixtureRequest) -> Sizes:
    """Full sizes when timing; tiny ones for the smoke run (--benchmark-disable)."""
    return SMOKE if request.config.getoption("benchmark_disable") else FULL


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def oubli_deployment(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    bench_openbao: OpenBaoDevServer,
) -> Iterator[Deployment]:
    """A database and a Transit mount on the real OpenBao, for oubli processes."""
    work = tmp_path_factory.mktemp(f"oubli-{request.param}")
    if request.param == "sqlite":
        data = work / "data"
        url = f"sqlite:///{(data / 'oubli.db').resolve()}"
        database = ["--data-dir", str(data)]
    else:
        url = request.getfixturevalue("pg_bench_url")
        database = ["--database-url", url]
    flags = [
        *database,
        # One erasure ledger for every process on this database, as replicas share one.
        "--ledger-url",
        f"sqlite:///{(work / 'ledger' / 'erasures.db').resolve()}",
        "--kms",
        "vault",
        "--vault-addr",
        bench_openbao.address,
        "--vault-mount",
        f"transit-{request.param}",
    ]
    deployment = Deployment(request.param, url, flags, {"VAULT_TOKEN": bench_openbao.token}, work)
    try:
        yield deployment
    finally:
        deployment.stop_all()


@pytest.fixture(scope="session")
def oubli_server(oubli_deployment: Deployment) -> Iterator[MeteredServer]:
    """The measured oubli, with real OpenBao, in its own process, on each database."""
    server = oubli_deployment.server("measured")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def writer(oubli_deployment: Deployment, oubli_server: MeteredServer) -> Iterator[MeteredServer]:
    """A second oubli process on the same database and mount, that fills what the
    measured one must never have seen (cold subjects, subjects to shred or expire)."""
    server = oubli_deployment.server("writer")
    yield server
    server.stop()


def _rows(benchmarks: list[Any]) -> list[dict[str, Any]]:
    """Items/s of each benchmark and its ratios to the ceiling and to its naive baseline.

    A benchmark's call handles ``extra_info["items"]`` items (records, subjects), 1 if
    unset; its ``extra_info["baseline"]`` names the naive alternative it compares to:
    ``naive_encrypt`` (one Transit encrypt per record: puts) or ``naive_decrypt`` (one
    Transit decrypt per record: gets, export), none for shred and retention; its
    ``extra_info["ceiling"]`` the echo it compares to (``echo_unary``, one call at a
    time, by default; ``echo_concurrent`` for the concurrent runs; ``echo_workers`` for
    the runs against ``--workers 2``, benchmarks/test_workers.py).
    """
    measured = [b for b in benchmarks if getattr(b, "stats", None) and b.stats.mean]

    def rate_of(prefix: str) -> float | None:
        for b in measured:
            if b.name.removeprefix("test_").startswith(prefix):
                return float(b.extra_info.get("items", 1)) / float(b.stats.mean)
        return None

    ceilings = {
        "echo_unary": rate_of("ceiling_echo_unary"),
        "echo_concurrent": rate_of("ceiling_echo_concurrent"),
        "echo_workers": rate_of("ceiling_echo_workers"),
    }
    naive = {
        "naive_encrypt": rate_of("naive_vault_encrypt_per_record"),
        "naive_decrypt": rate_of("naive_vault_decrypt_per_record"),
    }
    rows = []
    for b in sorted(measured, key=lambda b: b.name):
        info = dict(b.extra_info)
        items = info.pop("items", 1)
        baseline = info.pop("baseline", None)
        # Concurrent runs compare to the echo driven the same way (8 client threads;
        # with worker processes, an echo with as many).
        echo = ceilings[info.pop("ceiling", "echo_unary")]
        rate = items / b.stats.mean
        base = naive.get(baseline) if baseline else None
        rows.append(
            {
                "name": b.name.removeprefix("test_"),
                "items_per_call": items,
                "items_per_s": round(rate, 1),
                "calls_per_s": round(1.0 / b.stats.mean, 2),
                "rounds": b.stats.rounds,
                "x_echo": round(rate / echo, 3) if echo else None,
                "baseline": baseline,
                "x_naive": round(rate / base, 2) if base else None,
                "extra_info": info,
            }
        )
    return rows


def _note(info: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, list):
            return "/".join(str(x) for x in v)
        return str(v)

    return " ".join(f"{k}={value(v)}" for k, v in info.items())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Print items/s and the ratios to the ceiling (echo) and the naive alternative."""
    plugin = getattr(session.config, "_benchmarksession", None)
    rows = _rows(getattr(plugin, "benchmarks", []) if plugin else [])
    if not rows:
        return
    print(f"\n\n{'name':<44} {'items/s':>10} {'x echo':>8} {'x naive':>8} {'baseline':<13} extra")
    for row in rows:
        print(
            f"{row['name']:<44} {row['items_per_s']:>10} {row['x_echo']!s:>8} "
            f"{row['x_naive']!s:>8} {row['baseline'] or '-':<13} {_note(row['extra_info'])}"
        )
    print(
        "x echo: items/s / echo calls/s (ceiling, 1 call = 1 KiB); x naive: items/s / "
        "naive Transit calls/s (1 call = 1 record), encrypt for puts, decrypt for gets"
    )
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
