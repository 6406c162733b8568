"""The erasure ledger's cost: a unary shred with the ledger against one without it (same
run, same stack), and the restore fence's time over N ledger entries.

In process, on the embedded default (SQLite data database, local keystore, the ledger's
own SQLite file with ``synchronous=FULL``). "Without" is the same Erasure whose ledger
appends nothing (:class:`_NoLedger`), so the ratio is the ledger's cost alone.

    .venv/bin/python -m pytest benchmarks/test_erasure_ledger.py -s          full: N = 10 000
    OUBLI_BENCH_FENCE_ENTRIES=2000 .venv/bin/python -m pytest benchmarks/test_erasure_ledger.py -s

The fence's entries name keys the KMS no longer holds and subjects the database shows
erased (the common case after a restore that lost nothing): one KMS existence check per
key (8 side by side) and the database lookups; nothing to repair.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from benchmarks.helpers import Sizes
from kms.local_keystore import LocalKeystore
from tests.stack import erasure_of, vault_service
from vault.ids import new_id
from vault.storage import Storage, make_engine, migrate
from vault.storage.erasure_ledger import NewLedgerEntry
from vault.usecases.erasure import Erasure
from vault.usecases.erasure_ledger import SUBJECT, ErasureLedger
from vault.usecases.restore_fence import RestoreFence
from vault.usecases.service import VaultService

pytestmark = pytest.mark.timeout(1800)


class _NoLedger(ErasureLedger):
    """The baseline: appends are numbered, nothing is written."""

    def append(self, items: Sequence[NewLedgerEntry]) -> list[int]:
        return [1] * len(items)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[VaultService]:
    engine = make_engine(f"sqlite:///{tmp_path / 'oubli.db'}")
    migrate(engine)
    kms = LocalKeystore(tmp_path / "keystore" / "keys.db")
    ledger = ErasureLedger(f"sqlite:///{tmp_path / 'ledger' / 'erasures.db'}")
    yield vault_service(Storage(engine), kms, ledger=ledger)
    ledger.close()
    kms.close()
    engine.dispose()


def _shreds(erasure: Erasure, vault: VaultService, rounds: int) -> float:
    """Seconds per unary shred of a subject with one record (created beforehand)."""
    subjects = [vault.create_subject().subject_id for _ in range(rounds)]
    for subject_id in subjects:
        vault.create_record(subject_id, "contact", {"email": "bench@example.org"}, "bench")
    start = time.perf_counter()
    for subject_id in subjects:
        erasure.shred(subject_id)
    return (time.perf_counter() - start) / rounds


def test_unary_shred_with_the_ledger_against_without(  # type: ignore[no-untyped-def]
    benchmark, embedded: VaultService, sizes: Sizes, tmp_path: Path
) -> None:
    rounds = 200 if sizes.timed else 3
    with_ledger = erasure_of(embedded)
    without = Erasure(
        embedded.storage,
        embedded.crypto,
        embedded.catalog,
        ledger=_NoLedger(f"sqlite:///{tmp_path / 'unused.db'}"),
    )
    _shreds(with_ledger, embedded, 2)  # warm both paths
    _shreds(without, embedded, 2)
    timings: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(3):  # interleaved: the machine's noise falls on both
        timings["without"].append(_shreds(without, embedded, rounds))
        timings["with"].append(_shreds(with_ledger, embedded, rounds))
    mean_with = min(timings["with"])
    mean_without = min(timings["without"])
    benchmark.extra_info["shred_ms_with_ledger"] = round(mean_with * 1000, 3)
    benchmark.extra_info["shred_ms_without_ledger"] = round(mean_without * 1000, 3)
    benchmark.extra_info["ledger_cost_ratio"] = round(mean_with / mean_without, 3)
    print(
        f"\nunary shred: {mean_with * 1000:.2f} ms with the ledger, "
        f"{mean_without * 1000:.2f} ms without (ratio {mean_with / mean_without:.2f})"
    )
    subject = embedded.create_subject().subject_id
    benchmark.pedantic(with_ledger.shred, args=(subject,), rounds=1, iterations=1)


def test_fence_over_n_ledger_entries(  # type: ignore[no-untyped-def]
    benchmark, embedded: VaultService, sizes: Sizes
) -> None:
    count = int(os.environ.get("OUBLI_BENCH_FENCE_ENTRIES", 10_000 if sizes.timed else 50))
    entries = [NewLedgerEntry(SUBJECT, new_id(), new_id()) for _ in range(count)]
    for start in range(0, count, 1000):
        embedded.ledger.append(entries[start : start + 1000])
    embedded.storage.raise_ledger_position(count)
    fence = RestoreFence(erasure_of(embedded))

    def run() -> None:
        report = fence.run()
        assert report.plan.ledger_entries == count and not report.plan.keys_to_destroy

    started = time.perf_counter()
    benchmark.pedantic(run, rounds=1, iterations=1)
    seconds = time.perf_counter() - started
    benchmark.extra_info["items"] = count
    benchmark.extra_info["fence_seconds"] = round(seconds, 3)
    print(f"\nrestore fence over {count} ledger entries: {seconds:.2f} s")
