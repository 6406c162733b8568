"""Group commit: writes that arrive while another is being written go together next.

A durable commit costs an fsync, whatever it holds. When calls run concurrently, the
writes that queue up behind the one in flight are handed to the next writer as one
batch: one transaction, one commit, for all of them. A lone write goes at once, so a
single caller waits no longer than before.

Leader/follower, no background thread: the caller that finds nobody writing becomes
the writer ("leader"), takes the whole queue, writes it, and hands the role to the
first caller that queued meanwhile; the others sleep until their results are in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - the conventional short name of an item type
R = TypeVar("R")


class _Pending(Generic[I, R]):
    __slots__ = ("error", "items", "lead", "results", "wake")

    def __init__(self, items: list[I]) -> None:
        self.items = items
        self.results: list[R] | None = None
        self.error: BaseException | None = None
        self.lead = False  # woken to write the next batch, not with results
        self.wake = threading.Event()

    def outcome(self) -> list[R]:
        if self.error is not None:
            raise self.error
        assert self.results is not None
        return self.results


class GroupCommit(Generic[I, R]):
    """Runs ``write(items) -> results`` (one result per item, in order) over the items
    of concurrent :meth:`submit` calls, batched. If ``write`` raises, every caller of
    that batch gets the exception: nothing of the batch was written."""

    def __init__(self, write: Callable[[list[I]], Sequence[R]]) -> None:
        self._write = write
        self._lock = threading.Lock()
        # Notified when a submit queues (see wait_until_queued); shares the lock.
        self._queued = threading.Condition(self._lock)
        self._queue: list[_Pending[I, R]] = []
        self._writing = False
        #: Batches written so far (tests compare it with the calls made).
        self.batches = 0

    def wait_until_queued(self, count: int, timeout: float) -> bool:
        """Test seam: wait until ``count`` submits are queued, not yet taken into a
        batch; False if ``timeout`` seconds passed first. Called from inside ``write``,
        it holds the batch in flight until the others have queued behind it, so tests
        show grouping without depending on how fast threads start."""
        with self._queued:
            return self._queued.wait_for(lambda: len(self._queue) >= count, timeout)

    def submit(self, items: Sequence[I]) -> list[R]:
        """Write ``items`` (with whatever else is queued); their results, in order."""
        me: _Pending[I, R] = _Pending(list(items))
        with self._lock:
            self._queue.append(me)
            lead = not self._writing
            self._writing = True
            self._queued.notify_all()
        if not lead:
            me.wake.wait()
            if not me.lead:  # a leader wrote it
                return me.outcome()
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            results = list(self._write([item for pending in batch for item in pending.items]))
            self.batches += 1
            for pending in batch:
                count = len(pending.items)
                pending.results, results = results[:count], results[count:]
        except Exception as error:  # every waiter fails with it
            for pending in batch:
                pending.error = error
        with self._lock:
            if self._queue:  # hand over: the first waiter writes the next batch
                self._queue[0].lead = True
                self._queue[0].wake.set()
            else:
                self._writing = False
        for pending in batch:
            if pending is not me:
                pending.wake.set()
        return me.outcome()
