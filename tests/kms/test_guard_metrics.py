"""The guard's call timings and error counts (what oubli_kms_call_duration_seconds and
oubli_kms_errors_total export)."""

from __future__ import annotations

import pytest

from kms.base import KeyDestroyed, KmsAccessDenied, KmsError, KmsUnavailable
from kms.guard import LATENCY_BUCKETS, GuardedKeyManager
from tests.memory_kms import InMemoryKeyManager


class TimedKms(InMemoryKeyManager):
    """``unwrap`` moves the guard's clock by ``seconds`` and fails with ``error``."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock
        self.seconds = 0.0
        self.error: Exception | None = None

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        self.clock[0] += self.seconds
        if self.error is not None:
            raise self.error
        return super().unwrap(key_id, wrapped)


def test_calls_are_timed_per_operation_and_failures_counted_by_kind() -> None:
    now = [100.0]
    backend = TimedKms(now)
    guard = GuardedKeyManager(backend, failure_threshold=100, clock=lambda: now[0])
    guard.create_key("k1")
    wrapped = guard.generate_data_key("k1").wrapped
    status = guard.status()
    assert set(status.latencies) == {"create_key", "generate_data_key"}
    assert status.errors == {"unavailable": 0, "refused": 0, "destroyed": 0, "other": 0}

    backend.seconds = 0.3
    guard.unwrap("k1", wrapped)
    backend.seconds = 7.0  # beyond the last bucket
    guard.unwrap("k1", wrapped)
    for error in (
        KmsUnavailable("down"),
        KmsAccessDenied("denied"),
        KeyDestroyed("gone"),
        KmsError("odd"),
        RuntimeError("a bug"),
    ):
        backend.seconds, backend.error = 0.0005, error
        with pytest.raises(type(error)):
            guard.unwrap("k1", wrapped)

    status = guard.status()
    unwrap = status.latencies["unwrap"]
    assert unwrap.count == 7
    assert unwrap.total_seconds == pytest.approx(0.3 + 7.0 + 5 * 0.0005)
    assert sum(unwrap.counts) == 6  # the 7 s call is only in +Inf
    assert unwrap.counts[LATENCY_BUCKETS.index(0.5)] == 1  # 0.3 s: in (0.25, 0.5]
    assert unwrap.counts[0] == 5  # 0.5 ms: in the first bucket
    assert status.errors == {"unavailable": 1, "refused": 1, "destroyed": 1, "other": 2}


def test_refusals_of_the_guard_are_neither_timed_nor_errors() -> None:
    now = [100.0]
    backend = TimedKms(now)
    guard = GuardedKeyManager(backend, failure_threshold=1, reset_seconds=5, clock=lambda: now[0])
    guard.create_key("k1")
    wrapped = guard.generate_data_key("k1").wrapped
    backend.error = KmsUnavailable("down")
    with pytest.raises(KmsUnavailable):
        guard.unwrap("k1", wrapped)  # reaches the KMS, opens the breaker
    for _ in range(3):
        with pytest.raises(KmsUnavailable):
            guard.unwrap("k1", wrapped)  # refused: circuit open
    status = guard.status()
    assert status.latencies["unwrap"].count == 1
    assert status.errors["unavailable"] == 1
    assert status.refused["circuit_open"] == 3
