"""Worker processes: `oubli serve --workers 2` under 8 client threads, beside the bare
gRPC echo with 2 worker processes, driven the same way (docs/performance.md,
"Worker processes").

Each client thread has its own connection, and each worker gets half of them: the
kernel hands each new connection to one of the processes sharing the port
(SO_REUSEPORT, by a hash of the addresses), so the benchmark opens connections until
it holds 4 on each worker, for oubli (which worker counted the call, from the
supervisor's metrics) and for the echo (its Pid method) alike. What is compared is
then the server's work per call, not the luck of the hash. The same oubli as one
process (no ``--workers``), driven by the same 8 connections, is measured beside it:
what the second process buys. Beside each figure, the CPU time the server's processes
spent per call and the cores they kept busy (from /proc): on a loaded machine these
say more than wall time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from benchmarks.helpers import CATEGORY, FIELD, MESSAGE, ORIGIN, PURPOSE, Deployment, MeteredServer
from oubli_client import OubliClient
from oubli_client.v1 import vault_pb2 as pb
from tests.integration.processes import metric_per_worker, own_channel

WORKERS = 2
THREADS = 8
CALLS_PER_THREAD = 50
GET_SUBJECT = "oubli.v1.SubjectService/GetSubject"


class ServerCpu:
    """CPU time the server's processes (all their threads) spend while the benchmark
    runs: per call, and as cores kept busy over the wall-clock time. On a loaded
    machine wall time wobbles; CPU per call says what the server's work costs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.calls = 0
        self._started = (0.0, 0.0)

    def seconds(self) -> float:
        total = 0
        for pid in self.pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        return total / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> ServerCpu:
        self._started = (self.seconds(), time.monotonic())
        return self

    def __exit__(self, *_: object) -> None:
        cpu, wall = self.seconds() - self._started[0], time.monotonic() - self._started[1]
        self.cpu_ms_per_call = round(1000 * cpu / max(1, self.calls), 3)
        self.cores_busy = round(cpu / wall, 2)

    def note(self, extra_info: dict[str, object]) -> None:
        extra_info["server_cpu_ms_per_call"] = self.cpu_ms_per_call
        extra_info["server_cores_busy"] = self.cores_busy


def _in_parallel(calls: list[Callable[[], object]], calls_per_thread: int, cpu: ServerCpu) -> int:
    """Each of ``calls`` ``calls_per_thread`` times, each in its own thread."""

    def worker(call: Callable[[], object]) -> int:
        for _ in range(calls_per_thread):
            call()
        return calls_per_thread

    with ThreadPoolExecutor(len(calls)) as pool:
        done = sum(pool.map(worker, calls))
    cpu.calls += done
    return done


