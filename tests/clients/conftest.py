"""A real oubli server for the client tests: SQLite and the local keystore, the suite's
all-RPC caller (TEST_TOKEN)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kms.local_keystore import LocalKeystore
from tests.stack import start_stack


@pytest.fixture
def server_target(sqlite_url: str, tmp_path: Path) -> Iterator[str]:
    server, _ = start_stack(sqlite_url, LocalKeystore(tmp_path / "keystore.db"))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(grace=0)
