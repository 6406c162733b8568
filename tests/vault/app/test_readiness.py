"""Readiness: the probe's combination of the restore fence and the dependencies, its
bounds, its logs; the KMS check through the guard."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from structlog.testing import capture_logs

from kms.base import KmsAccessDenied, KmsUnavailable
from kms.guard import GuardedKeyManager
from tests.memory_kms import InMemoryKeyManager
from vault.app.readiness import Dependency, Readiness, kms_check
from vault.errors import Unavailable

DB, KMS = Dependency.DATABASE, Dependency.KMS


class Switch:
    """A check that fails while ``error`` is set, and hangs while ``hang`` is clear."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.hang = threading.Event()
        self.hang.set()
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        self.hang.wait(10)
        if self.error is not None:
            raise self.error


@pytest.fixture
def published() -> list[bool]:
    return []


@pytest.fixture
def switches() -> dict[Dependency, Switch]:
    return {DB: Switch(), KMS: Switch()}


@pytest.fixture
def readiness(switches: dict[Dependency, Switch], published: list[bool]) -> Iterator[Readiness]:
    probe = Readiness(dict(switches), published.append, interval=0.05, timeout=0.3)
    yield probe
    for switch in switches.values():
        switch.hang.set()
    probe.stop()


def test_ready_only_with_the_fence_passed_and_every_dependency_up(
    readiness: Readiness, switches: dict[Dependency, Switch], published: list[bool]
) -> None:
    assert readiness.probe_once() == {DB: True, KMS: True}
    assert published == [False]  # the fence has not passed
    readiness.fence(True)
    assert published == [False, True] and readiness.ready
    readiness.probe_once()
    readiness.fence(True)  # a later pass of the fence: no change, nothing published
    assert published == [False, True]
    readiness.fence(False)  # the ledger found behind: NOT_SERVING whatever the rest says
    assert published == [False, True, False]


def test_a_dependency_down_is_not_serving_and_back_is_serving_by_itself(
    readiness: Readiness, switches: dict[Dependency, Switch], published: list[bool]
) -> None:
    readiness.fence(True)
    readiness.probe_once()
    switches[DB].error = Unavailable("database error: OperationalError")
    with capture_logs() as logs:
        assert readiness.probe_once() == {DB: False, KMS: True}
        readiness.probe_once()  # still down: logged once
    assert published == [False, True, False]
    downs = [entry for entry in logs if entry["event"] == "dependency_down"]
    assert downs == [
        {
            "event": "dependency_down",
            "log_level": "warning",
            "dependency": "database",
            "error": "Unavailable",
        }
    ]
    switches[DB].error = None
    switches[KMS].error = KmsUnavailable("unreachable", key_id="signing-key-id")
    with capture_logs() as logs:
        assert readiness.probe_once() == {DB: True, KMS: False}
    assert published == [False, True, False]  # the KMS went as the database came back
    assert {(e["event"], e.get("dependency")) for e in logs} == {
        ("dependency_up", "database"),
        ("dependency_down", "kms"),
    }
    assert "signing-key-id" not in repr(logs)  # the error's class only
    switches[KMS].error = None
    readiness.probe_once()
    assert published == [False, True, False, True]


def test_a_hung_check_counts_as_down_within_the_timeout_and_is_not_piled_up(
    readiness: Readiness, switches: dict[Dependency, Switch], published: list[bool]
) -> None:
    readiness.fence(True)
    readiness.probe_once()
    switches[DB].hang.clear()
    calls = switches[DB].calls
    with capture_logs() as logs:
        assert readiness.probe_once() == {DB: False, KMS: True}
        assert readiness.probe_once() == {DB: False, KMS: True}
    assert switches[DB].calls == calls + 1  # the second probe did not start another
    assert [e["error"] for e in logs if e["event"] == "dependency_down"] == ["Timeout"]
    assert published[-1] is False
    switches[DB].hang.set()
    deadline_probe = 0
    while not readiness.ready and deadline_probe < 50:
        readiness.probe_once()
        deadline_probe += 1
    assert readiness.ready


def test_kms_check_through_the_guard() -> None:
    backend = InMemoryKeyManager()
    backend.create_signing_key("audit-signing")
    guard = GuardedKeyManager(backend, max_in_flight=1, slot_wait_seconds=0.01)
    published: list[bool] = []
    probe = Readiness(
        {KMS: kms_check(guard, lambda: "audit-signing", 1.0)},
        published.append,
        interval=1,
        timeout=1,
    )
    probe.fence(True)
    try:
        assert probe.probe_once() == {KMS: True}
        backend.unavailable = True
        assert probe.probe_once() == {KMS: False}
        backend.unavailable = False
        assert probe.probe_once() == {KMS: True}
        # Every slot busy: the check cannot tell, the state stays as it was.
        assert guard._slots.acquire(timeout=1)
        try:
            assert probe.probe_once() == {KMS: True}
        finally:
            guard._slots.release()
        # Refused credentials: not ready.
        original = backend.key_exists

        def denied(key_id: str) -> bool:
            raise KmsAccessDenied("permission denied", key_id=key_id)

        backend.key_exists = denied  # type: ignore[method-assign]
        assert probe.probe_once() == {KMS: False}
        backend.key_exists = original  # type: ignore[method-assign]
        assert probe.probe_once() == {KMS: True}
        assert published == [False, True, False, True, False, True]
    finally:
        probe.stop()


def test_the_loop_probes_at_each_interval_until_stopped(
    switches: dict[Dependency, Switch], published: list[bool]
) -> None:
    waits: list[float] = []
    stop_after = 3

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) > stop_after

    probe = Readiness(dict(switches), published.append, interval=7.5, timeout=1, wait=wait)
    probe.fence(True)
    probe.start()
    assert probe._thread is not None
    probe._thread.join(timeout=10)
    assert waits == [7.5] * (stop_after + 1)
    assert switches[DB].calls == switches[KMS].calls == stop_after
    assert published == [False, True]
    probe.stop()


def test_invalid_settings_are_refused() -> None:
    check: Callable[[], None] = lambda: None  # noqa: E731
    with pytest.raises(ValueError):
        Readiness({DB: check}, lambda _: None, interval=0)
    with pytest.raises(ValueError):
        Readiness({DB: check}, lambda _: None, timeout=-1)
