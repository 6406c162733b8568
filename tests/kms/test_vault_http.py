"""kms/vault_http.py: hvac's requests over urllib3, requests' errors, proxies left to
requests (the Transit calls themselves run against real OpenBao in the other kms tests)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import requests

from kms.base import KmsUnavailable
from kms.vault_http import PooledSession, vault_session
from kms.vault_transit import VaultTransitKeyManager

ADDRESS = "http://127.0.0.1:8200"


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a stopped process)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.usefixtures("no_proxy_env")
def test_pooled_without_a_proxy_and_requests_with_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(vault_session(ADDRESS, True, None), PooledSession)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert vault_session(ADDRESS, True, None) is None  # hvac keeps its requests.Session
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert isinstance(vault_session(ADDRESS, True, None), PooledSession)


@pytest.mark.usefixtures("no_proxy_env")
def test_the_transit_client_uses_the_pool_unless_a_proxy_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kms = VaultTransitKeyManager(ADDRESS, "t")
    assert isinstance(kms._client.session, PooledSession)
    kms.close()
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    proxied = VaultTransitKeyManager(ADDRESS, "t")
    assert isinstance(proxied._client.session, requests.Session)
    proxied.close()


def test_tls_settings_reach_the_pool() -> None:
    session = PooledSession("/ca.pem", ("/c.pem", "/k.pem"))
    assert (session.verify, session.cert) == ("/ca.pem", ("/c.pem", "/k.pem"))
    settings = session._pool.connection_pool_kw
    assert settings["ca_certs"] == "/ca.pem"
    assert (settings["cert_file"], settings["key_file"]) == ("/c.pem", "/k.pem")
    assert settings["cert_reqs"] == "CERT_REQUIRED"
    assert PooledSession(False, None)._pool.connection_pool_kw["cert_reqs"] == "CERT_NONE"


def test_unreachable_is_requests_connection_error() -> None:
    session = PooledSession(True, None)
    with pytest.raises(requests.exceptions.ConnectionError):
        session.request("get", f"http://127.0.0.1:{closed_port()}/v1/sys/health", timeout=2)


def test_silence_is_requests_timeout(silent_port: int) -> None:
    session = PooledSession(True, None)
    with pytest.raises(requests.exceptions.Timeout):
        session.request("get", f"http://127.0.0.1:{silent_port}/v1/sys/health", timeout=0.2)


@pytest.mark.usefixtures("no_proxy_env")
def test_the_kms_seam_translates_them(silent_port: int) -> None:
    kms = VaultTransitKeyManager(f"http://127.0.0.1:{silent_port}", "t", timeout=0.2)
    with pytest.raises(KmsUnavailable):
        kms.unwrap("a" * 26, b"vault:v1:AAAA")
    kms.close()
    down = VaultTransitKeyManager(f"http://127.0.0.1:{closed_port()}", "t", timeout=1)
    with pytest.raises(KmsUnavailable):
        down.unwrap("a" * 26, b"vault:v1:AAAA")
    down.close()
