"""Readiness through gRPC health, and the RPC, pool, KMS latency/error and readiness
metrics, scraped from the endpoint of a real in-process server."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from kms.guard import GuardedKeyManager
from oubli_client import OubliClient
from oubli_client.errors import NotFound, Unavailable
from tests.memory_kms import InMemoryKeyManager
from tests.stack import TEST_TOKEN, suite_auth, vault_service
from vault.app.config import ServerConfig
from vault.app.readiness import LIVENESS_SERVICE
from vault.app.server import SERVICE_NAMES, RunningServer, start_server
from vault.storage import Storage, make_engine, migrate

CANARY_EMAIL = "canary-readiness@example.org"
CANARY_CITY = "Plougastel"
#: Bound of every wait for a health change (the probe runs every 0.1 s).
BOUND_SECONDS = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Served:
    server: RunningServer
    client: OubliClient
    kms: InMemoryKeyManager
    health: health_pb2_grpc.HealthStub

    def scrape(self) -> list[Sample]:
        assert self.server.metrics is not None
        url = f"http://127.0.0.1:{self.server.metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        self.text = text
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.scrape() if s.name == name and s.labels == labels]
        assert len(found) == 1, (name, labels)
        return found[0]

    def status(self, service: str = "") -> int:
        answer = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(answer.status)


@pytest.fixture
def served(sqlite_url: str) -> Iterator[Served]:
    engine = make_engine(sqlite_url)
    migrate(engine)
    backend = InMemoryKeyManager()
    guard = GuardedKeyManager(backend, reset_seconds=0.2)
    vault = vault_service(Storage(engine), guard)
    config = ServerConfig(
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        audit_checkpoint_seconds=3600,
        readiness_interval_seconds=0.1,
    )
    server = start_server(config, vault=vault, auth=suite_auth())
    client = OubliClient(f"127.0.0.1:{server.port}", timeout=10, token=TEST_TOKEN, max_attempts=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield Served(server, client, backend, health_pb2_grpc.HealthStub(channel))
    channel.close()
    client.close()
    server.stop(grace=0)


def wait_for(what: str, condition: Callable[[], bool]) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < BOUND_SECONDS, f"not within {BOUND_SECONDS} s: {what}"
        time.sleep(0.02)
    return time.monotonic() - start


def test_rpc_metrics_count_each_method_by_status_and_time_it(served: Served) -> None:
    client = served.client
    subject = client.create_subject()
    client.get_subject(subject.subject_id)
    client.get_subject(subject.subject_id)
    with pytest.raises(NotFound):
        client.get_subject("k5u7tcy6at5cgqoi3fmi4fhma4")
    get = "oubli.v1.SubjectService/GetSubject"
    assert served.value("oubli_rpcs_total", method=get, code="OK") == 2
    assert served.value("oubli_rpcs_total", method=get, code="NOT_FOUND") == 1
    create = "oubli.v1.SubjectService/CreateSubject"
    assert served.value("oubli_rpcs_total", method=create, code="OK") == 1
    assert served.value("oubli_rpc_duration_seconds_count", method=get) == 3
    assert served.value("oubli_rpc_duration_seconds_bucket", method=get, le="+Inf") == 3
    assert 0 < served.value("oubli_rpc_duration_seconds_sum", method=get) < 30
    assert "# TYPE oubli_rpc_duration_seconds histogram" in served.text
    # Health and reflection are not oubli's methods: not counted.
    served.status()
    assert not [s for s in served.scrape() if "grpc.health" in s.labels.get("method", "")]


def test_pool_kms_latency_errors_and_readiness_families(served: Served) -> None:
    subject = served.client.create_subject()
    assert served.value("oubli_db_pool_size") == 16  # SQLite's pool (vault/storage/engine.py)
    assert served.value("oubli_db_pool_max_overflow") == 16
    # Nothing in flight once the call is over: the background audit sealer holds a
    # connection for a moment every 0.2 s, so a scrape may catch it; a leak stays.
    checked_out = [served.value("oubli_db_pool_checked_out") for _ in range(20)]
    assert 0 in checked_out and max(checked_out) <= 1, checked_out
    assert served.value("oubli_db_pool_overflow") == 0
    assert served.value("oubli_kms_call_duration_seconds_count", operation="create_key") >= 1
    assert served.value("oubli_kms_call_duration_seconds_count", operation="key_exists") >= 1
    assert "# TYPE oubli_kms_call_duration_seconds histogram" in served.text
    for kind in ("unavailable", "refused", "destroyed", "other"):
        assert served.value("oubli_kms_errors_total", kind=kind) == 0
    assert served.value("oubli_dependency_up", dependency="database") == 1
    assert served.value("oubli_dependency_up", dependency="kms") == 1
    assert served.value("oubli_ready") == 1

    served.client.get_subject(subject.subject_id)
    served.kms.unavailable = True
    with pytest.raises(Unavailable):
        served.client.create_subject()
    assert served.value("oubli_kms_errors_total", kind="unavailable") >= 1


def test_health_follows_the_kms_and_liveness_stays_up(served: Served) -> None:
    client = served.client
    warm = client.create_subject()
    names = ("", *SERVICE_NAMES)
    assert {served.status(name) for name in names} == {SERVING}
    assert served.status(LIVENESS_SERVICE) == SERVING

    served.kms.unavailable = True
    down = wait_for("NOT_SERVING while the KMS is away", lambda: served.status() == NOT_SERVING)
    assert {served.status(name) for name in names} == {NOT_SERVING}
    assert served.status(LIVENESS_SERVICE) == SERVING
    assert served.value("oubli_dependency_up", dependency="kms") == 0
    assert served.value("oubli_dependency_up", dependency="database") == 1
    assert served.value("oubli_ready") == 0
    # Calls are not refused by readiness: one that needs the KMS fails UNAVAILABLE, one
    # that does not is answered.
    with pytest.raises(Unavailable):
        client.create_subject()
    assert client.get_subject(warm.subject_id).subject_id == warm.subject_id

    served.kms.unavailable = False
    up = wait_for("SERVING once the KMS is back", lambda: served.status() == SERVING)
    assert {served.status(name) for name in names} == {SERVING}
    assert served.value("oubli_ready") == 1
    client.create_subject()
    assert down < 3 and up < 3  # a 0.1 s probe, the breaker's 0.2 s reset
    codes = {
        s.labels["code"] for s in served.scrape() if s.name == "oubli_rpcs_total" and s.value > 0
    }
    assert codes == {"OK", "UNAVAILABLE"}  # never INTERNAL


def test_liveness_goes_with_the_server(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    migrate(engine)
    vault = vault_service(Storage(engine), GuardedKeyManager(InMemoryKeyManager()))
    server = start_server(ServerConfig(listen="127.0.0.1:0"), vault=vault, auth=suite_auth())
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE)
        assert stub.Check(request, timeout=5).status == SERVING
        server.health.enter_graceful_shutdown()
        assert stub.Check(request, timeout=5).status == NOT_SERVING
    server.stop(grace=0)


def test_metrics_labels_hold_no_ids_or_values(served: Served) -> None:
    client = served.client
    subject = client.create_subject()
    record = client.create_record(
        subject.subject_id, "contact", {"email": CANARY_EMAIL, "city": CANARY_CITY}
    )
    client.get_record(subject.subject_id, record.record_id, "service")
    assert client.find_subject(email=CANARY_EMAIL, purpose="support") == [subject.subject_id]
    other_record = ("b" if record.record_id[0] == "a" else "a") + record.record_id[1:]
    with pytest.raises(NotFound):
        client.get_record(subject.subject_id, other_record, "service")
    key_id = served.server.vault.subject_info(subject.subject_id).key_id
    samples = served.scrape()
    for secret in (CANARY_EMAIL, "canary-readiness", CANARY_CITY, subject.subject_id, key_id):
        assert secret not in served.text
    assert record.record_id not in served.text
    allowed = {
        "backend": {"memory"},
        "state": {"closed", "open", "half_open"},
        "reason": {"circuit_open", "overloaded", "no_time_left", "failed_before"},
        "kind": {
            "unavailable", "refused", "destroyed", "other",
            "subjects", "buckets", "deks", "index", "signing",
        },
        "dependency": {"database", "kms"},
        "code": {code.name for code in grpc.StatusCode},
    }  # fmt: skip
    methods = {s.labels["method"] for s in samples if "method" in s.labels}
    assert "oubli.v1.RecordService/CreateRecord" in methods
    for sample in samples:
        for label, value in sample.labels.items():
            if label == "method":
                service, _, rpc = value.partition("/")
                assert service.startswith("oubli.v1.") and rpc.isalpha(), value
            elif label == "operation":
                assert value.replace("_", "").isalpha(), value
            elif label == "le":
                float(value)
            else:
                assert value in allowed[label], (sample.name, label, value)
