"""The supervisor's metrics: each worker's figures, read over HTTP, labelled ``worker``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vault.app.metrics import (
    MetricsServer,
    WorkerEndpoint,
    WorkersCollector,
    start_metrics_server,
)
from vault.app.openbao_process import free_port


@pytest.fixture
def worker_endpoints() -> Iterator[list[MetricsServer]]:
    """Two workers' metric endpoints: RPCs counted (3 and 5), a live gauge."""
    servers = []
    for index, calls in enumerate((3, 5)):
        registry = CollectorRegistry()
        Counter("oubli_rpcs", "RPCs.", ["method", "code"], registry=registry).labels("m", "OK").inc(
            calls
        )
        Gauge("oubli_ready", "Ready.", registry=registry).set(index)
        servers.append(start_metrics_server(registry, "127.0.0.1", 0))
    yield servers
    for server in servers:
        server.stop()


def test_each_workers_figures_carry_its_label(worker_endpoints: list[MetricsServer]) -> None:
    endpoints = [
        WorkerEndpoint(index, 1000 + index, server.port)
        for index, server in enumerate(worker_endpoints)
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkersCollector(lambda: endpoints))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    samples = {
        (s.name, s.labels.get("worker")): s.value
        for family in families.values()
        for s in family.samples
    }
    assert samples[("oubli_rpcs_total", "0")] == 3
    assert samples[("oubli_rpcs_total", "1")] == 5
    assert families["oubli_rpcs"].type == "counter"  # one family for both workers
    assert samples[("oubli_ready", "1")] == 1
    assert samples[("oubli_worker_pid", "0")] == 1000
    assert samples[("oubli_worker_up", "1")] == 1


def test_a_worker_that_does_not_answer_is_down_not_an_error() -> None:
    gone = [WorkerEndpoint(0, 1234, free_port())]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkersCollector(lambda: gone))
    text = generate_latest(registry).decode()
    assert 'oubli_worker_up{worker="0"} 0.0' in text
    assert 'oubli_worker_pid{worker="0"} 1234.0' in text
