"""The Transit scale benchmark (benchmarks/transit_scale.py) end to end at a tiny size: it
must run and report every number; the timings themselves are not checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import transit_scale

pytestmark = pytest.mark.openbao


def test_transit_scale_benchmark_reports_every_number(tmp_path: Path) -> None:
    out = tmp_path / "transit.json"
    size = ["--keys", "200", "--measure-at", "100", "--samples", "20", "--key-cache", "10"]
    where = ["--work-dir", str(tmp_path / "work"), "--out", str(out)]
    transit_scale.main([*size, "--threads", "4", *where])

    result = json.loads(out.read_text())
    assert result["complete"] is True
    assert result["config"]["transit_key_cache_size"] == 10
    assert result["config"]["cache_config_read_before_restart"]["size"] == 10
    assert result["config"]["openbao"].startswith("OpenBao v")
    assert result["config"]["writes_per_key"] == 2
    assert [size["keys"] for size in result["sizes"]] == [100, 200]
    for size in result["sizes"]:
        assert size["creation"]["keys_per_s"] > 0
        assert size["raft_disk"]["total_mib"] > 0 and size["raft_disk_bytes_per_key"] > 0
        assert "vault.db" in size["raft_disk"]["parts_mib"]
        assert size["keys_read_to_fill_cache"] == 20  # twice the cache
        moments = ("after_restart", "after_cold_unwraps", "after_warm_unwraps")
        for moment in (*moments, "after_cache_filled"):
            memory = size["openbao_memory_mib"][moment]
            assert memory["rss_mib"] > 0 and memory["anon_mib"] > 0 and memory["file_mib"] >= 0
        for kind in ("unwrap_cold", "unwrap_warm"):
            stats = size[kind]
            assert stats["samples"] == 20
            assert 0 < stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert size["restart_seconds"] > 0
        assert size["transit_cache_config"] == {"size": 10, "warnings": []}


def test_a_run_cut_short_measures_the_size_it_reached(tmp_path: Path) -> None:
    out = tmp_path / "transit.json"
    size = ["--keys", "1000", "--samples", "20", "--key-cache", "10", "--no-deletion-config"]
    where = ["--work-dir", str(tmp_path / "work"), "--out", str(out)]
    transit_scale.main([*size, "--stop-creating-at", "0", *where])

    result = json.loads(out.read_text())
    assert result["complete"] is False
    assert result["config"]["writes_per_key"] == 1
    (size,) = result["sizes"]
    assert 0 < size["keys"] < 1000
    assert size["unwrap_cold"]["samples"] >= 1