def _balanced(
    target: str, worker_of: Callable[[grpc.Channel], str], stack: ExitStack
) -> list[grpc.Channel]:
    """THREADS channels, THREADS / WORKERS on each worker."""
    per_worker: dict[str, list[grpc.Channel]] = {}
    for _ in range(20 * THREADS):
        channel = stack.enter_context(own_channel(target))
        per_worker.setdefault(worker_of(channel), []).append(channel)
        balanced = [c[: THREADS // WORKERS] for c in per_worker.values()]
        if len(per_worker) == WORKERS and all(len(c) == THREADS // WORKERS for c in balanced):
            return [channel for channels in balanced for channel in channels]
    raise RuntimeError(f"no balanced connections after {20 * THREADS}: {per_worker.keys()}")


@pytest.fixture(scope="module")
def calls_per_thread(request: pytest.FixtureRequest) -> int:
    return 2 if request.config.getoption("benchmark_disable") else CALLS_PER_THREAD


@pytest.fixture(scope="module", params=[WORKERS, 1], ids=lambda n: f"{n}w")
def workers(request: pytest.FixtureRequest) -> int:
    """oubli's worker processes: WORKERS, and 1 (a lone server, as before) to compare
    with in the same run, driven the same way."""
    return int(request.param)


@pytest.fixture(scope="module")
def workers_server(oubli_deployment: Deployment, workers: int) -> Iterator[MeteredServer]:
    flags = ["--workers", str(workers)] if workers > 1 else []
    server = oubli_deployment.server(f"workers-{workers}", *flags)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def subject_id(workers_server: MeteredServer) -> str:
    with OubliClient(workers_server.target, token=workers_server.token) as client:
        return client.create_subject().subject_id


@pytest.fixture(scope="module")
def oubli_pids(workers_server: MeteredServer, workers: int) -> list[int]:
    """The server's pid; with workers, the supervisor's and the workers'."""
    if workers == 1:
        return [workers_server.pid]
    found = metric_per_worker(workers_server.metrics_port, "oubli_worker_pid")
    return [workers_server.pid, *(int(pid) for pid in found.values())]


@pytest.fixture(scope="module")
def clients(
    workers_server: MeteredServer, subject_id: str, workers: int
) -> Iterator[list[OubliClient]]:
    """THREADS clients, each on its own connection, as many on each worker."""
    server = workers_server
    if workers == 1:
        with ExitStack() as stack:
            channels = [stack.enter_context(own_channel(server.target)) for _ in range(THREADS)]
            yield [OubliClient(server.target, token=server.token, channel=c) for c in channels]
        return

    def worker_of(channel: grpc.Channel) -> str:
        before = metric_per_worker(server.metrics_port, "oubli_rpcs_total", method=GET_SUBJECT)
        OubliClient(server.target, token=server.token, channel=channel).get_subject(subject_id)
        after = metric_per_worker(server.metrics_port, "oubli_rpcs_total", method=GET_SUBJECT)
        (grew,) = [w for w, n in after.items() if n > before.get(w, 0.0)]
        return grew

    with ExitStack() as stack:
        channels = _balanced(server.target, worker_of, stack)
        yield [OubliClient(server.target, token=server.token, channel=c) for c in channels]


def test_ceiling_echo_workers(benchmark, echo_workers_target: str, calls_per_thread: int) -> None:  # type: ignore[no-untyped-def]
    payload = pb.CreateRecordRequest(
        subject_id="a" * 26, category=CATEGORY, fields={FIELD: MESSAGE}, origin=ORIGIN
    ).SerializeToString()

    def worker_of(channel: grpc.Channel) -> str:
        pid: bytes = channel.unary_unary("/bench.Echo/Pid")(b"", timeout=10)
        return pid.decode()

    with ExitStack() as stack:
        channels = _balanced(echo_workers_target, worker_of, stack)
        echoes = [channel.unary_unary("/bench.Echo/Echo") for channel in channels]
        calls = [lambda echo=echo: echo(payload, timeout=10) for echo in echoes]
        benchmark.extra_info["items"] = THREADS * calls_per_thread
        benchmark.extra_info["ceiling"] = "echo_workers"
        pids = {int(worker_of(channel)) for channel in channels}
        with ServerCpu(sorted(pids)) as cpu:
            done = benchmark(_in_parallel, calls, calls_per_thread, cpu)
        cpu.note(benchmark.extra_info)
    assert done == THREADS * calls_per_thread


def test_oubli_workers_put(  # type: ignore[no-untyped-def]
    benchmark,
    clients: list[OubliClient],
    subject_id: str,
    calls_per_thread: int,
    oubli_pids: list[int],
    workers: int,
) -> None:
    calls = [
        lambda c=client: c.create_record(subject_id, CATEGORY, {FIELD: MESSAGE}, ORIGIN)
        for client in clients
    ]
    benchmark.extra_info["items"] = THREADS * calls_per_thread
    benchmark.extra_info["ceiling"] = "echo_workers"
    benchmark.extra_info["workers"] = workers
    with ServerCpu(oubli_pids) as cpu:
        done = benchmark(_in_parallel, calls, calls_per_thread, cpu)
    cpu.note(benchmark.extra_info)
    assert done == THREADS * calls_per_thread


def test_oubli_workers_get(  # type: ignore[no-untyped-def]
    benchmark,
    clients: list[OubliClient],
    subject_id: str,
    calls_per_thread: int,
    oubli_pids: list[int],
    workers: int,
) -> None:
    record = clients[0].create_record(subject_id, CATEGORY, {FIELD: MESSAGE}, ORIGIN)

    def get(client: OubliClient) -> None:
        assert client.get_record(subject_id, record.record_id, PURPOSE).fields == record.fields

    calls = [lambda c=client: get(c) for client in clients]
    benchmark.extra_info["items"] = THREADS * calls_per_thread
    benchmark.extra_info["ceiling"] = "echo_workers"
    benchmark.extra_info["workers"] = workers
    with ServerCpu(oubli_pids) as cpu:
        done = benchmark(_in_parallel, calls, calls_per_thread, cpu)
    cpu.note(benchmark.extra_info)
    assert done == THREADS * calls_per_thread
