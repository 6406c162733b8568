"""A bounded write load on the replicas, and what it saw: acknowledged writes, failures
(by status code) and, per replica, when writes succeeded again after a fault."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc

from oubli_client import OubliClient
from oubli_client.errors import OubliClientError
from tests.cluster.topology import Replica


@dataclass(frozen=True)
class Written:
    replica: str
    subject_id: str
    record_id: str
    fields: dict[str, str]


@dataclass
class Failure:
    replica: str
    at: float
    code: grpc.StatusCode
    message: str


@dataclass
class WriteLoad:
    """One writer thread per replica: create a subject (a new Transit key: a write on
    the active OpenBao node) and a record in it, again and again, at most ``per_writer``
    times, until ``stop()``. Each call is made once (no client retry), so every
    failure is seen with its status code."""

    replicas: list[Replica]
    per_writer: int = 400
    pause: float = 0.02
    written: list[Written] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    #: replica -> monotonic end times of its successful writes
    successes: dict[str, list[float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> WriteLoad:
        for replica in self.replicas:
            self.successes[replica.host] = []
            thread = threading.Thread(target=self._write, args=(replica,), daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def _write(self, replica: Replica) -> None:
        with OubliClient(replica.target, token=replica.token, max_attempts=1) as client:
            for n in range(self.per_writer):
                if self._stop.is_set():
                    return
                fields = {"email": f"w{n}@{replica.host}.drill.test"}
                try:
                    subject = client.create_subject()
                    record = client.create_record(subject.subject_id, "contact", fields)
                except OubliClientError as e:
                    with self._lock:
                        self.failures.append(
                            Failure(replica.host, time.monotonic(), e.code, str(e))
                        )
                else:
                    with self._lock:
                        self.written.append(
                            Written(replica.host, subject.subject_id, record.record_id, fields)
                        )
                        self.successes[replica.host].append(time.monotonic())
                time.sleep(self.pause)

    def successes_after(self, host: str, moment: float) -> int:
        with self._lock:
            return sum(1 for t in self.successes[host] if t > moment)

    def recovered_at(self, host: str, after: float) -> float | None:
        """The first success on ``host`` after its last failure past ``after``."""
        with self._lock:
            last_failure = max(
                (f.at for f in self.failures if f.replica == host and f.at > after), default=after
            )
            later = [t for t in self.successes[host] if t > last_failure]
        return min(later) if later else None

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
