"""Unary throughput under concurrent callers: the echo ceiling and oubli put/get, each
driven by the same 8 client threads (a billing service has many requests in flight).

One call at a time (test_unary.py) measures latency: every oubli call waits for its
own durable audit commit. With calls in flight together, the audit's group commit
(vault.audit.chain.AuditLog.append_many) writes the entries of waiting calls in one
transaction, and the ratio to the echo ceiling shows what the server's own work costs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from benchmarks.helpers import MESSAGE, MeteredServer
from oubli_client import OubliClient
from oubli_client.v1 import vault_pb2 as pb

THREADS = 8
CALLS_PER_THREAD = 50


def _in_parallel(call: Callable[[], object], calls_per_thread: int) -> int:
    """Run ``call`` THREADS x ``calls_per_thread`` times from THREADS threads."""

    def worker() -> int:
        for _ in range(calls_per_thread):
            call()
        return calls_per_thread

    with ThreadPoolExecutor(THREADS) as pool:
        return sum(pool.map(lambda _: worker(), range(THREADS)))


@pytest.fixture(scope="module")
def calls_per_thread(request: pytest.FixtureRequest) -> int:
    return 2 if request.config.getoption("benchmark_disable") else CALLS_PER_THREAD


@pytest.fixture(scope="module")
def client(oubli_server: MeteredServer) -> Iterator[OubliClient]:
    with OubliClient(oubli_server.target, token=oubli_server.token) as c:
        yield c


@pytest.fixture(scope="module")
def subject_id(client: OubliClient) -> str:
    return client.create_subject().subject_id


def test_ceiling_echo_concurrent(benchmark, echo_target: str, calls_per_thread: int) -> None:  # type: ignore[no-untyped-def]
    payload = pb.CreateRecordRequest(
        subject_id="a" * 26, category="support", fields={"message": MESSAGE}, origin="bench"
    ).SerializeToString()
    with grpc.insecure_channel(echo_target) as channel:
        echo = channel.unary_unary("/bench.Echo/Echo")
        benchmark.extra_info["items"] = THREADS * calls_per_thread
        benchmark.extra_info["ceiling"] = "echo_concurrent"
        done = benchmark(_in_parallel, lambda: echo(payload, timeout=10), calls_per_thread)
    assert done == THREADS * calls_per_thread


def test_oubli_concurrent_put(  # type: ignore[no-untyped-def]
    benchmark, client: OubliClient, subject_id: str, calls_per_thread: int
) -> None:
    benchmark.extra_info["items"] = THREADS * calls_per_thread
    benchmark.extra_info["baseline"] = "naive_encrypt"
    benchmark.extra_info["ceiling"] = "echo_concurrent"
    done = benchmark(
        _in_parallel,
        lambda: client.create_record(subject_id, "support", {"message": MESSAGE}, "bench"),
        calls_per_thread,
    )
    assert done == THREADS * calls_per_thread


def test_oubli_concurrent_get(  # type: ignore[no-untyped-def]
    benchmark, client: OubliClient, subject_id: str, calls_per_thread: int
) -> None:
    record = client.create_record(subject_id, "support", {"message": MESSAGE}, "bench")

    def get() -> None:
        assert client.get_record(subject_id, record.record_id, "support").fields == record.fields

    benchmark.extra_info["items"] = THREADS * calls_per_thread
    benchmark.extra_info["baseline"] = "naive_decrypt"
    benchmark.extra_info["ceiling"] = "echo_concurrent"
    assert benchmark(_in_parallel, get, calls_per_thread) == THREADS * calls_per_thread
