"""Throttle: one run of a costly operation at a time, and a pause between runs.

A full walk of the audit chain reads and hashes every entry (about a second per 50 000
entries): unbounded, one authorised caller asking again and again keeps a core busy.
The throttle is per process (per server replica); its state is lost on restart, which
costs at most one extra run.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from vault.clock import Clock
from vault.errors import RateLimited


class Throttle:
    """Lets ``what`` run when no run is under way and ``pause`` has passed since the
    previous run ended; refuses it otherwise with :class:`RateLimited`.

    Measuring the pause from the end of the previous run keeps the share of a core
    spent on runs at most ``duration / (duration + pause)``, however long a run takes.

    Args:
        pause: the least time between the end of one run and the start of the next.
        clock: the injected clock (tests move it).
        what: names the operation in messages (no caller input).
    """

    def __init__(self, pause: timedelta, clock: Clock, what: str) -> None:
        if pause < timedelta(0):
            raise ValueError("the pause must not be negative")
        self._pause = pause
        self._clock = clock
        self._what = what
        self._lock = threading.Lock()
        self._running = False
        self._next_start: datetime | None = None

    @contextmanager
    def run(self) -> Iterator[None]:
        """Hold the one slot for the duration of the ``with`` block.

        Raises:
            RateLimited: a run is under way (retry after one pause), or the previous
                one ended less than ``pause`` ago (retry when it has passed).
        """
        with self._lock:
            now = self._clock()
            if self._running:
                self._refuse(f"{self._what} is under way", self._pause)
            if self._next_start is not None and now < self._next_start:
                self._refuse(
                    f"{self._what} ran less than {self._pause.total_seconds():g} s ago",
                    self._next_start - now,
                )
            self._running = True
        try:
            yield
        finally:
            with self._lock:
                self._running = False
                self._next_start = self._clock() + self._pause

    @staticmethod
    def _refuse(why: str, retry_after: timedelta) -> None:
        # Whole seconds, rounded up: "retry in 0 s" would invite an immediate retry.
        seconds = max(1, math.ceil(retry_after.total_seconds()))
        raise RateLimited(f"{why}; retry in {seconds} s", timedelta(seconds=seconds))
