"""The drill topology (tests/cluster/topology.py), built once for every scenario.

Each scenario leaves the cluster as it found it: every OpenBao node running and
unsealed, every replica's cable plugged in. Building it needs root and iproute2;
without them the fixture fails (an error, never a skip).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.topology import Drill


@pytest.fixture(scope="session")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    built = Drill(tmp_path_factory.mktemp("drill")).start()
    print(f"\ndrill topology up: {', '.join(f'{k} {v:.1f} s' for k, v in built.timings.items())}")
    try:
        yield built
    finally:
        built.stop()
