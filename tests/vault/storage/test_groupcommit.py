"""Group commit: concurrent writes share batches; each caller gets its own results.

Grouping is shown deterministically, whatever the machine's load: the first write
announces itself (``started``) and then holds until the other callers have queued
behind it (:meth:`GroupCommit.wait_until_queued`); only then does it finish, and
the queued callers go together in the next batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.memory_kms import InMemoryKeyManager
from tests.stack import erasure_of
from vault.storage import Storage
from vault.storage.groupcommit import GroupCommit
from vault.usecases.service import VaultService

QUEUE_TIMEOUT = 10.0  # seconds; only reached if the test fails (callers never queue)


def _run_concurrently(
    count: int, started: threading.Event, fn: Callable[[int], object]
) -> dict[int, object]:
    """Run ``fn(0)`` first and, once its write has begun (``started``), ``fn(1..count-1)``
    concurrently; each call's result or exception, by call number."""
    results: dict[int, object] = {}

    def call(n: int) -> None:
        try:
            results[n] = fn(n)
        except Exception as e:  # reported in the results
            results[n] = e

    threads = [threading.Thread(target=call, args=(n,)) for n in range(count)]
    threads[0].start()
    assert started.wait(QUEUE_TIMEOUT), "the first call never started writing"
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_waiting_submits_share_the_next_batch() -> None:
    sizes: list[int] = []
    started = threading.Event()
    queued: list[bool] = []

    def write(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if not started.is_set():  # the first write holds until the nine have queued
            started.set()
            queued.append(group.wait_until_queued(9, QUEUE_TIMEOUT))
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(write)
    results = _run_concurrently(10, started, lambda n: group.submit([n, n + 100]))

    assert queued == [True]
    assert results == {n: [n * 10, (n + 100) * 10] for n in range(10)}
    assert sizes == [2, 18]  # the first alone, the nine that queued together
    assert group.batches == 2


def test_a_lone_submit_is_written_at_once() -> None:
    sizes: list[int] = []

    def write(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    group: GroupCommit[int, int] = GroupCommit(write)

    assert group.submit([1, 2]) == [1, 2]
    assert group.submit([3]) == [3]
    assert sizes == [2, 1]
    assert group.batches == 2


def test_a_failed_batch_fails_its_callers_only() -> None:
    sizes: list[int] = []
    started = threading.Event()
    queued: list[bool] = []
    failing = True

    def write(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if not started.is_set():  # the first batch (call 0 alone) succeeds
            started.set()
            queued.append(group.wait_until_queued(4, QUEUE_TIMEOUT))
            return items
        if failing:
            raise RuntimeError("disk full")
        return items

    group: GroupCommit[int, int] = GroupCommit(write)
    results = _run_concurrently(5, started, lambda n: group.submit([n]))

    assert queued == [True]
    assert sizes == [1, 4]  # call 0 alone, then the four that queued, together
    assert results[0] == [0]
    errors = [results[n] for n in range(1, 5)]
    assert all(isinstance(e, RuntimeError) for e in errors)
    assert len({id(e) for e in errors}) == 1  # one batch, one shared error
    failing = False  # later writes succeed again: no writer is left stuck
    assert group.submit([7]) == [7]
    assert group.batches == 2  # a failed write is not counted as written


def test_concurrent_record_inserts_are_grouped_and_each_answered(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Callable[..., VaultService]
) -> None:
    vault = make_vault(storage, memory_kms)
    subjects = [vault.create_subject().subject_id for _ in range(8)]
    erased = subjects[3]
    erasure_of(vault).shred(erased)
    real = storage.insert_records
    sizes: list[int] = []
    started = threading.Event()
    queued: list[bool] = []

    def held_first(records, key_ids, rides=()):  # type: ignore[no-untyped-def]
        sizes.append(len(records))
        if not started.is_set():  # the six other live subjects queue behind the first
            started.set()
            queued.append(storage._inserts.wait_until_queued(6, QUEUE_TIMEOUT))
        return real(records, key_ids, rides)

    storage.insert_records = held_first  # type: ignore[method-assign]

    def put(n: int) -> object:
        return vault.create_record(subjects[n], "support", {"message": f"m{n}"}, "c").record_id

    results = _run_concurrently(8, started, put)

    assert queued == [True]
    assert type(results[3]).__name__ == "SubjectShredded"  # the erased one alone fails
    stored = {n: r for n, r in results.items() if n != 3}
    for n, record_id in stored.items():
        assert vault.get_record(subjects[n], str(record_id), "support").fields == {
            "message": f"m{n}"
        }
    assert sizes == [1, 6]  # one transaction for the six that queued
    assert storage._inserts.batches == 2


def test_a_duplicate_profile_record_fails_alone(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Callable[..., VaultService]
) -> None:
    vault = make_vault(storage, memory_kms)
    subjects = [vault.create_subject().subject_id for _ in range(4)]
    vault.create_record(subjects[0], "identity", {"given_name": "A"}, "c")
    real = storage.insert_records
    sizes: list[int] = []
    started = threading.Event()
    queued: list[bool] = []

    def held_first(records, key_ids, rides=()):  # type: ignore[no-untyped-def]
        sizes.append(len(records))
        if not started.is_set():  # the duplicate queues with two good ones
            started.set()
            queued.append(storage._inserts.wait_until_queued(3, QUEUE_TIMEOUT))
        return real(records, key_ids, rides)

    storage.insert_records = held_first  # type: ignore[method-assign]
    order = [1, 0, 2, 3]  # subject 1 writes first; subject 0's duplicate waits with 2 and 3
    results = _run_concurrently(
        4,
        started,
        lambda n: vault.create_record(subjects[order[n]], "identity", {"given_name": "B"}, "c"),
    )

    assert queued == [True]
    # Subject 1 alone; then 0, 2, 3 together, refused as one, so each alone.
    assert sizes == [1, 3, 1, 1, 1]
    assert type(results[1]).__name__ == "AlreadyExists"  # subjects[0], the duplicate
    assert all(type(results[n]).__name__ == "RecordView" for n in (0, 2, 3))
    assert storage._inserts.batches == 3  # the setup's insert, subject 1, the group
