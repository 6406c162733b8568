"""Prometheus metrics: live KMS call counts over HTTP, no personal data, config checks."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from oubli_client import OubliClient
from tests.memory_kms import InMemoryKeyManager
from tests.stack import TEST_TOKEN, suite_auth, vault_service
from vault.app.cli import app
from vault.app.config import ConfigError, ServerConfig
from vault.app.metrics import build_registry
from vault.app.server import RunningServer, start_server
from vault.crypto.keycache import DataKeyCache
from vault.storage import Storage, make_engine, migrate

CANARY_EMAIL = "canary-metrics@example.org"


@dataclass
class MetricsStack:
    server: RunningServer
    client: OubliClient
    kms: InMemoryKeyManager

    @property
    def metrics_url(self) -> str:
        assert self.server.metrics is not None
        return f"http://127.0.0.1:{self.server.metrics.port}/metrics"


@pytest.fixture
def metrics_stack(sqlite_url: str) -> Iterator[MetricsStack]:
    """The real gRPC server in process, with the metrics endpoint on a free loopback port."""
    engine = make_engine(sqlite_url)
    migrate(engine)
    kms = InMemoryKeyManager()
    vault = vault_service(Storage(engine), kms)
    config = ServerConfig(
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        # No checkpoint (a KMS signature) nor readiness probe (a key_exists) may land
        # between two counts.
        audit_checkpoint_seconds=3600,
        readiness_interval_seconds=3600,
    )
    server = start_server(config, vault=vault, auth=suite_auth())
    client = OubliClient(f"127.0.0.1:{server.port}", timeout=10, token=TEST_TOKEN)
    yield MetricsStack(server, client, kms)
    client.close()
    server.stop(grace=0)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body: bytes = response.read()
    return body.decode("utf-8")


def samples(text: str) -> dict[str, tuple[dict[str, str], float]]:
    """Sample name -> (labels, value), from the text exposition format."""
    return {
        sample.name: (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def kms_calls(url: str) -> float:
    labels, value = samples(scrape(url))["oubli_kms_calls_total"]
    assert labels == {"backend": "memory"}
    return value


def test_kms_calls_counter_follows_every_kms_round_trip(metrics_stack: MetricsStack) -> None:
    url, kms, client = metrics_stack.metrics_url, metrics_stack.kms, metrics_stack.client
    before = kms_calls(url)
    assert before == kms.calls  # the audit signing key was created at start

    subject = client.create_subject()  # create_key + generate_data_key
    assert kms_calls(url) - before == kms.calls - before == 2

    record = client.create_record(subject.subject_id, "contact", {"city": "Paris"})
    after_write = kms_calls(url)
    assert after_write == kms.calls  # the blind index key may be made here: still counted

    client.get_record(subject.subject_id, record.record_id, "service")  # DEK cached: 0 calls
    assert kms_calls(url) == after_write == kms.calls

    # A cold read: one unwrap, seen by the next scrape.
    metrics_stack.server.vault.crypto.cache.evict(
        metrics_stack.server.vault.subject_info(subject.subject_id).key_id
    )
    client.get_record(subject.subject_id, record.record_id, "service")
    assert kms_calls(url) == after_write + 1 == kms.calls


def test_exposition_names_the_backend_and_the_cache(metrics_stack: MetricsStack) -> None:
    client = metrics_stack.client
    text = scrape(metrics_stack.metrics_url)
    assert "# TYPE oubli_kms_calls_total counter" in text
    assert "# TYPE oubli_kms_backend_info gauge" in text
    assert 'oubli_kms_backend_info{backend="memory"} 1.0' in text
    assert samples(text)["oubli_dek_cache_entries"] == ({}, 0.0)

    client.create_subject()
    client.create_subject()
    assert samples(scrape(metrics_stack.metrics_url))["oubli_dek_cache_entries"] == ({}, 2.0)


def test_metrics_hold_no_personal_data_or_ids(metrics_stack: MetricsStack) -> None:
    client = metrics_stack.client
    subject = client.create_subject()
    record = client.create_record(
        subject.subject_id, "contact", {"email": CANARY_EMAIL, "city": "Quimper"}
    )
    client.get_record(subject.subject_id, record.record_id, "service")
    assert client.find_subject(email=CANARY_EMAIL, purpose="support") == [subject.subject_id]
    key_id = metrics_stack.server.vault.subject_info(subject.subject_id).key_id

    text = scrape(metrics_stack.metrics_url)
    assert "oubli_kms_calls_total" in text
    for secret in (CANARY_EMAIL, "canary-metrics", "Quimper", subject.subject_id, key_id):
        assert secret not in text
    assert record.record_id not in text
    every_sample = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert "oubli_kms_calls_total" in {s.name for s in every_sample}
    kinds = {"subjects", "buckets", "deks", "index", "signing"}
    for sample in every_sample:  # each sample, not one per name
        assert set(sample.labels) <= {"backend", "kind", "method", "code", "le", "dependency"}
        assert sample.labels.get("kind", "subjects") in kinds
        assert sample.labels.get("method", "oubli.v1.").startswith("oubli.v1.")


def test_metrics_endpoint_stops_with_the_server(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    migrate(engine)
    vault = vault_service(Storage(engine), InMemoryKeyManager())
    config = ServerConfig(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0")
    server = start_server(config, vault=vault, auth=suite_auth())
    assert server.metrics is not None
    url = f"http://127.0.0.1:{server.metrics.port}/metrics"
    assert "oubli_kms_calls_total" in scrape(url)
    server.stop(grace=0)
    with pytest.raises(urllib.error.URLError):
        scrape(url)


def test_no_metrics_endpoint_by_default(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    migrate(engine)
    vault = vault_service(Storage(engine), InMemoryKeyManager())
    server = start_server(ServerConfig(listen="127.0.0.1:0"), vault=vault, auth=suite_auth())
    try:
        assert server.metrics is None
    finally:
        server.stop(grace=0)


def test_registry_reads_live_values_and_is_not_the_global_one() -> None:
    kms, cache = InMemoryKeyManager(), DataKeyCache()
    registry = build_registry(kms, cache)
    kms.create_key("k1")
    cache.put("k1", 1, bytes(32))
    text = generate_latest(registry).decode()
    assert 'oubli_kms_calls_total{backend="memory"} 1.0' in text
    assert "oubli_dek_cache_entries 1.0" in text
    kms.key_exists("k1")
    assert 'oubli_kms_calls_total{backend="memory"} 2.0' in generate_latest(registry).decode()
    assert "oubli_kms_calls" not in generate_latest().decode()  # the process-global registry


# --- configuration ------------------------------------------------------------------


def test_metrics_listen_is_off_by_default_and_read_from_the_environment() -> None:
    assert ServerConfig.from_env({}).metrics_address is None
    config = ServerConfig.from_env({"OUBLI_METRICS_LISTEN": "0.0.0.0:9464"})
    assert config.metrics_listen == "0.0.0.0:9464"
    assert config.metrics_address == ("0.0.0.0", 9464)
    assert ServerConfig.from_env({}, metrics_listen="[::1]:0").metrics_address == ("::1", 0)
    flag = ServerConfig.from_env({"OUBLI_METRICS_LISTEN": "0.0.0.0:1"}, metrics_listen="h:2")
    assert flag.metrics_address == ("h", 2)


@pytest.mark.parametrize(
    "value",
    [
        "9464",
        ":9464",
        "localhost:",
        "localhost:http",
        "localhost:65536",
        "localhost:-1",
        "::1:9464",
        "[::1:9464",
        "127.0.0.1:9464/metrics",
        "http://127.0.0.1:9464",
        " 127.0.0.1:9464",
    ],
)
def test_bad_metrics_listen_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="OUBLI_METRICS_LISTEN"):
        ServerConfig.from_env({"OUBLI_METRICS_LISTEN": value})


def test_metrics_address_must_differ_from_grpc_address() -> None:
    with pytest.raises(ConfigError, match="metrics address must differ"):
        ServerConfig.from_env({"OUBLI_LISTEN": "127.0.0.1:9000"}, metrics_listen="127.0.0.1:9000")


def test_serve_refuses_a_bad_metrics_listen_flag() -> None:
    result = CliRunner().invoke(app, ["serve", "--metrics-listen", "nope"])
    assert result.exit_code == 2
    assert "OUBLI_METRICS_LISTEN" in result.output


def test_key_ages_are_exposed_per_kind(metrics_stack: MetricsStack) -> None:
    metrics_stack.client.create_subject()
    families = {
        f.name: f for f in text_string_to_metric_families(scrape(metrics_stack.metrics_url))
    }
    ages = {s.labels["kind"]: s.value for s in families["oubli_key_oldest_age_seconds"].samples}
    periods = {
        s.labels["kind"]: s.value for s in families["oubli_key_cryptoperiod_seconds"].samples
    }
    assert {"subjects", "deks", "signing"} <= set(ages)  # the signing key exists from start
    assert all(0 <= age < 3600 for age in ages.values())
    assert periods == {
        "subjects": 365 * 86400.0,
        "buckets": 365 * 86400.0,
        "deks": 365 * 86400.0,
        "index": 730 * 86400.0,
        "signing": 365 * 86400.0,
    }
