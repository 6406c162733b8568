"""A guard in front of any key backend: short deadlines, bounded concurrency, a breaker.

A KMS that stops answering (a stopped process, a partitioned network) does not fail
its calls: it leaves them waiting. Unguarded, every call that needs a cold key then
holds a gRPC worker thread until the client's deadline, and once every worker waits
even calls that need no key are queued. :class:`GuardedKeyManager` wraps a backend and
keeps the server answering:

- **A short budget per call.** Each KMS call may take at most ``max_call_seconds``,
  and at most half of the caller's remaining gRPC time (:mod:`kms.deadline`), so the
  server still has time to answer UNAVAILABLE before the client gives up. A call left
  with less than ``min_call_seconds`` is refused before it is sent, and so is every
  later KMS call of an RPC for which the KMS was unavailable (or refused) once: an
  RPC waits on a hung KMS at most once.
- **Bounded concurrency.** At most ``max_in_flight`` calls are at the KMS at once. A
  call that finds no free slot within ``slot_wait_seconds`` (a short wait that absorbs
  bursts against a healthy KMS) is refused rather than queued, so the other workers
  stay free for calls that need no KMS.
- **A circuit breaker.** After ``failure_threshold`` consecutive calls failed with
  :class:`~kms.base.KmsUnavailable` (unreachable, timed out, server error), the
  circuit opens: calls are refused at once, without reaching the KMS. After
  ``reset_seconds`` one call goes through as a probe; its success closes the circuit,
  its failure opens it again. Any other answer from the KMS (a destroyed key, refused
  credentials) shows that it is up, and counts as a success.

Refusals are :class:`KmsUnavailable` subclasses, so the domain answers them as it
answers an unreachable KMS (UNAVAILABLE, safe to retry). Refusals of the guard itself
(no slot, no time left, failed before) are not failures of the KMS and do not move
the breaker.

The guard also times every call that reaches the backend (a latency histogram per
operation) and counts its failures by kind (unavailable, refused, destroyed, other), for
the metrics endpoint (:meth:`GuardedKeyManager.status`; no key ids).

With a ``tracer`` (an OpenTelemetry Tracer, vault/app/tracing.py; None: off), every call
that reaches the backend within a traced RPC is a ``kms.<operation>`` span, a child of
the RPC's span (background calls are not traced); attributes: the backend's name and
the outcome (``ok`` or an :class:`ErrorKind`), never a key id.

Why not ``pybreaker``: its ``CircuitBreaker.call`` holds one lock for the whole
guarded call, which would serialize every KMS call of the server, and it reads the
wall clock (``datetime.now``), which tests cannot move. See docs/dependencies.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from kms.base import (
    DataKey,
    KeyDestroyed,
    KeyManager,
    KeyVersions,
    KmsAccessDenied,
    KmsError,
    KmsUnavailable,
)
from kms.deadline import kms_failed, note_kms_unavailable, seconds_left, time_limit

T = TypeVar("T")


class KmsCircuitOpen(KmsUnavailable):
    """The breaker is open: the KMS failed repeatedly, calls are refused until a probe
    gets through."""


class KmsOverloaded(KmsUnavailable):
    """Too many KMS calls are in flight already (the KMS is slow or hung)."""


class KmsNoTimeLeft(KmsUnavailable):
    """The caller's deadline leaves too little time for a KMS call, or the KMS was
    unavailable earlier in the same call."""


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class _Admission:
    probe: bool


class CircuitBreaker:
    """Consecutive-failure breaker with a single probe (thread-safe; clock injected).

    Call :meth:`admit` before the KMS call; if it admits, report the outcome with
    :meth:`settle`. The lock is held only to read or change the state, never during
    the KMS call.
    """

    def __init__(
        self,
        failure_threshold: int,
        reset_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or reset_seconds <= 0:
            raise ValueError("the breaker needs a failure threshold >= 1 and reset > 0 s")
        self._threshold = failure_threshold
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        return self._state

    def admit(self) -> _Admission | None:
        """Whether a call may go to the KMS now (None: refuse it)."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return _Admission(probe=False)
            if self._state is BreakerState.OPEN:
                if self._clock() < self._opened_at + self._reset_seconds:
                    return None
                changed = self._move(BreakerState.HALF_OPEN)
            else:
                changed = None
            if self._probing:  # half-open: one probe at a time, the others are refused
                admission = None
            else:
                self._probing = True
                admission = _Admission(probe=True)
        self._notify(changed)
        return admission

    def settle(self, admission: _Admission, kms_answered: bool | None) -> None:
        """Report an admitted call: True the KMS answered, False it was unavailable,
        None the call never reached it."""
        with self._lock:
            if admission.probe:
                self._probing = False
            changed = None
            if kms_answered is True:
                self._failures = 0
                changed = self._move(BreakerState.CLOSED)
            elif kms_answered is False:
                self._failures += 1
                if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
                    self._opened_at = self._clock()
                    changed = self._move(BreakerState.OPEN)
        self._notify(changed)

    def _move(self, state: BreakerState) -> BreakerState | None:
        if self._state is state:
            return None
        self._state = state
        return state

    def _notify(self, changed: BreakerState | None) -> None:
        if changed is not None and self._on_change is not None:
            self._on_change(changed)


