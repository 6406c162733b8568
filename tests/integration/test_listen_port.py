"""A port one oubli server listens on is its own: a second server refuses to start
there instead of silently taking half the connections (grpc turns SO_REUSEPORT on by
default). Only servers built with ``reuse_port=True`` — deliberate workers of one
server — share a port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oubli_client import OubliClient
from tests.integration.processes import ServerProcess
from tests.memory_kms import InMemoryKeyManager
from tests.stack import suite_auth, vault_service
from vault.app.config import ServerConfig
from vault.app.server import RunningServer, start_server
from vault.errors import Unavailable
from vault.storage import Storage, make_engine, migrate


def test_a_second_server_on_the_port_of_a_running_one_refuses_to_start(tmp_path: Path) -> None:
    with (
        ServerProcess(tmp_path / "serve", "serve") as first,
        OubliClient(first.target, token=first.token) as client,
    ):
        subject = client.create_subject()
        # the case: `oubli serve`, then `oubli dev` on the same port
        second = ServerProcess(tmp_path / "dev", "dev", "--listen", first.target)
        try:
            with pytest.raises(RuntimeError, match="server exited early"):
                second.start()
        finally:
            code = second.stop()
        assert code == 1
        message = " ".join(second.log().split())
        assert f"cannot start: cannot listen on {first.target}: the port is in use" in message
        # the first one serves on, and every connection reaches it
        for _ in range(20):
            with OubliClient(first.target, token=first.token) as fresh:
                assert fresh.get_subject(subject.subject_id).state == "active"
        assert first.process is not None and first.process.poll() is None


@pytest.fixture
def new_server(sqlite_url: str) -> Iterator[Callable[..., RunningServer]]:
    """Servers on one SQLite database (as workers of one server would be), stopped
    at the end."""
    started: list[RunningServer] = []

    def start(listen: str, **options: bool) -> RunningServer:
        engine = make_engine(sqlite_url)
        migrate(engine)
        vault = vault_service(Storage(engine), InMemoryKeyManager())
        try:
            server = start_server(
                ServerConfig(listen=listen), vault=vault, auth=suite_auth(), **options
            )
        except BaseException:
            engine.dispose()
            raise
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace=0)


def test_only_servers_that_ask_for_it_share_a_port(
    new_server: Callable[..., RunningServer],
) -> None:
    worker = new_server("127.0.0.1:0", reuse_port=True)
    target = f"127.0.0.1:{worker.port}"
    assert new_server(target, reuse_port=True).port == worker.port
    with pytest.raises(Unavailable, match="the port is in use"):
        new_server(target)  # exclusive by default

    exclusive = new_server("127.0.0.1:0")
    with pytest.raises(Unavailable, match="the port is in use"):
        new_server(f"127.0.0.1:{exclusive.port}", reuse_port=True)
