"""VerifyAudit's work, in process: the incremental check against the full walk (the
baseline, same run), on a 50 000-entry chain in SQLite signed with the local keystore.

    .venv/bin/python -m pytest benchmarks/test_audit_verify.py -p no:cacheprovider

The incremental check walks the checkpointed entry and the entries after it
(``SINCE_CHECKPOINT``, about what a checkpoint interval adds under load); the full walk
reads and hashes every entry. The incremental benchmark's ``extra_info["x_full_walk"]``
is the ratio of the two mean times. The smoke run (--benchmark-disable) uses 500 entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kms.local_keystore import LocalKeystore
from vault.audit.chain import AuditLog
from vault.audit.entries import AuditEvent
from vault.storage import Storage, make_engine, migrate

FULL_ENTRIES = 50_000
SMOKE_ENTRIES = 500
SINCE_CHECKPOINT = 1000
APPEND_BATCH = 1000
_means: dict[str, float] = {}


def _events(count: int, offset: int) -> list[AuditEvent]:
    return [
        AuditEvent(
            caller="billing",
            action="RecordService.GetRecord",
            subject_id="a" * 26,
            categories=("contact",),
            fields=("email", "city"),
            purpose="billing",
            outcome="OK",
            request_id=f"req-{offset + n}",
        )
        for n in range(count)
    ]


def _fill(audit: AuditLog, count: int, offset: int = 0) -> None:
    for start in range(0, count, APPEND_BATCH):
        audit.append_many(_events(min(APPEND_BATCH, count - start), offset + start))


@pytest.fixture(scope="module")
def chain(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuditLog]:
    """``entries`` entries, the newest checkpoint ``SINCE_CHECKPOINT`` entries back."""
    smoke = request.config.getoption("benchmark_disable")
    entries = SMOKE_ENTRIES if smoke else FULL_ENTRIES
    since = min(SINCE_CHECKPOINT, entries // 10)
    work: Path = tmp_path_factory.mktemp("audit-bench")
    engine = make_engine(f"sqlite:///{work / 'oubli.db'}")
    migrate(engine)
    keystore = LocalKeystore(work / "keys.db")
    audit = AuditLog(Storage(engine), keystore, lambda: datetime.now(UTC), "audit-bench")
    audit.ensure_signing_key()
    _fill(audit, entries - since)
    audit.checkpoint()
    _fill(audit, since, offset=entries - since)
    yield audit
    keystore.close()
    engine.dispose()


def _mean(benchmark: Any) -> float | None:
    stats = getattr(benchmark, "stats", None)
    return float(stats.stats.mean) if stats is not None else None


def test_baseline_full_walk(benchmark, chain: AuditLog) -> None:  # type: ignore[no-untyped-def]
    result = benchmark.pedantic(lambda: chain.verify(full=True), rounds=3, iterations=1)
    assert result.ok and result.full
    benchmark.extra_info["items"] = result.checked
    if (mean := _mean(benchmark)) is not None:
        _means["full"] = mean


def test_incremental_from_checkpoint(benchmark, chain: AuditLog) -> None:  # type: ignore[no-untyped-def]
    result = benchmark.pedantic(lambda: chain.verify(full=False), rounds=10, iterations=1)
    assert result.ok and not result.full
    benchmark.extra_info["items"] = result.checked
    mean = _mean(benchmark)
    if mean and "full" in _means:
        benchmark.extra_info["x_full_walk"] = round(_means["full"] / mean, 1)
