"""Splitting large inputs at the server's maximum per batch call (1 000 items,
proto/oubli/v1/vault.proto), and what a caller learns when a later chunk fails."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from oubli_client.errors import OubliClientError

T = TypeVar("T")

#: Items per BatchCreateRecords, BatchGetRecords and BatchShredSubjects call.
BATCH_MAX = 1000


def chunks(items: Sequence[T], size: int = BATCH_MAX) -> Iterator[Sequence[T]]:
    """``items`` in order, ``size`` at a time (the last chunk may be shorter)."""
    if size < 1:
        raise ValueError("size must be at least 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


class BatchIncomplete(OubliClientError):
    """A chunk after the first failed as a whole: ``done`` holds the results of the
    chunks before it (each chunk of a batch put is atomic, so those records are stored
    and the rest are not); ``cause`` is the chunk's error, whose code and reason this
    error carries."""

    def __init__(self, cause: OubliClientError, done: list[Any], remaining: int) -> None:
        super().__init__(cause.code, cause.message, cause.reason, cause.field, cause.retry_after)
        self.cause = cause
        self.done = done
        #: Items not applied: the failed chunk's and every later one's.
        self.remaining = remaining
