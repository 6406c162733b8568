"""`oubli serve --workers 2` as a real process: two server processes on one port.

Each test finds connections that reach each worker: SO_REUSEPORT hands a new
connection to one of the listening processes, so the test opens connections (each
its own, ``grpc.use_local_subchannel_pool``) until the supervisor's metrics show a
call counted by each worker. Then: both workers serve, with distinct pids; SIGTERM to
the supervisor drains both (a health Watch on each says NOT_SERVING) and exits 0; a
worker killed makes the supervisor stop the other and exit 1; and audited calls from
several threads through both workers end up, every one, in one audit chain that
verifies (SQLite and PostgreSQL: the chain lock differs).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text

from oubli_client import OubliClient
from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from tests.integration.processes import ServerProcess, metric_per_worker, own_channel
from vault.app.openbao_process import free_port

pytestmark = pytest.mark.timeout(180)

WORKERS = 2
GET_SUBJECT = "oubli.v1.SubjectService/GetSubject"


class WorkersServer(ServerProcess):
    """``oubli serve --workers 2`` with the supervisor's metrics on a free port."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.metrics_port = free_port()
        super().__init__(
            workdir,
            "serve",
            "--workers",
            str(WORKERS),
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            *args,
        )

    def per_worker(self, metric: str, **labels: str) -> dict[str, float]:
        """``metric``'s value per worker (samples with these labels, summed)."""
        return metric_per_worker(self.metrics_port, metric, **labels)

    def worker_pids(self) -> dict[str, int]:
        return {w: int(pid) for w, pid in self.per_worker("oubli_worker_pid").items()}


def channels_on_each_worker(
    server: WorkersServer, subject_id: str, stack: ExitStack, per_worker: int = 1
) -> dict[str, list[grpc.Channel]]:
    """``per_worker`` channels connected to each worker (found by which worker's
    GetSubject count grows after a call on a new channel)."""
    found: dict[str, list[grpc.Channel]] = {str(w): [] for w in range(WORKERS)}
    for _ in range(60):
        if all(len(c) >= per_worker for c in found.values()):
            return found
        channel = stack.enter_context(own_channel(server.target))
        before = server.per_worker("oubli_rpcs_total", method=GET_SUBJECT)
        OubliClient(server.target, token=server.token, channel=channel).get_subject(subject_id)
        after = server.per_worker("oubli_rpcs_total", method=GET_SUBJECT)
        grew = [w for w, count in after.items() if count > before.get(w, 0.0)]
        assert len(grew) == 1, (before, after)
        found[grew[0]].append(channel)
    raise AssertionError(f"60 connections never reached every worker: {found}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WorkersServer]:
    with WorkersServer(tmp_path) as running:
        yield running


def test_both_workers_serve_with_distinct_pids(server: WorkersServer) -> None:
    with ExitStack() as stack, OubliClient(server.target, token=server.token) as client:
        subject = client.create_subject().subject_id
        channels = channels_on_each_worker(server, subject, stack)
        assert set(channels) == {"0", "1"}
        pids = server.worker_pids()
        assert server.process is not None
        assert len(set(pids.values())) == WORKERS
        assert server.process.pid not in pids.values()  # the supervisor serves no call
        assert server.per_worker("oubli_worker_up") == {"0": 1.0, "1": 1.0}
        assert server.per_worker("oubli_ready") == {"0": 1.0, "1": 1.0}
        # Each worker's log line names its pid.
        log = server.log()
        for worker, pid in pids.items():
            assert re.search(rf'"event": "serving".*"pid": {pid},.*"worker": {worker}\}}', log)


def test_sigterm_drains_every_worker_and_exits_0(server: WorkersServer) -> None:
    assert server.process is not None
    with ExitStack() as stack, OubliClient(server.target, token=server.token) as client:
        subject = client.create_subject().subject_id
        channels = channels_on_each_worker(server, subject, stack)
        pids = server.worker_pids()
        # A load balancer's health Watch on each worker: SERVING, then NOT_SERVING.
        statuses: dict[str, queue.Queue[int]] = {w: queue.Queue() for w in channels}
        for worker, (channel, *_) in channels.items():
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60
            )

            def follow(
                stream: Iterator[health_pb2.HealthCheckResponse], into: queue.Queue[int]
            ) -> None:
                try:
                    for response in stream:
                        into.put(response.status)
                except grpc.RpcError:
                    pass

            threading.Thread(target=follow, args=(watch, statuses[worker]), daemon=True).start()
        for worker in channels:
            assert statuses[worker].get(timeout=10) == health_pb2.HealthCheckResponse.SERVING

        server.process.send_signal(signal.SIGTERM)
        for worker in channels:
            assert statuses[worker].get(timeout=10) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert server.process.wait(timeout=60) == 0, server.log()
    for pid in pids.values():
        assert not _alive(pid)
    log = server.log()
    for worker in ("0", "1"):
        assert re.search(rf'"event": "draining".*"worker": {worker}\}}', log)
        assert re.search(rf'"event": "stopped".*"worker": {worker}\}}', log)


