"""Audited calls with 1 and 3 replicas on one PostgreSQL, through the servers (the
audit trail alone, before and after in one run: benchmarks/test_audit_appends.py).

Three ``oubli serve`` processes on one database and Transit mount. The same audited
calls (GetSubject: one audit entry each, appended by group commit) are driven by the
same 6 client threads, first all against one replica, then 2 threads per replica.
Meanwhile a sampler reads ``pg_stat_activity`` every 10 ms: how many backends wait on
a lock (``wait_event_type = 'Lock'``): before issue 13 item 2, the audit chain's
table lock, which every append took.

    .venv/bin/python -m pytest benchmarks/test_audit_replicas.py -s
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from benchmarks.helpers import Deployment, MeteredServer, client_for
from vault.app.openbao_process import OpenBaoDevServer

pytestmark = pytest.mark.timeout(1800)

THREADS = 6


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, bench_openbao: OpenBaoDevServer, pg_bench_url: str
) -> Iterator[list[MeteredServer]]:
    work: Path = tmp_path_factory.mktemp("audit-replicas")
    flags = [
        "--database-url",
        pg_bench_url,
        "--ledger-url",
        f"sqlite:///{(work / 'ledger' / 'erasures.db').resolve()}",
        "--kms",
        "vault",
        "--vault-addr",
        bench_openbao.address,
        "--vault-mount",
        "transit-audit-replicas",
    ]
    deployment = Deployment(
        "postgresql", pg_bench_url, flags, {"VAULT_TOKEN": bench_openbao.token}, work
    )
    try:
        yield [deployment.server(f"replica-{n}") for n in (1, 2, 3)]
    finally:
        deployment.stop_all()


class LockSampler:
    """Samples the number of backends waiting on a lock, every 10 ms, until stopped."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine(url)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        with self._engine.connect() as c:
            while not self._stop.is_set():
                self.samples.append(int(c.execute(query).scalar_one()))
                c.commit()
                time.sleep(0.01)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._engine.dispose()

    @property
    def waiting_share(self) -> float:
        """Share of samples with at least one backend waiting on a lock."""
        return sum(1 for s in self.samples if s) / max(1, len(self.samples))

    @property
    def mean_waiters(self) -> float:
        return sum(self.samples) / max(1, len(self.samples))


def _drive(targets: list[MeteredServer], subject_id: str, calls_per_thread: int) -> float:
    """Calls/s of THREADS threads, spread over ``targets``, each making
    ``calls_per_thread`` GetSubject calls."""

    def worker(n: int) -> int:
        with client_for(targets[n % len(targets)]) as client:
            for _ in range(calls_per_thread):
                client.get_subject(subject_id)
        return calls_per_thread

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        total = sum(pool.map(worker, range(THREADS)))
    return total / (time.perf_counter() - started)


def test_audited_calls_with_one_and_three_replicas(  # type: ignore[no-untyped-def]
    benchmark, replicas: list[MeteredServer], pg_bench_url: str, request: pytest.FixtureRequest
) -> None:
    calls = 2 if request.config.getoption("benchmark_disable") else 300
    with client_for(replicas[0]) as client:
        subject_id = client.create_subject().subject_id
    _drive(replicas, subject_id, 2)  # warm every replica and connection
    figures: dict[str, float] = {}
    for label, targets in (("one", replicas[:1]), ("three", replicas)):
        with LockSampler(pg_bench_url) as sampler:
            rate = _drive(targets, subject_id, calls)
        figures[f"{label}_calls_per_s"] = round(rate, 1)
        figures[f"{label}_lock_wait_share"] = round(sampler.waiting_share, 3)
        figures[f"{label}_mean_lock_waiters"] = round(sampler.mean_waiters, 3)
    figures["three_to_one_ratio"] = round(
        figures["three_calls_per_s"] / figures["one_calls_per_s"], 2
    )
    benchmark.extra_info.update(figures)
    benchmark.extra_info["items"] = THREADS * calls
    print("\n" + "\n".join(f"{k}: {v}" for k, v in figures.items()))
    assert figures["one_calls_per_s"] > 0 and figures["three_calls_per_s"] > 0
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
