"""How long the KMS may still take for the call in progress, and whether to ask it at all.

A gRPC call carries a deadline, and a KMS call made for it must end before it: a KMS
that stopped answering would otherwise hold the worker thread until the client gave
up. The limit is passed down the call stack in a context variable rather than through
every signature between the servicer and the backend:

- the gRPC interceptor binds the caller's remaining time for the RPC
  (``time_limit(context.time_remaining)``);
- :class:`kms.guard.GuardedKeyManager` narrows it, for each KMS call, to a short
  budget of its own, and marks the RPC's limit when the KMS was unavailable
  (:func:`note_kms_unavailable`): the RPC's later KMS calls (a clean-up after the
  failure, a second key) are refused at once instead of waiting a second time;
- a backend reads :func:`seconds_left` before each request it sends (the Transit
  backend sets it as the HTTP timeout).

A thread started for one call inherits nothing: submit its work through
``contextvars.copy_context().run`` so that it keeps the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class _Limit:
    #: Seconds left (asked again at each request).
    time_left: Callable[[], float]
    #: The KMS was unavailable for this call already.
    kms_failed: bool = False


_limit: ContextVar[_Limit | None] = ContextVar("oubli_kms_limit", default=None)


@contextmanager
def time_limit(time_left: Callable[[], float]) -> Iterator[None]:
    """Within the block, KMS calls must end within ``time_left()`` seconds.

    ``time_left`` is asked again at each request, so one binding serves a whole call.
    """
    token = _limit.set(_Limit(time_left))
    try:
        yield
    finally:
        _limit.reset(token)


def seconds_left() -> float | None:
    """Seconds the KMS call in progress may still take; None: no limit was bound."""
    limit = _limit.get()
    return None if limit is None else limit.time_left()


def note_kms_unavailable() -> None:
    """Remember, for the rest of the bound call, that the KMS did not answer it."""
    limit = _limit.get()
    if limit is not None:
        limit.kms_failed = True


def kms_failed() -> bool:
    """Whether the KMS was unavailable earlier in the bound call."""
    limit = _limit.get()
    return limit is not None and limit.kms_failed