def test_a_worker_killed_stops_the_other_and_the_supervisor_exits_1(
    server: WorkersServer,
) -> None:
    assert server.process is not None
    pids = server.worker_pids()
    os.kill(pids["1"], signal.SIGKILL)
    assert server.process.wait(timeout=60) == 1, server.log()
    assert not _alive(pids["0"])
    log = server.log()
    assert re.search(r'"event": "worker_exited".*"exit_code": -9.*"worker": 1', log), log
    assert re.search(r'"event": "stopped".*"worker": 0\}', log)  # drained, not killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


#: Client threads, and audited calls each makes (half on each worker).
THREADS = 6
CALLS_PER_THREAD = 25


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_audited_calls_through_both_workers_make_one_chain_that_verifies(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    server = WorkersServer(tmp_path, "--database-url", url)
    request_ids: list[str] = []
    with (
        server,
        ExitStack() as stack,
        OubliClient(server.target, token=server.token) as client,
    ):
        subject = client.create_subject().subject_id
        channels = channels_on_each_worker(server, subject, stack, per_worker=THREADS // 2)
        served_before = server.per_worker("oubli_rpcs_total")
        auth = ("authorization", f"Bearer {server.token}")
        lock = threading.Lock()

        failures: list[str] = []

        def calls(channel: grpc.Channel) -> None:
            try:
                audited_calls(channel)
            except grpc.RpcError as e:
                failures.append(f"{e.code().name}: {e.details()}")

        def audited_calls(channel: grpc.Channel) -> None:
            records = pb_grpc.RecordServiceStub(channel)
            for n in range(CALLS_PER_THREAD):
                request_id = str(uuid.uuid4())
                with lock:
                    request_ids.append(request_id)
                metadata = (auth, ("x-request-id", request_id))
                if n % 2 == 0:
                    records.CreateRecord(
                        pb.CreateRecordRequest(
                            subject_id=subject,
                            category="support",
                            fields={"message": f"call {n}"},
                            origin="test",
                        ),
                        metadata=metadata,
                        timeout=60,
                    )
                else:
                    records.ListRecords(
                        pb.ListRecordsRequest(
                            subject_id=subject, category="support", purpose="support"
                        ),
                        metadata=metadata,
                        timeout=60,
                    )

        threads = [
            threading.Thread(target=calls, args=(channel,))
            for worker_channels in channels.values()
            for channel in worker_channels[: THREADS // 2]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures
        served = server.per_worker("oubli_rpcs_total")
        for worker in ("0", "1"):  # both workers recorded their share
            assert served[worker] - served_before[worker] >= THREADS // 2 * CALLS_PER_THREAD

        verification = client.verify_audit(full=True)
        assert verification.ok, verification
        assert verification.checked >= len(request_ids)
    assert server.stop() == 0

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM audit_pending")).scalar() == 0
            seqs = [row[0] for row in c.execute(text("SELECT seq FROM audit_entries ORDER BY seq"))]
            chained = {row[0] for row in c.execute(text("SELECT request_id FROM audit_entries"))}
    finally:
        engine.dispose()
    assert seqs == list(range(1, len(seqs) + 1))  # one chain: no gap, no seq twice
    assert len(request_ids) == THREADS * CALLS_PER_THREAD
    missing = [r for r in request_ids if r not in chained]
    assert not missing, f"{len(missing)} calls have no audit entry"
