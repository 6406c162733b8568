"""The Transit backend keeps to the time left for the KMS call (kms/deadline.py).

Against the real OpenBao, and against a listener that accepts connections and never
answers (what a stopped KMS looks like from the client's side).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from kms.base import KmsUnavailable
from kms.deadline import time_limit
from kms.vault_transit import VaultTransitKeyManager

pytestmark = pytest.mark.openbao


@pytest.fixture
def silent_kms() -> Iterator[str]:
    """An address whose connections are accepted by the kernel and never answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_request_with_no_time_left_is_not_sent(vault_kms: VaultTransitKeyManager) -> None:
    key_id = "k" + secrets.token_hex(8)
    vault_kms.create_key(key_id)
    with time_limit(lambda: 0.0), pytest.raises(KmsUnavailable):
        vault_kms.key_exists(key_id)
    assert vault_kms.key_exists(key_id)  # outside the limit: the client's own timeout


def test_unwrap_many_threads_keep_the_calls_time_limit(vault_kms: VaultTransitKeyManager) -> None:
    items = []
    for _ in range(3):  # several keys: unwrapped side by side in threads of their own
        key_id = "k" + secrets.token_hex(8)
        vault_kms.create_key(key_id)
        items.append((key_id, vault_kms.generate_data_key(key_id).wrapped))
    assert all(isinstance(dek, bytes) for dek in vault_kms.unwrap_many(items))
    with time_limit(lambda: 0.0), pytest.raises(KmsUnavailable):
        vault_kms.unwrap_many(items)


def test_a_silent_kms_fails_within_the_time_left_not_the_clients_timeout(
    silent_kms: str,
) -> None:
    # The client's own timeout is far beyond the bound of this test: only the time
    # limit can end the call.
    kms = VaultTransitKeyManager(silent_kms, "token", timeout=3600)

    def unwrap_within_limit() -> None:
        with time_limit(lambda: 0.2), pytest.raises(KmsUnavailable):
            kms.key_exists("k1")

    with ThreadPoolExecutor(1) as pool:
        pool.submit(unwrap_within_limit).result(timeout=60)
    kms.close()