#: Upper bounds, in seconds, of the KMS call latency histogram's buckets (+Inf implied).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ErrorKind(StrEnum):
    """How a KMS call that reached the backend failed."""

    #: Unreachable, timed out, or a server error (what moves the breaker).
    UNAVAILABLE = "unavailable"
    #: Access denied: a token expired or revoked, a policy that does not allow it.
    REFUSED = "refused"
    #: The key is destroyed (an erased subject's key: expected after a shred).
    DESTROYED = "destroyed"
    #: Anything else.
    OTHER = "other"


def error_kind(error: BaseException) -> ErrorKind:
    if isinstance(error, KmsUnavailable):
        return ErrorKind.UNAVAILABLE
    if isinstance(error, KmsAccessDenied):
        return ErrorKind.REFUSED
    if isinstance(error, KeyDestroyed):
        return ErrorKind.DESTROYED
    return ErrorKind.OTHER


@dataclass(frozen=True, slots=True)
class Latencies:
    """One operation's call durations: ``counts[i]`` calls took at most
    ``LATENCY_BUCKETS[i]`` seconds and more than the bucket before (not cumulative);
    ``count`` and ``total_seconds`` cover every call, the slowest included."""

    counts: tuple[int, ...]
    count: int
    total_seconds: float


class _LatencyCounter:
    """A fixed-bucket histogram (callers hold the guard's counts lock)."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKETS)
        self.count = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                break
        self.count += 1
        self.total += seconds

    def snapshot(self) -> Latencies:
        return Latencies(tuple(self.counts), self.count, self.total)


@dataclass(frozen=True, slots=True)
class GuardStatus:
    """What the metrics endpoint shows of a guard (no key ids, nothing personal)."""

    breaker: BreakerState
    in_flight: int
    max_in_flight: int
    #: Calls refused without reaching the KMS, by reason: circuit_open, overloaded,
    #: no_time_left, failed_before.
    refused: dict[str, int]
    #: Durations of the calls that reached the backend, by operation (``unwrap``,
    #: ``sign``, ...): only operations called at least once.
    latencies: dict[str, Latencies] = field(default_factory=dict)
    #: Calls that reached the backend and failed, by kind (every kind, 0 included).
    errors: dict[str, int] = field(default_factory=dict)


class GuardedKeyManager(KeyManager):
    """Any :class:`KeyManager` behind a per-call budget, a slot limit and a breaker.

    ``backend_name`` and ``calls`` are the wrapped backend's: receipts and metrics
    name the real KMS.
    """

    def __init__(
        self,
        backend: KeyManager,
        *,
        max_call_seconds: float = 2.0,
        max_in_flight: int = 8,
        failure_threshold: int = 5,
        reset_seconds: float = 0.5,
        slot_wait_seconds: float = 0.05,
        min_call_seconds: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        on_breaker_change: Callable[[BreakerState], None] | None = None,
        tracer: Any = None,
    ) -> None:
        super().__init__()
        #: An OpenTelemetry Tracer, or None (tracing off); set by the server's wiring.
        self.tracer = tracer
        if max_in_flight < 1 or not 0 < min_call_seconds <= max_call_seconds:
            raise ValueError("the guard needs max_in_flight >= 1 and 0 < min <= max seconds")
        self.backend = backend
        self.backend_name = backend.backend_name
        self._max_seconds = max_call_seconds
        self._min_seconds = min_call_seconds
        self._slot_wait = slot_wait_seconds
        self._max_in_flight = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._clock = clock
        self.breaker = CircuitBreaker(
            failure_threshold, reset_seconds, clock=clock, on_change=on_breaker_change
        )
        self._counts_lock = threading.Lock()
        self._in_flight = 0
        self._refused = {"circuit_open": 0, "overloaded": 0, "no_time_left": 0, "failed_before": 0}
        self._latencies: dict[str, _LatencyCounter] = {}
        self._errors = dict.fromkeys((kind.value for kind in ErrorKind), 0)

    @property
    def calls(self) -> int:
        return self.backend.calls

    def status(self) -> GuardStatus:
        with self._counts_lock:
            return GuardStatus(
                self.breaker.state,
                self._in_flight,
                self._max_in_flight,
                dict(self._refused),
                {name: counter.snapshot() for name, counter in self._latencies.items()},
                dict(self._errors),
            )

    def _refuse(self, reason: str, error: KmsUnavailable) -> KmsUnavailable:
        with self._counts_lock:
            self._refused[reason] += 1
        note_kms_unavailable()  # the call's later KMS calls would only be refused too
        return error

    def _budget(self, key_id: str | None) -> float:
        if kms_failed():
            raise self._refuse(
                "failed_before",
                KmsNoTimeLeft("the KMS was unavailable earlier in this call", key_id=key_id),
            )
        left = seconds_left()
        budget = self._max_seconds if left is None else min(self._max_seconds, left / 2)
        if budget < self._min_seconds:
            raise self._refuse(
                "no_time_left", KmsNoTimeLeft("no time left for a KMS call", key_id=key_id)
            )
        return budget

    def _guarded(self, name: str, key_id: str | None, operation: Callable[[], T]) -> T:
        budget = self._budget(key_id)
        admission = self.breaker.admit()
        if admission is None:
            raise self._refuse(
                "circuit_open",
                KmsCircuitOpen("KMS failing: calls refused until it answers", key_id=key_id),
            )
        if not self._slots.acquire(timeout=min(self._slot_wait, budget)):
            self.breaker.settle(admission, None)
            raise self._refuse(
                "overloaded", KmsOverloaded("too many KMS calls in flight", key_id=key_id)
            )
        with self._counts_lock:
            self._in_flight += 1
        answered: bool | None = None
        failed: ErrorKind | None = None
        # Entered and left by hand: the try below keeps its place (no exception text
        # is recorded on the span either way).
        scope = self._span(name)
        span = scope.__enter__()
        started = self._clock()
        try:
            deadline = started + budget
            with time_limit(lambda: deadline - self._clock()):
                result = operation()
            answered = True
            return result
        except KmsUnavailable:
            answered, failed = False, ErrorKind.UNAVAILABLE
            note_kms_unavailable()
            raise
        except KmsError as e:
            answered, failed = True, error_kind(e)  # the KMS answered, with a refusal: it is up
            raise
        except Exception:
            failed = ErrorKind.OTHER
            raise
        finally:
            seconds = max(0.0, self._clock() - started)
            with self._counts_lock:
                self._in_flight -= 1
                self._latencies.setdefault(name, _LatencyCounter()).add(seconds)
                if failed is not None:
                    self._errors[failed.value] += 1
            self._slots.release()
            self.breaker.settle(admission, answered)
            if span is not None:  # set while the span is open
                span.set_attribute("oubli.kms.outcome", "ok" if failed is None else failed.value)
            scope.__exit__(None, None, None)

    def _span(self, name: str) -> AbstractContextManager[Any]:
        """The backend call's span (nothing when tracing is off). Exceptions are not
        recorded on it: their messages may name a key."""
        if self.tracer is None:
            return nullcontext()
        from opentelemetry import trace  # installed: tracing is on

        if not trace.get_current_span().is_recording():
            return nullcontext()  # outside any RPC (readiness probes, checkpoints)
        span: AbstractContextManager[Any] = self.tracer.start_as_current_span(
            f"kms.{name}",
            attributes={"oubli.kms.backend": self.backend_name},
            record_exception=False,
            set_status_on_exception=False,
        )
        return span

    # --- KeyManager, each call guarded ---------------------------------------------------

    def create_key(self, key_id: str) -> None:
        self._guarded("create_key", key_id, lambda: self.backend.create_key(key_id))

    def generate_data_key(self, key_id: str) -> DataKey:
        return self._guarded(
            "generate_data_key", key_id, lambda: self.backend.generate_data_key(key_id)
        )

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        return self._guarded("unwrap", key_id, lambda: self.backend.unwrap(key_id, wrapped))

    def unwrap_many(self, items: Sequence[tuple[str, bytes]]) -> list[bytes | KmsError]:
        return self._guarded("unwrap_many", None, lambda: self.backend.unwrap_many(items))

    def destroy_key(self, key_id: str) -> None:
        self._guarded("destroy_key", key_id, lambda: self.backend.destroy_key(key_id))

    def key_exists(self, key_id: str) -> bool:
        return self._guarded("key_exists", key_id, lambda: self.backend.key_exists(key_id))

    def create_signing_key(self, key_id: str) -> None:
        self._guarded("create_signing_key", key_id, lambda: self.backend.create_signing_key(key_id))

    def sign(self, key_id: str, data: bytes) -> bytes:
        return self._guarded("sign", key_id, lambda: self.backend.sign(key_id, data))

    def sign_many(self, key_id: str, items: Sequence[bytes]) -> list[bytes]:
        return self._guarded("sign_many", key_id, lambda: self.backend.sign_many(key_id, items))

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        return self._guarded("verify", key_id, lambda: self.backend.verify(key_id, data, signature))

    def public_key(self, key_id: str) -> bytes:
        return self._guarded("public_key", key_id, lambda: self.backend.public_key(key_id))

    def rotate_key(self, key_id: str) -> int:
        return self._guarded("rotate_key", key_id, lambda: self.backend.rotate_key(key_id))

    def rewrap(self, key_id: str, wrapped: bytes) -> bytes:
        return self._guarded("rewrap", key_id, lambda: self.backend.rewrap(key_id, wrapped))

    def wrapped_version(self, key_id: str, wrapped: bytes) -> int:
        return self.backend.wrapped_version(key_id, wrapped)  # no KMS call: unguarded

    def key_versions(self, key_id: str) -> KeyVersions:
        return self._guarded("key_versions", key_id, lambda: self.backend.key_versions(key_id))

    def set_min_decryption_version(self, key_id: str, version: int) -> None:
        self._guarded(
            "set_min_decryption_version",
            key_id,
            lambda: self.backend.set_min_decryption_version(key_id, version),
        )

    def trim_key(self, key_id: str, min_available_version: int) -> None:
        self._guarded(
            "trim_key", key_id, lambda: self.backend.trim_key(key_id, min_available_version)
        )

    def public_keys(self, key_id: str) -> dict[int, bytes]:
        return self._guarded("public_keys", key_id, lambda: self.backend.public_keys(key_id))

    def close(self) -> None:
        self.backend.close()
