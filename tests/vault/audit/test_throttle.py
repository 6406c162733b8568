"""The throttle: one run at a time, and a pause after each run (by the injected clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.clock import FakeClock
from vault.audit.throttle import Throttle
from vault.errors import RateLimited

START = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


def test_a_second_run_waits_for_the_pause_after_the_first() -> None:
    clock = FakeClock(START)
    throttle = Throttle(timedelta(seconds=60), clock, "a full walk")
    with throttle.run():
        clock.set(START + timedelta(seconds=10))  # the run took 10 s

    clock.set(START + timedelta(seconds=30))
    with pytest.raises(RateLimited) as caught, throttle.run():
        pass
    # The pause counts from the end of the run: 10 + 60 - 30.
    assert caught.value.retry_after == timedelta(seconds=40)
    assert caught.value.reason == "RATE_LIMITED"
    assert "retry in 40 s" in caught.value.message

    clock.set(START + timedelta(seconds=70))
    with throttle.run():
        pass


def test_one_run_at_a_time() -> None:
    throttle = Throttle(timedelta(seconds=5), FakeClock(START), "a full walk")
    with throttle.run():
        with pytest.raises(RateLimited) as caught, throttle.run():
            pass
        assert "under way" in caught.value.message


def test_a_failed_run_still_counts() -> None:
    clock = FakeClock(START)
    throttle = Throttle(timedelta(seconds=5), clock, "a full walk")
    with pytest.raises(ZeroDivisionError), throttle.run():
        _ = 1 / 0
    with pytest.raises(RateLimited), throttle.run():
        pass


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    clock = FakeClock(START)
    throttle = Throttle(timedelta(seconds=2), clock, "a full walk")
    with throttle.run():
        pass
    clock.set(START + timedelta(seconds=1, milliseconds=900))
    with pytest.raises(RateLimited) as caught, throttle.run():
        pass
    assert caught.value.retry_after == timedelta(seconds=1)


def test_a_negative_pause_is_refused() -> None:
    with pytest.raises(ValueError):
        Throttle(timedelta(seconds=-1), FakeClock(START), "a full walk")
