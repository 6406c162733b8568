"""The KMS guard (kms/guard.py): per-call budget, calls in flight, circuit breaker.

Unit tests over the in-memory backend, made to fail or to block on demand; the clock is
injected, so the breaker's reset interval passes without sleeping. The real OpenBao,
stopped and killed under load, is in tests/integration/test_faults.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from kms.base import KeyDestroyed, KmsUnavailable
from kms.deadline import seconds_left, time_limit
from kms.guard import (
    BreakerState,
    GuardedKeyManager,
    KmsCircuitOpen,
    KmsNoTimeLeft,
    KmsOverloaded,
)
from tests.memory_kms import InMemoryKeyManager


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedKms(InMemoryKeyManager):
    """In-memory KMS whose ``unwrap`` can be made to fail, or to wait for a release."""

    def __init__(self) -> None:
        super().__init__()
        self.error: Exception | None = None
        self.entered = threading.Semaphore(0)
        self.release: threading.Event | None = None
        #: seconds_left() as each unwrap saw it.
        self.budgets: list[float | None] = []

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        self.budgets.append(seconds_left())
        self.entered.release()
        if self.release is not None:
            assert self.release.wait(timeout=30)
        if self.error is not None:
            self._count()
            raise self.error
        return super().unwrap(key_id, wrapped)


@pytest.fixture
def backend() -> ScriptedKms:
    return ScriptedKms()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def changes() -> list[BreakerState]:
    return []


@pytest.fixture
def guard(backend: ScriptedKms, clock: Clock, changes: list[BreakerState]) -> GuardedKeyManager:
    return GuardedKeyManager(
        backend,
        max_call_seconds=2.0,
        max_in_flight=2,
        failure_threshold=3,
        reset_seconds=0.5,
        clock=clock,
        on_breaker_change=changes.append,
    )


@pytest.fixture
def wrapped(guard: GuardedKeyManager) -> bytes:
    guard.create_key("k1")
    return guard.generate_data_key("k1").wrapped


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def fail_times(guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes, n: int) -> None:
    backend.error = KmsUnavailable("down")
    for _ in range(n):
        with pytest.raises(KmsUnavailable):
            guard.unwrap("k1", wrapped)


def test_backend_name_and_calls_are_the_backends(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes
) -> None:
    assert guard.backend_name == "memory"
    guard.unwrap("k1", wrapped)
    assert guard.calls == backend.calls > 0


def test_breaker_opens_after_consecutive_failures_and_then_refuses_without_calling(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes, changes: list[BreakerState]
) -> None:
    fail_times(guard, backend, wrapped, 2)
    assert guard.breaker.state is BreakerState.CLOSED
    fail_times(guard, backend, wrapped, 1)
    assert guard.breaker.state is BreakerState.OPEN
    assert changes == [BreakerState.OPEN]
    calls = backend.calls
    backend.error = None  # the KMS is back, but the breaker does not know yet
    for _ in range(10):
        with pytest.raises(KmsCircuitOpen):
            guard.unwrap("k1", wrapped)
    assert backend.calls == calls
    assert guard.status().refused["circuit_open"] == 10


def test_a_success_resets_the_count_of_consecutive_failures(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes
) -> None:
    fail_times(guard, backend, wrapped, 2)
    backend.error = None
    guard.unwrap("k1", wrapped)
    fail_times(guard, backend, wrapped, 2)
    assert guard.breaker.state is BreakerState.CLOSED


def test_other_kms_answers_show_the_kms_is_up(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes
) -> None:
    fail_times(guard, backend, wrapped, 2)
    backend.error = KeyDestroyed("gone")
    with pytest.raises(KeyDestroyed):
        guard.unwrap("k1", wrapped)
    fail_times(guard, backend, wrapped, 2)
    assert guard.breaker.state is BreakerState.CLOSED


def test_after_the_reset_interval_one_probe_closes_the_circuit(
    guard: GuardedKeyManager,
    backend: ScriptedKms,
    wrapped: bytes,
    clock: Clock,
    changes: list[BreakerState],
) -> None:
    fail_times(guard, backend, wrapped, 3)
    backend.error = None
    clock.now += 0.49
    with pytest.raises(KmsCircuitOpen):
        guard.unwrap("k1", wrapped)
    clock.now += 0.01
    assert len(guard.unwrap("k1", wrapped)) == 32  # the probe
    assert guard.breaker.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_failed_probe_opens_the_circuit_for_another_interval(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes, clock: Clock
) -> None:
    fail_times(guard, backend, wrapped, 3)
    clock.now += 0.5
    fail_times(guard, backend, wrapped, 1)  # the probe
    assert guard.breaker.state is BreakerState.OPEN
    backend.error = None
    clock.now += 0.4
    with pytest.raises(KmsCircuitOpen):
        guard.unwrap("k1", wrapped)
    clock.now += 0.1
    guard.unwrap("k1", wrapped)
    assert guard.breaker.state is BreakerState.CLOSED


def test_while_the_probe_is_out_every_other_call_is_refused(
    guard: GuardedKeyManager,
    backend: ScriptedKms,
    wrapped: bytes,
    clock: Clock,
    pool: ThreadPoolExecutor,
) -> None:
    fail_times(guard, backend, wrapped, 3)
    backend.error = None
    backend.release = threading.Event()
    clock.now += 0.5
    probe = pool.submit(guard.unwrap, "k1", wrapped)
    assert backend.entered.acquire(timeout=10)
    assert guard.breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(KmsCircuitOpen):
        guard.unwrap("k1", wrapped)
    backend.release.set()
    assert len(probe.result(timeout=10)) == 32
    assert guard.breaker.state is BreakerState.CLOSED


def test_calls_beyond_the_in_flight_limit_are_refused_and_do_not_move_the_breaker(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes, pool: ThreadPoolExecutor
) -> None:
    backend.release = threading.Event()
    held: list[Future[bytes]] = [pool.submit(guard.unwrap, "k1", wrapped) for _ in range(2)]
    for _ in held:
        assert backend.entered.acquire(timeout=10)
    assert guard.status().in_flight == 2
    for _ in range(5):  # more than the failure threshold: still not a KMS failure
        with pytest.raises(KmsOverloaded):
            guard.unwrap("k1", wrapped)
    assert guard.breaker.state is BreakerState.CLOSED
    backend.release.set()
    for future in held:
        assert len(future.result(timeout=10)) == 32
    status = guard.status()
    assert (status.in_flight, status.max_in_flight, status.refused["overloaded"]) == (0, 2, 5)
    guard.unwrap("k1", wrapped)  # slots are given back


def test_each_call_gets_the_cap_or_half_the_callers_time_left(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes
) -> None:
    guard.unwrap("k1", wrapped)
    with time_limit(lambda: 10.0):
        guard.unwrap("k1", wrapped)
    with time_limit(lambda: 1.0):
        guard.unwrap("k1", wrapped)
    # The injected clock does not move: the backend sees its whole budget.
    assert backend.budgets == [2.0, 2.0, 0.5]


def test_a_caller_with_too_little_time_left_is_refused_before_the_kms(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes
) -> None:
    calls = backend.calls
    for _ in range(5):
        with time_limit(lambda: 0.09), pytest.raises(KmsNoTimeLeft):
            guard.unwrap("k1", wrapped)
    assert backend.calls == calls
    assert guard.breaker.state is BreakerState.CLOSED
    assert guard.status().refused["no_time_left"] == 5


def test_after_the_kms_failed_a_call_its_later_kms_calls_are_refused_at_once(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes
) -> None:
    with time_limit(lambda: 10.0):
        fail_times(guard, backend, wrapped, 1)
        calls = backend.calls
        backend.error = None
        with pytest.raises(KmsNoTimeLeft):  # e.g. the clean-up after a failed create
            guard.destroy_key("k1")
        assert backend.calls == calls
    with time_limit(lambda: 10.0):  # the next RPC asks the KMS again
        guard.unwrap("k1", wrapped)
    assert guard.status().refused["failed_before"] == 1
    assert guard.breaker.state is BreakerState.CLOSED


def test_outside_a_call_every_kms_call_is_tried(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes
) -> None:
    fail_times(guard, backend, wrapped, 1)
    backend.error = None
    guard.unwrap("k1", wrapped)  # background work (checkpoints, retention) has no RPC


@pytest.mark.parametrize(
    "call",
    [
        lambda g: g.create_key("k2"),
        lambda g: g.generate_data_key("k1"),
        lambda g: g.unwrap_many([("k1", b"x")]),
        lambda g: g.destroy_key("k1"),
        lambda g: g.key_exists("k1"),
        lambda g: g.create_signing_key("s1"),
        lambda g: g.sign("s1", b"m"),
        lambda g: g.sign_many("s1", [b"m", b"n"]),
        lambda g: g.verify("s1", b"m", b"s"),
        lambda g: g.public_key("s1"),
        lambda g: g.rotate_key("k1"),
        lambda g: g.rewrap("k1", b"x"),
        lambda g: g.key_versions("k1"),
        lambda g: g.set_min_decryption_version("k1", 1),
        lambda g: g.trim_key("k1", 1),
        lambda g: g.public_keys("s1"),
    ],
)
def test_every_method_is_guarded(
    guard: GuardedKeyManager,
    backend: ScriptedKms,
    wrapped: bytes,
    call: Callable[[GuardedKeyManager], object],
) -> None:
    fail_times(guard, backend, wrapped, 3)
    calls = backend.calls
    with pytest.raises(KmsCircuitOpen):
        call(guard)
    assert backend.calls == calls


def test_sign_many_reaches_the_backend_as_one_guarded_call(
    guard: GuardedKeyManager, backend: ScriptedKms
) -> None:
    guard.create_signing_key("s1")
    calls = backend.calls

    signatures = guard.sign_many("s1", [b"m", b"n", b"o"])

    assert len(signatures) == 3
    assert backend.calls - calls == 1  # the backend's batch, not three guarded signs
    latencies = guard.status().latencies
    assert latencies["sign_many"].count == 1 and "sign" not in latencies


def test_invalid_settings_are_refused(backend: ScriptedKms) -> None:
    with pytest.raises(ValueError):
        GuardedKeyManager(backend, max_in_flight=0)
    with pytest.raises(ValueError):
        GuardedKeyManager(backend, failure_threshold=0)
    with pytest.raises(ValueError):
        GuardedKeyManager(backend, max_call_seconds=0.01)


def test_rotation_goes_through_to_the_backend(
    guard: GuardedKeyManager, backend: ScriptedKms, wrapped: bytes
) -> None:
    dek = guard.unwrap("k1", wrapped)
    assert guard.rotate_key("k1") == 2
    rewrapped = guard.rewrap("k1", wrapped)
    guard.set_min_decryption_version("k1", 2)
    guard.trim_key("k1", 2)
    assert (guard.key_versions("k1").latest, guard.key_versions("k1").min_available) == (2, 2)
    assert backend.unwrap("k1", rewrapped) == dek
    guard.create_signing_key("s1")
    guard.rotate_key("s1")
    assert guard.public_keys("s1") == backend.public_keys("s1")
    assert sorted(guard.public_keys("s1")) == [1, 2]
