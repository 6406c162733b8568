"""The drill topology (tests/cluster/topology.py), built once for every scenario.

Each scenario leaves the cluster as it found it: every OpenBao node running and
unsealed, every replica's cable plugged in. Building it needs root and iproute2;
without them the fixture fails (an error, never a skip).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.cluster.topology import TOKEN_MAX_TTL, TOKEN_TTL, Drill


@pytest.fixture(scope="session")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    built = Drill(tmp_path_factory.mktemp("drill")).start()
    print(f"\ndrill topology up: {', '.join(f'{k} {v:.1f} s' for k, v in built.timings.items())}")
    try:
        yield built
    finally:
        with contextlib.suppress(OSError):
            counts = built.auth_events()
            print(
                f"\ndrill AppRole tokens ({TOKEN_TTL} ttl, {TOKEN_MAX_TTL} max): "
                + "; ".join(
                    f"{host} {c['logins']} logins, {c['renewals']} renewals, "
                    f"auth lost {c['lost']} time(s)"
                    for host, c in counts.items()
                )
            )
        built.stop()
