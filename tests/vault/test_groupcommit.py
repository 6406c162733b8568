"""Group commit: concurrent writes share batches; each caller gets its own results."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kms.memory import InMemoryKeyManager
from vault.groupcommit import GroupCommit
from vault.service import VaultService
from vault.storage import Storage


def _run_concurrently(
    count: int, first_write_delay: float, fn: Callable[[int], object]
) -> dict[int, object]:
    results: dict[int, object] = {}

    def call(n: int) -> None:
        try:
            results[n] = fn(n)
        except Exception as e:  # reported in the results
            results[n] = e

    threads = [threading.Thread(target=call, args=(n,)) for n in range(count)]
    threads[0].start()
    time.sleep(first_write_delay / 4)  # the first is writing when the others arrive
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_waiting_submits_share_the_next_batch() -> None:
    sizes: list[int] = []

    def write(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.1 if len(sizes) == 1 else 0)
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(write)
    results = _run_concurrently(10, 0.1, lambda n: group.submit([n, n + 100]))

    assert results == {n: [n * 10, (n + 100) * 10] for n in range(10)}
    assert sizes == [2, 18]  # the first alone, the nine that queued together
    assert group.batches == 2


def test_a_failed_batch_fails_its_callers_only() -> None:
    calls = 0
    failing = True

    def write(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(0.1)
            return items
        if failing:
            raise RuntimeError("disk full")
        return items

    group: GroupCommit[int, int] = GroupCommit(write)
    results = _run_concurrently(5, 0.1, lambda n: group.submit([n]))

    assert results[0] == [0]
    assert all(isinstance(results[n], RuntimeError) for n in range(1, 5))
    failing = False  # later writes succeed again: no writer is left stuck
    assert group.submit([7]) == [7]


def test_concurrent_record_inserts_are_grouped_and_each_answered(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Callable[..., VaultService]
) -> None:
    vault = make_vault(storage, memory_kms)
    subjects = [vault.create_subject().subject_id for _ in range(8)]
    erased = subjects[3]
    vault.shred_subject(erased)
    real = storage.insert_records

    def slow_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        if storage._inserts.batches == 0:
            time.sleep(0.2)
        return real(*args, **kwargs)

    storage.insert_records = slow_first  # type: ignore[method-assign]

    def put(n: int) -> object:
        return vault.create_record(subjects[n], "support", {"message": f"m{n}"}, "c").record_id

    results = _run_concurrently(8, 0.2, put)

    assert type(results[3]).__name__ == "SubjectShredded"  # the erased one alone fails
    stored = {n: r for n, r in results.items() if n != 3}
    for n, record_id in stored.items():
        assert vault.get_record(subjects[n], str(record_id), "support").fields == {
            "message": f"m{n}"
        }
    assert storage._inserts.batches < 8


def test_a_duplicate_profile_record_fails_alone(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Callable[..., VaultService]
) -> None:
    vault = make_vault(storage, memory_kms)
    subjects = [vault.create_subject().subject_id for _ in range(4)]
    vault.create_record(subjects[0], "identity", {"given_name": "A"}, "c")
    real = storage.insert_records

    def slow_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        if storage._inserts.batches == 1:
            time.sleep(0.2)
        return real(*args, **kwargs)

    storage.insert_records = slow_first  # type: ignore[method-assign]
    results = _run_concurrently(
        4, 0.2, lambda n: vault.create_record(subjects[n], "identity", {"given_name": "B"}, "c")
    )

    assert type(results[0]).__name__ == "AlreadyExists"
    assert all(type(results[n]).__name__ == "RecordView" for n in (1, 2, 3))
