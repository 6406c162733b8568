"""Readiness and liveness: gRPC health that follows the database and the KMS.

A server is *ready* (gRPC health ``SERVING`` for ``""`` and each oubli service) when
the restore fence has passed (vault/usecases/restore_fence.py) **and** its last probe
reached both dependencies:

- the database: ``SELECT 1`` through the storage seam (``Storage.ping``);
- the KMS: one ``key_exists`` on the audit signing key, through the KMS guard
  (kms/guard.py), so the call has the guard's budget and an open breaker answers at
  once. An answer (the key exists or not) is reachable; unavailability, an open breaker
  and refused credentials are not. A call refused because every KMS slot is busy
  (``KmsOverloaded``) leaves the KMS's state as it was: the KMS is in use, and the
  calls in flight move the breaker if it stops answering.

:class:`Readiness` probes every ``interval`` seconds in a thread of its own, each check
bounded by ``timeout`` seconds (a check that has not returned by then counts as
unreachable, and is not started again until it returns). It publishes ``NOT_SERVING``
as soon as one dependency is unreachable, and ``SERVING`` again by itself as soon as
both answer (and the fence has passed). Each change is logged once: ``dependency_down``
/ ``dependency_up`` (the dependency's name and the error's class, nothing else) and
``readiness`` (``ready``: true or false).

*Liveness* is a health service name of its own, :data:`LIVENESS_SERVICE`: ``SERVING``
from the start until the server stops, whatever the dependencies do. A supervisor that
restarts on liveness restarts a hung process, not one waiting for its database.

Readiness does not refuse calls itself: while it says ``NOT_SERVING`` a call that needs
the missing dependency fails ``UNAVAILABLE`` on its own (the database and KMS seams
translate every failure), and one that does not (a cached read while the KMS is away)
is still answered. Only the restore fence's gate refuses calls outright.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from enum import StrEnum

import structlog

from kms.base import KeyManager
from kms.deadline import time_limit
from kms.guard import KmsOverloaded

log = structlog.get_logger("oubli.readiness")

#: The health service name that answers SERVING while the process runs (liveness).
LIVENESS_SERVICE = "oubli.liveness"

#: Default seconds between two probes, and the most one check may take.
DEFAULT_INTERVAL_SECONDS = 2.0
DEFAULT_TIMEOUT_SECONDS = 2.0


class Dependency(StrEnum):
    DATABASE = "database"
    KMS = "kms"


class _Unchanged(Exception):
    """A check that could not tell (the KMS's slots were all busy)."""


#: A check returns when the dependency answered and raises when it did not.
Check = Callable[[], None]


def kms_check(kms: KeyManager, key_id: Callable[[], str], timeout: float) -> Check:
    """One ``key_exists`` on ``key_id()`` (the audit signing key), within ``timeout``
    (the guard narrows it to its own budget)."""

    def check() -> None:
        deadline = time.monotonic() + timeout
        try:
            with time_limit(lambda: deadline - time.monotonic()):
                kms.key_exists(key_id())
        except KmsOverloaded as e:
            raise _Unchanged from e

    return check


class Readiness:
    """Probes the dependencies, and tells ``publish`` whether the server is ready:
    the fence has passed and every dependency answered its last check.

    ``clock`` and ``wait`` are injected (tests); ``wait(seconds)`` returns True when the
    loop must stop (by default: :meth:`stop` was called).
    """

    def __init__(
        self,
        checks: Mapping[Dependency, Check],
        publish: Callable[[bool], None],
        *,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("the readiness interval and timeout must be > 0 seconds")
        self._checks = dict(checks)
        self._publish = publish
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._lock = threading.Lock()
        #: None until the first check could tell.
        self._up: dict[Dependency, bool | None] = dict.fromkeys(self._checks)
        self._fence_passed = False
        self._ready: bool | None = None
        self._pending: dict[Dependency, Future[None]] = {}
        self._thread: threading.Thread | None = None

    # --- state ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether health says SERVING now."""
        return bool(self._ready)

    def dependencies(self) -> dict[Dependency, bool]:
        """Each dependency's state at its last check (True: it answered)."""
        with self._lock:
            return {dependency: bool(up) for dependency, up in self._up.items()}

    def fence(self, passed: bool) -> None:
        """The restore fence's ``on_serving`` callback: whether its gate is open."""
        with self._lock:
            self._fence_passed = passed
            self._settle()

    def _settle(self) -> None:
        """Publish the overall state when it changed (the lock held: changes are
        published in the order they were decided)."""
        ready = self._fence_passed and all(up is True for up in self._up.values())
        if ready == self._ready:
            return
        self._ready = ready
        log.info(
            "readiness",
            ready=ready,
            fence=self._fence_passed,
            **{name.value: bool(up) for name, up in self._up.items()},
        )
        self._publish(ready)

    # --- probes --------------------------------------------------------------------------

    def probe_once(self) -> dict[Dependency, bool]:
        """Check every dependency side by side (each bounded by ``timeout``), record
        and publish the outcome; returns each dependency's state."""
        started = self._clock()
        futures: dict[Dependency, Future[None]] = {}
        for dependency, check in self._checks.items():
            pending = self._pending.get(dependency)
            if pending is not None and not pending.done():
                continue  # the last check still hangs: still unreachable
            futures[dependency] = self._pending[dependency] = _run_in_daemon(check, dependency)
        outcomes: dict[Dependency, tuple[bool | None, str]] = {}
        for dependency in self._checks:
            future = futures.get(dependency)
            if future is None:
                outcomes[dependency] = (False, "StillWaiting")
                continue
            left = max(0.0, self.timeout - (self._clock() - started))
            outcomes[dependency] = _outcome(future, left)
        with self._lock:
            for dependency, (up, error) in outcomes.items():
                if up is None or up == self._up[dependency]:
                    continue  # could not tell, or no change
                self._up[dependency] = up
                if up:
                    log.info("dependency_up", dependency=dependency.value)
                else:
                    log.warning("dependency_down", dependency=dependency.value, error=error)
            self._settle()
            return {dependency: bool(up) for dependency, up in self._up.items()}

    # --- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        """Probe every ``interval`` seconds in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="oubli-readiness", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._wait(self.interval):
            try:
                self.probe_once()
            except Exception as e:  # the loop must outlive any surprise
                log.error("readiness_probe_failed", error_type=type(e).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _run_in_daemon(check: Check, dependency: Dependency) -> Future[None]:
    """Run ``check`` in a daemon thread of its own: one that hangs (a database whose
    connection attempt waits on a dead network) never holds up the process's exit."""
    future: Future[None] = Future()

    def run() -> None:
        try:
            check()
        except BaseException as e:  # handed to the prober, which reads only its class
            future.set_exception(e)
        else:
            future.set_result(None)

    threading.Thread(target=run, name=f"oubli-readiness-{dependency.value}", daemon=True).start()
    return future


def _outcome(future: Future[None], timeout: float) -> tuple[bool | None, str]:
    """(True, "") the check passed; (False, error class) it failed or did not return in
    time; (None, "") it could not tell."""
    try:
        future.result(timeout=timeout)
    except _Unchanged:
        return None, ""
    except FutureTimeout:
        return False, "Timeout"
    except Exception as e:  # any failure is "unreachable"
        return False, type(e).__name__
    return True, ""
