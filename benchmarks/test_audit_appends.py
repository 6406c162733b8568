"""Audit appends from 1 and 3 processes on one PostgreSQL database: the chain lock on
every append (before issue 13, item 2) against recording without it and sealing in
batches (after), measured in the same run.

Each process is one replica's audit trail alone (no gRPC, no KMS): ``THREADS`` threads
each append ``appends`` entries, one transaction per append, as audited calls do.

- *locked*, the baseline: every append takes ``LOCK TABLE audit_entries IN SHARE ROW
  EXCLUSIVE MODE``, reads the head and inserts the hashed entry — the append of
  vault/storage/audit_log.py before the change, reproduced here with the same hashing;
- *sealed*: ``AuditLog.append`` (a plain insert into ``audit_pending``) while every
  process runs the background sealer the server runs (every 0.2 s).

A sampler reads ``pg_stat_activity`` every 10 ms: the share of samples in which some
backend waits on a lock. Afterwards everything is sealed and the chain verified whole.

    .venv/bin/python -m pytest benchmarks/test_audit_appends.py -s
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, insert, select, text

from benchmarks.test_audit_replicas import LockSampler
from kms.absent import AbsentKeyManager
from vault.audit.chain import SEAL_INTERVAL_SECONDS, AuditLog
from vault.audit.entries import AuditEvent, pending_entry
from vault.storage import Storage, make_engine, migrate
from vault.storage.tables import AuditEntryRow

pytestmark = pytest.mark.timeout(1800)

THREADS = 4
SUBJECT = "a" * 26


def _event(n: int) -> AuditEvent:
    return AuditEvent(
        caller="billing",
        action="SubjectService.GetSubject",
        subject_id=SUBJECT,
        purpose="billing",
        outcome="OK",
        request_id=f"req-{n}",
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _locked_append(audit: AuditLog, storage: Storage, event: AuditEvent) -> None:
    """The append before the change: the table lock, the head, the hashed entry."""
    columns = AuditEntryRow.__table__.c
    with storage.engine.begin() as c:
        c.execute(text("LOCK TABLE audit_entries IN SHARE ROW EXCLUSIVE MODE"))
        head = c.execute(
            select(columns.seq, columns.hash).order_by(columns.seq.desc()).limit(1)
        ).first()
        (entry,) = audit._chained(
            None if head is None else (head.seq, head.hash), [pending_entry(_now(), event)]
        )
        c.execute(insert(AuditEntryRow), [{k: getattr(entry, k) for k in entry.__slots__}])


def _replica(url: str, mode: str, appends: int, start: threading.Barrier | None) -> None:
    """One process: THREADS threads appending ``appends`` entries each."""
    storage = Storage(make_engine(url))
    audit = AuditLog(storage, AbsentKeyManager(), _now, "")
    stop = threading.Event()

    def sealer() -> None:
        while not stop.wait(SEAL_INTERVAL_SECONDS):
            audit.seal_if_pending()

    def appender(n: int) -> None:
        for i in range(appends):
            event = _event(n * 1_000_000 + i)
            if mode == "locked":
                _locked_append(audit, storage, event)
            else:
                audit.append(event)

    background = threading.Thread(target=sealer, daemon=True)
    if mode == "sealed":
        background.start()
    if start is not None:
        start.wait()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(appender, range(THREADS)))
    stop.set()
    storage.engine.dispose()


def _run(url: str, mode: str, processes: int, appends: int) -> float:
    """Appends/s of ``processes`` replicas, started together."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes + 1)
    workers = [
        context.Process(target=_replica, args=(url, mode, appends, start)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    assert all(w.exitcode == 0 for w in workers)
    return processes * THREADS * appends / elapsed


@pytest.fixture
def audit_url(pg_bench_url: str) -> Iterator[str]:
    engine = make_engine(pg_bench_url)
    migrate(engine)
    engine.dispose()
    yield pg_bench_url
    cleanup = create_engine(pg_bench_url)
    with cleanup.begin() as c:
        c.execute(text("TRUNCATE audit_entries, audit_pending, audit_checkpoints"))
    cleanup.dispose()


def test_audit_appends_with_one_and_three_replicas(  # type: ignore[no-untyped-def]
    benchmark, audit_url: str, request: pytest.FixtureRequest
) -> None:
    appends = 3 if request.config.getoption("benchmark_disable") else 150
    figures: dict[str, float] = {}
    for mode in ("locked", "sealed"):
        for processes in (1, 3):
            with LockSampler(audit_url) as sampler:
                rate = _run(audit_url, mode, processes, appends)
            label = f"{mode}_{processes}"
            figures[f"{label}_appends_per_s"] = round(rate, 1)
            figures[f"{label}_lock_wait_share"] = round(sampler.waiting_share, 3)
        figures[f"{mode}_three_to_one"] = round(
            figures[f"{mode}_3_appends_per_s"] / figures[f"{mode}_1_appends_per_s"], 2
        )
    figures["sealed_to_locked_with_three"] = round(
        figures["sealed_3_appends_per_s"] / figures["locked_3_appends_per_s"], 2
    )

    storage = Storage(make_engine(audit_url))
    audit = AuditLog(storage, AbsentKeyManager(), _now, "")
    audit.seal()
    verdict = audit.verify(full=True)
    storage.engine.dispose()
    expected = 2 * (1 + 3) * THREADS * appends  # both modes, 1 then 3 processes
    assert verdict.ok and verdict.checked == expected, verdict

    benchmark.extra_info.update(figures)
    benchmark.extra_info["items"] = expected
    print("\n" + "\n".join(f"{k}: {v}" for k, v in figures.items()))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
