"""The scale benchmark (benchmarks/scale.py) end to end at a tiny size: it must run and
report every number; the timings themselves are not checked (machines are noisy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scale

pytestmark = pytest.mark.openbao


def test_scale_benchmark_reports_every_number(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["--subjects", "200", "--records", "1000", "--small", "50", "--samples", "30"]
    scale.main([*args, "--work-dir", str(tmp_path / "work"), "--out", str(out)])

    result = json.loads(out.read_text())
    assert result["config"]["transit_key_cache_size"] == 20_000
    small, large = result["sizes"]["small"], result["sizes"]["large"]
    assert (small["subjects"], large["subjects"]) == (50, 200)
    assert (
        large["records"] == 1000 + 4 * 30
    )  # the fill, then each size's measured puts (random, warm)
    for size in (small, large):
        for op in scale.OPS:
            stats = size["ops"][op]
            assert stats["samples"] == 30
            assert 0 < stats["p50_ms"] <= stats["p99_ms"]
        for process in ("openbao", "oubli"):
            assert size[process]["rss_mib"] > 0
        assert size["openbao_raft_disk_mib"] > 0 and size["oubli_db_mib"] > 0
    assert set(result["ratios"]) == set(scale.OPS)
