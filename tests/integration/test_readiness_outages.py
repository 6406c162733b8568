"""Readiness against real outages: a PostgreSQL of the test's own stopped and started,
an OpenBao (raft storage, keys kept) hung, stopped and started. Health says
NOT_SERVING meanwhile and SERVING again by itself; liveness says SERVING throughout;
calls are answered UNAVAILABLE, never INTERNAL."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from oubli_client import OubliClient
from oubli_client.errors import Unavailable
from tests.integration.pg_cluster import PostgresCluster
from tests.stack import TEST_TOKEN, suite_auth
from vault.app.config import ServerConfig
from vault.app.openbao_process import OpenBaoRaftServer
from vault.app.readiness import LIVENESS_SERVICE
from vault.app.server import SERVICE_NAMES, RunningServer, start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: The most any health change may take here (the probe runs every 0.2 s; a hung KMS
#: call is cut at the guard's budget; OpenBao's raft needs a few seconds to elect itself
#: after a start, which the test waits for before this bound starts).
BOUND_SECONDS = 15.0
INTERVAL = 0.2


class Watch:
    """Health of one server, and its liveness checked at every look."""

    def __init__(self, server: RunningServer) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        assert server.metrics is not None
        self.metrics_url = f"http://127.0.0.1:{server.metrics.port}/metrics"
        self.liveness_checks = 0

    def status(self, service: str = "") -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(self.stub.Check(request, timeout=5).status)

    def alive(self) -> None:
        assert self.status(LIVENESS_SERVICE) == SERVING
        self.liveness_checks += 1

    def wait_for(self, wanted: int, what: str) -> float:
        """Seconds until health ``""`` says ``wanted`` (liveness SERVING at each look),
        then every service name says it too."""
        start = time.monotonic()
        while True:
            self.alive()
            if self.status() == wanted:
                break
            assert time.monotonic() - start < BOUND_SECONDS, f"not within bound: {what}"
            time.sleep(0.05)
        seconds = time.monotonic() - start
        assert {self.status(name) for name in SERVICE_NAMES} == {wanted}
        print(f"{what}: {seconds:.2f} s")
        return seconds

    def gauge(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        found = [
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and s.labels == labels
        ]
        assert len(found) == 1, (name, labels)
        return found[0]

    def close(self) -> None:
        self.channel.close()


@contextmanager
def serving(config: ServerConfig) -> Iterator[tuple[RunningServer, OubliClient, Watch]]:
    server = start_server(config, auth=suite_auth())
    watch = Watch(server)
    client = OubliClient(f"127.0.0.1:{server.port}", timeout=10, max_attempts=1, token=TEST_TOKEN)
    try:
        yield server, client, watch
    finally:
        client.close()
        watch.close()
        server.stop(grace=0)


def unavailable(call: Callable[[], object]) -> None:
    """The call fails UNAVAILABLE (an INTERNAL would raise another class)."""
    with pytest.raises(Unavailable):
        call()


def test_postgresql_stopped_is_not_serving_and_started_is_serving(tmp_path: Path) -> None:
    with PostgresCluster() as pg:
        config = ServerConfig(
            listen="127.0.0.1:0",
            metrics_listen="127.0.0.1:0",
            database_url=pg.url,
            data_dir=tmp_path / "data",
            readiness_interval_seconds=INTERVAL,
        )
        with serving(config) as (_server, client, watch):
            subject = client.create_subject()
            watch.wait_for(SERVING, "serving at start")
            for _ in range(2):
                pg.stop("immediate")
                watch.wait_for(NOT_SERVING, "postgresql stopped -> NOT_SERVING")
                assert watch.gauge("oubli_dependency_up", dependency="database") == 0
                assert watch.gauge("oubli_dependency_up", dependency="kms") == 1
                assert watch.gauge("oubli_ready") == 0
                unavailable(client.create_subject)
                unavailable(lambda: client.get_subject(subject.subject_id))
                watch.alive()
                pg.start()
                watch.wait_for(SERVING, "postgresql started -> SERVING")
                assert watch.gauge("oubli_dependency_up", dependency="database") == 1
                assert client.get_subject(subject.subject_id).subject_id == subject.subject_id
                client.create_subject()
            get = "oubli.v1.SubjectService/GetSubject"
            assert watch.gauge("oubli_rpcs_total", method=get, code="UNAVAILABLE") == 2
            assert watch.gauge("oubli_rpcs_total", method=get, code="OK") == 2
            assert watch.liveness_checks > 4


def test_openbao_hung_or_stopped_is_not_serving_and_back_is_serving(
    tmp_path: Path, sqlite_url: str
) -> None:
    # Raft storage: the keys (the audit signing key among them) outlive a restart.
    bao = OpenBaoRaftServer(tmp_path / "raft", log_path=tmp_path / "openbao.log")
    with bao:
        config = ServerConfig.from_env(
            {"VAULT_ADDR": bao.address, "VAULT_TOKEN": bao.token},
            listen="127.0.0.1:0",
            metrics_listen="127.0.0.1:0",
            database_url=sqlite_url,
            data_dir=tmp_path / "data",
            kms="vault",
            readiness_interval_seconds=INTERVAL,
            kms_timeout_seconds=1.0,
        )
        with serving(config) as (_server, client, watch):
            subject = client.create_subject()
            watch.wait_for(SERVING, "serving at start")

            # A hung OpenBao: the probe's call is cut at the guard's budget.
            assert bao.pid is not None
            os.kill(bao.pid, signal.SIGSTOP)
            try:
                watch.wait_for(NOT_SERVING, "openbao hung -> NOT_SERVING")
                assert watch.gauge("oubli_dependency_up", dependency="kms") == 0
                assert watch.gauge("oubli_dependency_up", dependency="database") == 1
                unavailable(client.create_subject)
                # A call that needs no KMS is still answered: readiness refuses nothing.
                assert client.get_subject(subject.subject_id).subject_id == subject.subject_id
            finally:
                os.kill(bao.pid, signal.SIGCONT)
            watch.wait_for(SERVING, "openbao resumed -> SERVING")

            # A stopped OpenBao: connection refused.
            bao.stop()
            watch.wait_for(NOT_SERVING, "openbao stopped -> NOT_SERVING")
            unavailable(client.create_subject)
            watch.alive()
            bao.start()  # unsealed and active when it returns
            watch.wait_for(SERVING, "openbao started -> SERVING")
            client.create_subject()
            assert watch.gauge("oubli_kms_errors_total", kind="unavailable") > 0
            assert watch.gauge("oubli_kms_errors_total", kind="refused") == 0
            create = "oubli.v1.SubjectService/CreateSubject"
            assert watch.gauge("oubli_rpcs_total", method=create, code="UNAVAILABLE") == 2
            assert watch.gauge("oubli_rpcs_total", method=create, code="OK") == 2
            for code in ("INTERNAL", "UNKNOWN"):
                with pytest.raises(AssertionError):
                    watch.gauge("oubli_rpcs_total", method=create, code=code)
