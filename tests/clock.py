"""The injected clock the tests move (retention is tested by moving time, not sleeping)."""

from __future__ import annotations

from datetime import datetime, timedelta

from vault.crypto.bucket_keys import add_months


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now

    def advance(self, *, days: int = 0, hours: int = 0, months: int = 0) -> None:
        self.now = add_months(self.now, months) + timedelta(days=days, hours=hours)
