"""Fault tests: the KMS hung or killed, PostgreSQL stopped, each under load.

Real processes only: ``oubli serve`` (tests/integration/processes.py), a real OpenBao
(SIGSTOPped, or SIGKILLed and restarted), a PostgreSQL of the test's own
(tests/integration/pg_cluster.py; the shared one on 5432 is never stopped). Client
threads create subjects and records the whole time and keep every answer. What must
hold:

- while a backend is down, calls answer OK or UNAVAILABLE, nothing else (no INTERNAL,
  no UNKNOWN, no DEADLINE_EXCEEDED);
- with the KMS hung, they answer well before the client's deadline, and a call that
  needs no KMS still gets a worker thread;
- service is back within a second (``RECOVERY_SECONDS``) of the backend's recovery;
- every acknowledged write reads back afterwards.

Smoke size by default (one outage per test, a few client threads). The long run:

    OUBLI_FAULT_ROUNDS=20 OUBLI_FAULT_THREADS=24 \\
        .venv/bin/python -m pytest tests/integration/test_faults.py -q

Time is only polled with a bound, never slept on to order threads; the single timing
comparisons are against the client's deadline and the recovery bound the issue sets.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oubli_client import OubliClient
from oubli_client.errors import OubliClientError, Unavailable
from tests.integration.pg_cluster import PostgresCluster
from tests.integration.processes import ServerProcess
from vault.app.openbao_process import OpenBaoDevServer, OpenBaoRaftServer

T = TypeVar("T")

#: Outages per test and client threads (the long-run knobs).
ROUNDS = int(os.environ.get("OUBLI_FAULT_ROUNDS", "1"))
THREADS = int(os.environ.get("OUBLI_FAULT_THREADS", "10"))
#: The client's deadline, as in the issue's report.
DEADLINE = 10.0
#: Service must be back this soon after the backend is.
RECOVERY_SECONDS = float(os.environ.get("OUBLI_FAULT_RECOVERY_SECONDS", "1.0"))
#: Bound of every poll (a failing test stops here rather than at pytest's timeout).
POLL_BOUND = 60.0
#: Fewer workers than load threads: without the guard, the hung KMS takes them all.
WORKERS = 8


def wait_until(
    what: str, condition: Callable[[], bool], detail: Callable[[], object] = lambda: ""
) -> None:
    deadline = time.monotonic() + POLL_BOUND
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not seen within {POLL_BOUND} s: {what} {detail()}")
        time.sleep(0.05)


def seconds_until_ok(call: Callable[[], object]) -> float:
    """Retry ``call`` until it succeeds; the seconds that took. Only UNAVAILABLE may come
    back meanwhile."""
    start = time.monotonic()
    while True:
        try:
            call()
            return time.monotonic() - start
        except Unavailable:
            if time.monotonic() - start > POLL_BOUND:
                pytest.fail(f"service not back within {POLL_BOUND} s")
            time.sleep(0.02)


def timed(call: Callable[[], T]) -> tuple[T | OubliClientError, float]:
    start = time.monotonic()
    try:
        result: T | OubliClientError = call()
    except OubliClientError as e:
        result = e
    return result, time.monotonic() - start


@dataclass(frozen=True, slots=True)
class Acked:
    """A write the server acknowledged: it must read back."""

    subject_id: str
    record_id: str
    fields: dict[str, str]


@dataclass
class Load:
    """Client threads making subjects and records until stopped; every answer kept.

    Each thread keeps its newest subject, so that records are written (and read) even
    while new subjects cannot be made.
    """

    target: str
    token: str
    threads: int = THREADS
    calls: list[tuple[str, str, float]] = field(default_factory=list)  # rpc, code, seconds
    acked: list[Acked] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _call(self, rpc: str, call: Callable[[], T]) -> T | None:
        result, seconds = timed(call)
        code = result.code.name if isinstance(result, OubliClientError) else "OK"
        with self._lock:
            self.calls.append((rpc, code, seconds))
        return None if isinstance(result, OubliClientError) else result

    def _run(self, worker: int) -> None:
        client = OubliClient(self.target, timeout=DEADLINE, max_attempts=1, token=self.token)
        current: str | None = None
        last: Acked | None = None
        n = 0
        with client:
            while not self._stop.is_set():
                n += 1
                subject = self._call("CreateSubject", client.create_subject)
                if subject is not None:
                    current = subject.subject_id
                    contact = {"email": f"fault-{worker}-{n}@example.org"}
                    last = self._write(client, current, "contact", contact)
                if current is not None:
                    usage = {"page": f"/fault/{worker}/{n}", "action": "view"}
                    last = self._write(client, current, "usage", usage) or last
                if last is not None:
                    self._read(client, last)
                # Paced, so that refusals answered at once do not spin the 2 cores.
                self._stop.wait(0.05)

    def _read(self, client: OubliClient, acked: Acked) -> None:
        self._call(
            "GetRecord", lambda: client.get_record(acked.subject_id, acked.record_id, "service")
        )

    def _write(
        self, client: OubliClient, subject_id: str, category: str, fields: dict[str, str]
    ) -> Acked | None:
        record = self._call(
            "CreateRecord", lambda: client.create_record(subject_id, category, fields)
        )
        if record is None:
            return None
        acked = Acked(subject_id, record.record_id, fields)
        with self._lock:
            self.acked.append(acked)
        return acked

    def count(self, code: str) -> int:
        with self._lock:
            return sum(1 for _, c, _ in self.calls if c == code)

    def wait_for_more(self, code: str, what: str) -> None:
        """Wait (bounded) until one more call than now has answered ``code``."""
        seen = self.count(code)
        wait_until(what, lambda: self.count(code) > seen, detail=self.codes)

    def codes(self) -> Counter[str]:
        with self._lock:
            return Counter(code for _, code, _ in self.calls)

    def slowest(self) -> float:
        with self._lock:
            return max((seconds for _, _, seconds in self.calls), default=0.0)

    def __enter__(self) -> Load:
        for worker in range(self.threads):
            thread = threading.Thread(target=self._run, args=(worker,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=POLL_BOUND)


def check_answers(load: Load) -> None:
    codes = load.codes()
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes["UNAVAILABLE"] > 0, "the load never met the outage"


def check_acked_read_back(client: OubliClient, acked: list[Acked]) -> None:
    assert acked
    for write in acked:
        record = client.get_record(write.subject_id, write.record_id, "service")
        assert record.fields == write.fields


def metrics_port(server: ServerProcess) -> int:
    for line in server.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "serving":
                return int(entry["metrics_port"])
    raise AssertionError("no 'serving' line with a metrics port in the server log")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def vault_args(database_url: str, address: str) -> list[str]:
    return [
        "serve",
        "--database-url",
        database_url,
        "--kms",
        "vault",
        "--vault-addr",
        address,
        "--vault-mount",
        f"transit-{secrets.token_hex(4)}",
    ]


@pytest.fixture
def bao_dev(tmp_path: Path) -> Iterator[OpenBaoDevServer]:
    """An OpenBao of this test's own: the suite's shared one is never stopped."""
    with OpenBaoDevServer(tmp_path / "openbao.log") as bao:
        yield bao


def test_a_hung_kms_is_answered_unavailable_at_once_and_leaves_workers_free(
    tmp_path: Path, pg_url: str, bao_dev: OpenBaoDevServer
) -> None:
    args = [*vault_args(pg_url, bao_dev.address), "--metrics-listen", "127.0.0.1:0"]
    env = {"VAULT_TOKEN": bao_dev.token, "OUBLI_MAX_WORKERS": str(WORKERS)}
    assert bao_dev.pid is not None
    with (
        ServerProcess(tmp_path / "oubli", *args, env=env) as server,
        OubliClient(server.target, timeout=DEADLINE, max_attempts=1, token=server.token) as client,
    ):
        # A subject whose DEK the server holds: reading it needs no KMS. Its records also
        # load the keys every later write shares (the blind index key, this month's
        # bucket), as a server that has been serving for a while holds them.
        warm = client.create_subject()
        client.create_record(warm.subject_id, "contact", {"email": "warm@example.org"})
        warm_record = client.create_record(warm.subject_id, "usage", {"page": "/warm"}).record_id
        port = metrics_port(server)

        def metric(name: str, **labels: str) -> float:
            return scrape(port)[(name, tuple(sorted(labels.items())))]

        with Load(server.target, server.token) as load:
            load.wait_for_more("OK", "the load is answered")
            for _ in range(ROUNDS):
                os.kill(bao_dev.pid, signal.SIGSTOP)
                try:
                    # The load's KMS calls hang until the slots are full; the calls
                    # beyond them are refused at once...
                    load.wait_for_more("UNAVAILABLE", "the load refused while the KMS hangs")
                    # ...and calls that need no KMS still get a worker, in good time.
                    no_kms: tuple[Callable[[], object], ...] = (
                        lambda: client.get_subject(warm.subject_id),
                        lambda: client.get_record(warm.subject_id, warm_record, "service"),
                    )
                    for call in no_kms:
                        answer, seconds = timed(call)
                        assert not isinstance(answer, OubliClientError), answer
                        assert seconds < DEADLINE / 2
                    # The held calls time out, the breaker opens: refused at once.
                    wait_until(
                        "the breaker opens",
                        lambda: metric("oubli_kms_breaker_state", state="open") == 1,
                    )
                    answer, seconds = timed(client.create_subject)
                    assert isinstance(answer, Unavailable), answer
                    assert seconds < DEADLINE / 2
                finally:
                    os.kill(bao_dev.pid, signal.SIGCONT)
                assert seconds_until_ok(client.create_subject) < RECOVERY_SECONDS
                assert metric("oubli_kms_breaker_state", state="closed") == 1
                load.wait_for_more("OK", "the load is served again")
        check_answers(load)
        assert load.slowest() < DEADLINE / 2
        assert metric("oubli_kms_refused_total", reason="overloaded") > 0
        assert metric("oubli_kms_refused_total", reason="circuit_open") > 0
        assert metric("oubli_kms_in_flight_limit") < WORKERS
        check_acked_read_back(client, load.acked)


def test_kms_killed_and_restarted_under_load_loses_no_acknowledged_write(
    tmp_path: Path, pg_url: str
) -> None:
    # Raft storage: the keys outlive the process, as in production.
    bao = OpenBaoRaftServer(tmp_path / "raft", log_path=tmp_path / "openbao.log")
    with bao:
        args = vault_args(pg_url, bao.address)
        env = {"VAULT_TOKEN": bao.token}
        with (
            ServerProcess(tmp_path / "oubli", *args, env=env) as server,
            OubliClient(server.target, timeout=DEADLINE, max_attempts=1, token=server.token) as c,
        ):
            with Load(server.target, server.token) as load:
                load.wait_for_more("OK", "the load is answered")
                for _ in range(ROUNDS):
                    assert bao.pid is not None
                    os.kill(bao.pid, signal.SIGKILL)
                    bao.stop()  # reaps the killed process
                    load.wait_for_more("UNAVAILABLE", "the load meets the outage")
                    bao.start()
                    assert seconds_until_ok(c.create_subject) < RECOVERY_SECONDS
                    load.wait_for_more("OK", "the load is served again")
            check_answers(load)
        # A fresh server, its DEK cache empty: every acknowledged write decrypts through
        # the restarted KMS.
        with (
            ServerProcess(tmp_path / "fresh", *args, env=env) as fresh,
            OubliClient(fresh.target, timeout=DEADLINE, token=fresh.token) as client,
        ):
            check_acked_read_back(client, load.acked)


def test_postgresql_stopped_under_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    with PostgresCluster() as pg:
        args = ["serve", "--database-url", pg.url, "--data-dir", str(tmp_path / "data")]
        with (
            ServerProcess(tmp_path / "oubli", *args) as server,
            OubliClient(server.target, timeout=DEADLINE, max_attempts=1, token=server.token) as c,
        ):
            with Load(server.target, server.token) as load:
                load.wait_for_more("OK", "the load is answered")
                for _ in range(ROUNDS):
                    pg.stop("immediate")  # a crash: recovery from the WAL at the start
                    load.wait_for_more("UNAVAILABLE", "the load meets the outage")
                    pg.start()
                    assert seconds_until_ok(c.create_subject) < RECOVERY_SECONDS
                    load.wait_for_more("OK", "the load is served again")
            check_answers(load)
            check_acked_read_back(c, load.acked)
