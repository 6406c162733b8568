"""Rotating N subjects' keys against a batch shred of N subjects: same run, same stack
(in process: SQLite, real OpenBao Transit), reported as subjects/s, KMS calls per
subject and their ratios; the rotation's memory peak (tracemalloc) shows it is bounded
by its page (``limit`` keys per pass), not by N.

    .venv/bin/python -m pytest benchmarks/test_key_rotation.py -s          full: N = 10 000
    OUBLI_BENCH_ROTATION_SUBJECTS=2000 .venv/bin/python -m pytest benchmarks/test_key_rotation.py -s

Subject keys (KEKs): rotate, rewrap, min_decryption_version: 3 Transit calls per subject,
passes of 1 000. DEKs: a re-key per subject (new Transit key and DEK, re-encryption, the
old key in the erasure ledger and destroyed). The batch shred baseline: 1 000 subjects
per call (the API's maximum), one destroy per subject.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.helpers import Sizes
from kms.vault_transit import VaultTransitKeyManager
from tests.stack import erasure_of, key_rotation_of, vault_service
from vault.app.openbao_process import OpenBaoDevServer
from vault.storage import Storage, make_engine, migrate
from vault.usecases.key_rotation import RotationKind
from vault.usecases.service import VaultService

pytestmark = pytest.mark.timeout(3600)

PAGE = 1000


@pytest.fixture
def transit_vault(tmp_path: Path, bench_openbao: OpenBaoDevServer) -> Iterator[VaultService]:
    engine = make_engine(f"sqlite:///{tmp_path / 'oubli.db'}")
    migrate(engine)
    kms = VaultTransitKeyManager(
        bench_openbao.address, bench_openbao.token, mount_point="transit-rotation"
    )
    kms.ensure_mount(cache_size=20_000)
    vault = vault_service(Storage(engine), kms)
    yield vault
    kms.close()
    engine.dispose()


def _subjects(vault: VaultService, n: int) -> list[str]:
    made = []
    for _ in range(n):
        subject_id = vault.create_subject().subject_id
        vault.create_record(subject_id, "contact", {"email": "bench@example.org"}, "bench")
        made.append(subject_id)
    return made


def _timed(vault: VaultService, run: object) -> tuple[float, int, int]:
    """Seconds, KMS calls and tracemalloc peak bytes of ``run()``."""
    assert callable(run)
    kms = vault.crypto.kms
    calls = kms.calls
    tracemalloc.start()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, kms.calls - calls, peak


def test_rotating_n_subjects_against_a_batch_shred_of_n(  # type: ignore[no-untyped-def]
    benchmark, transit_vault: VaultService, sizes: Sizes
) -> None:
    n = int(os.environ.get("OUBLI_BENCH_ROTATION_SUBJECTS", 10_000 if sizes.timed else 30))
    vault = transit_vault
    rotation = key_rotation_of(vault)
    rotated_ids = _subjects(vault, n)
    cutoff = vault.clock()

    def rotate_keks() -> None:
        while True:
            report = rotation.rotate(RotationKind.SUBJECTS, rotated_before=cutoff, limit=PAGE)
            assert report.failed == 0
            if report.remaining == 0:
                return

    kek_seconds, kek_calls, kek_peak = _timed(vault, rotate_keks)

    dek_cutoff = vault.clock()

    def rotate_deks() -> None:
        while True:
            report = rotation.rotate(RotationKind.DEKS, rotated_before=dek_cutoff, limit=PAGE)
            assert report.failed == 0
            if report.remaining == 0:
                return

    dek_seconds, dek_calls, dek_peak = _timed(vault, rotate_deks)

    erasure = erasure_of(vault)
    shred_ids = _subjects(vault, n)

    def shred() -> None:
        for start in range(0, n, PAGE):
            results = erasure.shred_many(shred_ids[start : start + PAGE])
            assert all(not isinstance(r, Exception) for r in results)

    shred_seconds, shred_calls, shred_peak = _timed(vault, shred)
    figures = {
        "subjects": n,
        "kek_subjects_per_s": round(n / kek_seconds, 1),
        "kek_kms_calls_per_subject": round(kek_calls / n, 2),
        "kek_peak_mb": round(kek_peak / 2**20, 1),
        "dek_subjects_per_s": round(n / dek_seconds, 1),
        "dek_kms_calls_per_subject": round(dek_calls / n, 2),
        "dek_peak_mb": round(dek_peak / 2**20, 1),
        "shred_subjects_per_s": round(n / shred_seconds, 1),
        "shred_kms_calls_per_subject": round(shred_calls / n, 2),
        "shred_peak_mb": round(shred_peak / 2**20, 1),
        "kek_time_ratio_to_shred": round(kek_seconds / shred_seconds, 2),
        "kek_calls_ratio_to_shred": round(kek_calls / shred_calls, 2),
        "dek_time_ratio_to_shred": round(dek_seconds / shred_seconds, 2),
        "dek_calls_ratio_to_shred": round(dek_calls / shred_calls, 2),
    }
    benchmark.extra_info.update(figures)
    benchmark.extra_info["items"] = n
    print("\n" + "\n".join(f"{k}: {v}" for k, v in figures.items()))
    # Every subject rotated exactly once per kind: the calls are the algorithm's.
    assert kek_calls == 3 * n
    # Bounded by the page, not by N (a rotation holding N keys would grow with it).
    assert kek_peak < 64 * 2**20 and dek_peak < 64 * 2**20
    for subject_id in rotated_ids[:5]:
        vault.crypto.cache.evict(vault.storage.subject(subject_id).key_id)
        assert vault.all_records(subject_id, "service")[1]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
