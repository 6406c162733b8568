"""The in-process DEK cache: bounded, TTL'd, evictable, on an injected clock."""

from __future__ import annotations

import pytest

from vault.crypto.keycache import MAX_TTL_SECONDS, DataKeyCache


class FakeTimer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def timer() -> FakeTimer:
    return FakeTimer()


def dek(n: int) -> bytes:
    return bytes([n]) * 32


def test_hit(timer: FakeTimer) -> None:
    cache = DataKeyCache(ttl_seconds=30, timer=timer)
    cache.put("subject", 1, dek(1))
    assert cache.get("subject", 1) == dek(1)
    assert len(cache) == 1


def test_miss_for_unknown_key_or_version(timer: FakeTimer) -> None:
    cache = DataKeyCache(ttl_seconds=30, timer=timer)
    cache.put("subject", 1, dek(1))
    assert cache.get("other", 1) is None
    assert cache.get("subject", 2) is None


def test_several_versions_per_key(timer: FakeTimer) -> None:
    cache = DataKeyCache(ttl_seconds=30, timer=timer)
    cache.put("subject", 1, dek(1))
    cache.put("subject", 2, dek(2))
    assert cache.get("subject", 1) == dek(1)
    assert cache.get("subject", 2) == dek(2)
    assert len(cache) == 1  # one entry per subject


def test_miss_after_ttl(timer: FakeTimer) -> None:
    cache = DataKeyCache(ttl_seconds=30, timer=timer)
    cache.put("subject", 1, dek(1))

    timer.advance(29.9)
    assert cache.get("subject", 1) == dek(1)

    timer.advance(0.2)
    assert cache.get("subject", 1) is None
    assert len(cache) == 0


def test_ttl_is_never_beyond_the_cap(timer: FakeTimer) -> None:
    cache = DataKeyCache(timer=timer)
    cache.put("subject", 1, dek(1))
    timer.advance(MAX_TTL_SECONDS + 0.001)
    assert cache.get("subject", 1) is None


def test_adding_a_version_does_not_extend_older_versions(timer: FakeTimer) -> None:
    cache = DataKeyCache(ttl_seconds=10, timer=timer)
    cache.put("subject", 1, dek(1))
    timer.advance(8)
    cache.put("subject", 2, dek(2))
    assert cache.get("subject", 1) == dek(1)
    assert cache.get("subject", 2) == dek(2)

    timer.advance(2.1)

    # Version 1 was cached 10.1 s ago: past its TTL, whatever was added since.
    assert cache.get("subject", 1) is None


def test_bounded_size_evicts(timer: FakeTimer) -> None:
    cache = DataKeyCache(max_entries=3, ttl_seconds=30, timer=timer)
    for n in range(5):
        cache.put(f"subject{n}", 1, dek(n))

    assert len(cache) == 3
    present = [n for n in range(5) if cache.get(f"subject{n}", 1) == dek(n)]
    assert len(present) == 3
    # The most recent one is always kept.
    assert 4 in present


def test_evict_removes_every_version(timer: FakeTimer) -> None:
    cache = DataKeyCache(ttl_seconds=30, timer=timer)
    cache.put("doomed", 1, dek(1))
    cache.put("doomed", 2, dek(2))
    cache.put("kept", 1, dek(3))

    cache.evict("doomed")

    assert cache.get("doomed", 1) is None
    assert cache.get("doomed", 2) is None
    assert cache.get("kept", 1) == dek(3)
    assert len(cache) == 1


def test_evict_of_unknown_key_is_harmless(timer: FakeTimer) -> None:
    cache = DataKeyCache(ttl_seconds=30, timer=timer)
    cache.put("kept", 1, dek(1))
    cache.evict("never-cached")
    assert cache.get("kept", 1) == dek(1)


@pytest.mark.parametrize("ttl", [0, -1, -0.5, MAX_TTL_SECONDS + 0.001, 61, 3600])
def test_bad_ttl_rejected(ttl: float) -> None:
    with pytest.raises(ValueError):
        DataKeyCache(ttl_seconds=ttl)


@pytest.mark.parametrize("ttl", [0.001, 1, MAX_TTL_SECONDS])
def test_ttl_within_bounds_accepted(ttl: float, timer: FakeTimer) -> None:
    cache = DataKeyCache(ttl_seconds=ttl, timer=timer)
    cache.put("subject", 1, dek(1))
    assert cache.get("subject", 1) == dek(1)


@pytest.mark.parametrize("max_entries", [0, -1])
def test_bad_max_entries_rejected(max_entries: int) -> None:
    with pytest.raises(ValueError):
        DataKeyCache(max_entries=max_entries)


def test_single_entry_cache(timer: FakeTimer) -> None:
    cache = DataKeyCache(max_entries=1, ttl_seconds=30, timer=timer)
    cache.put("a", 1, dek(1))
    cache.put("b", 1, dek(2))
    assert cache.get("a", 1) is None
    assert cache.get("b", 1) == dek(2)
