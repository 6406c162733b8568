"""Fault points (vault/fault_points.py): armed only by a test, each documented and placed.

The kills themselves, in a real server, are in tests/integration/test_crash_recovery.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vault.fault_points

ROOT = Path(__file__).resolve().parents[2]
CALL = 'from vault.fault_points import fault_point; fault_point("erasure.marked"); print("alive")'


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OUBLI_")}
    return subprocess.run(
        [sys.executable, "-c", CALL],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_an_armed_point_kills_the_process() -> None:
    result = _run({"OUBLI_FAULT_POINT": "erasure.marked", "OUBLI_TESTING": "1"})
    assert result.returncode == -9 and "alive" not in result.stdout


@pytest.mark.parametrize(
    "env",
    [
        {"OUBLI_FAULT_POINT": "erasure.marked"},  # not a test run: ignored
        {"OUBLI_FAULT_POINT": "erasure.marked", "OUBLI_TESTING": "0"},
        {"OUBLI_FAULT_POINT": "rekey.committed", "OUBLI_TESTING": "1"},  # another point
        {},
    ],
)
def test_a_point_not_armed_by_a_test_does_nothing(env: dict[str, str]) -> None:
    result = _run(env)
    assert result.returncode == 0 and result.stdout.strip() == "alive"


def test_every_point_is_documented_and_placed_once() -> None:
    doc = vault.fault_points.__doc__ or ""
    documented = re.findall(r"^- ``([a-z_.]+)``", doc, re.M)
    placed = [
        name
        for path in sorted((ROOT / "vault").rglob("*.py"))
        for name in re.findall(r'fault_point\("([a-z_.]+)"\)', path.read_text())
    ]
    assert len(documented) == 14
    assert sorted(placed) == sorted(documented)
