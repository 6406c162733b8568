"""When an idempotent call is tried again: on UNAVAILABLE only, with exponential backoff
and full jitter, and never sooner than the server's google.rpc.RetryInfo asks.

Calls that create or change data are never retried here: a retry after a lost reply
could apply them twice. The random source and the sleep are injected (tests pass fakes).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from oubli_client.errors import OubliClientError, from_rpc_error

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: Attempts in all, the first included (1: never retry).
    max_attempts: int = 4
    #: Cap of the first pause, in seconds; each later cap is twice the one before.
    initial_backoff: float = 0.1
    #: No pause's cap grows past this.
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("backoffs must satisfy 0 < initial_backoff <= max_backoff")

    def pauses(self, rng: random.Random) -> Iterator[float]:
        """The pause before each retry: uniform in [0, cap], the cap doubling up to
        ``max_backoff`` (full jitter, so clients that failed together spread out)."""
        cap = self.initial_backoff
        for _ in range(self.max_attempts - 1):
            yield rng.uniform(0, cap)
            cap = min(cap * 2, self.max_backoff)


def call_with_retries(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    *,
    idempotent: bool,
    rng: random.Random,
    sleep: Callable[[float], None],
) -> T:
    """``attempt()`` until it succeeds, fails with anything but UNAVAILABLE, is not
    idempotent, or has used ``policy.max_attempts``. Raises the OubliClientError of the
    last failure."""
    pauses = policy.pauses(rng) if idempotent else iter(())
    while True:
        try:
            return attempt()
        except grpc.RpcError as e:
            error = from_rpc_error(e)
        except OubliClientError as e:  # an attempt that translated its own error
            error = e
        pause = next(pauses, None) if error.code == grpc.StatusCode.UNAVAILABLE else None
        if pause is None:
            raise error from None
        sleep(max(pause, error.retry_after or 0.0))
