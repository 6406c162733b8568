"""Smoke of benchmarks/instructions.py: the servers run under callgrind, a few calls each
are counted. Asserts that counts come out, never what they are (the figures come from
``python -m benchmarks.instructions``, docs/performance.md)."""

from __future__ import annotations

import shutil

from benchmarks.instructions import measure, table


def test_instructions_per_call_are_counted() -> None:
    # No skip: scripts/test installs valgrind; without it this fails, loudly.
    assert shutil.which("valgrind"), "valgrind is not installed (scripts/test installs it)"
    result = measure(calls=3, warmup=2)
    assert set(result) == {"echo", "get", "put", "get_x_echo", "put_x_echo"}
    assert all(value > 0 for value in result.values())
    assert "| oubli unary get" in table(result)
