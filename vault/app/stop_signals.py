"""SIGINT and SIGTERM as something to wait on: the request to drain and stop.

A caught signal wakes the waiter through a socket (``signal.set_wakeup_fd``), not an
Event set from the handler: Event.set takes the lock Event.wait may hold at that
instant, and the process then hung on SIGTERM. The socket can also be waited on
together with other things (``multiprocessing.connection.wait``: the supervisor of
worker processes waits for a signal or a worker's exit, vault/app/workers.py).

Once caught, the signals stay caught (the handlers do nothing) after the block ends:
a second SIGTERM during the drain does not cut it short.
"""

from __future__ import annotations

import signal
import socket
from types import TracebackType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _caught(_signum: int, _frame: object) -> None:
    """A Python handler (not SIG_IGN), so that the wakeup socket receives the signal."""


class StopSignals:
    """While open, SIGINT and SIGTERM are caught and readable from :meth:`fileno`.

    Open it in the main thread (``signal.set_wakeup_fd`` is only allowed there).
    """

    def __init__(self) -> None:
        self._woken, self._wakeup = socket.socketpair()
        self._wakeup.setblocking(False)
        self._previous_fd = -1

    def __enter__(self) -> StopSignals:
        self._previous_fd = signal.set_wakeup_fd(self._wakeup.fileno())
        for sig in STOP_SIGNALS:
            signal.signal(sig, _caught)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        self._woken.close()
        self._wakeup.close()

    def fileno(self) -> int:
        """Readable once a stop signal has arrived (for select / connection.wait)."""
        return self._woken.fileno()

    def wait(self) -> signal.Signals:
        """Block until SIGINT or SIGTERM arrives (or return the one that already did)."""
        while True:
            received = self._woken.recv(1)
            number = received[0] if received else signal.SIGTERM
            if number in STOP_SIGNALS:
                return signal.Signals(number)
            # another signal with a Python handler woke us: not a request to stop
