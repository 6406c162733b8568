"""The KMS guard as the server wires it: settings, the guarded backend, its metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kms.base import KmsUnavailable
from kms.guard import BreakerState, GuardedKeyManager
from tests.memory_kms import InMemoryKeyManager
from vault.app.config import ConfigError, ServerConfig
from vault.app.metrics import build_registry
from vault.app.server import build_kms
from vault.crypto.keycache import DataKeyCache


def test_guard_settings_default_and_come_from_the_environment() -> None:
    config = ServerConfig.from_env({})
    assert (config.kms_timeout_seconds, config.kms_breaker_failures) == (2.0, 5)
    assert config.kms_breaker_reset_seconds == 0.5
    assert config.resolved_kms_max_in_flight == 8  # half of the 16 workers
    env = {
        "OUBLI_KMS_TIMEOUT_SECONDS": "0.75",
        "OUBLI_KMS_MAX_IN_FLIGHT": "3",
        "OUBLI_KMS_BREAKER_FAILURES": "2",
        "OUBLI_KMS_BREAKER_RESET_SECONDS": "0.25",
    }
    config = ServerConfig.from_env(env)
    assert config.kms_timeout_seconds == 0.75
    assert config.resolved_kms_max_in_flight == 3
    assert (config.kms_breaker_failures, config.kms_breaker_reset_seconds) == (2, 0.25)
    assert ServerConfig.from_env({"OUBLI_MAX_WORKERS": "3"}).resolved_kms_max_in_flight == 1


@pytest.mark.parametrize(
    "env",
    [
        {"OUBLI_KMS_TIMEOUT_SECONDS": "0"},
        {"OUBLI_KMS_TIMEOUT_SECONDS": "0.01"},
        {"OUBLI_KMS_TIMEOUT_SECONDS": "nan"},
        {"OUBLI_KMS_TIMEOUT_SECONDS": "3600"},
        {"OUBLI_KMS_MAX_IN_FLIGHT": "-1"},
        {"OUBLI_KMS_BREAKER_FAILURES": "0"},
        {"OUBLI_KMS_BREAKER_RESET_SECONDS": "0"},
        {"OUBLI_KMS_BREAKER_RESET_SECONDS": "nan"},
        {"OUBLI_KMS_MAX_IN_FLIGHT": "many"},
    ],
)
def test_bad_guard_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        ServerConfig.from_env(env)


def test_the_server_puts_its_kms_behind_the_guard(tmp_path: Path) -> None:
    config = ServerConfig.from_env(
        {"OUBLI_DATA_DIR": str(tmp_path), "OUBLI_MAX_WORKERS": "6"},
    )
    kms = build_kms(config)
    try:
        assert isinstance(kms, GuardedKeyManager)
        assert kms.backend_name == "local-keystore"  # receipts name the real backend
        assert kms.status().max_in_flight == 3
        kms.create_key("k1")
        assert kms.key_exists("k1")
    finally:
        kms.close()


def metric_samples(registry_kms: GuardedKeyManager) -> dict[tuple[str, str], float]:
    text = generate_latest(build_registry(registry_kms, DataKeyCache())).decode()
    return {
        (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_breaker_state_and_refusals_are_exported_without_key_ids() -> None:
    backend = InMemoryKeyManager()
    guard = GuardedKeyManager(backend, max_in_flight=4, failure_threshold=2)
    guard.create_key("secret-key-id")
    samples = metric_samples(guard)
    assert samples[("oubli_kms_breaker_state", "state=closed")] == 1
    assert samples[("oubli_kms_breaker_state", "state=open")] == 0
    assert samples[("oubli_kms_in_flight", "")] == 0
    assert samples[("oubli_kms_in_flight_limit", "")] == 4
    backend.unavailable = True
    for _ in range(3):
        with pytest.raises(KmsUnavailable):
            guard.key_exists("secret-key-id")
    assert guard.breaker.state is BreakerState.OPEN
    samples = metric_samples(guard)
    assert samples[("oubli_kms_breaker_state", "state=open")] == 1
    assert samples[("oubli_kms_breaker_state", "state=closed")] == 0
    assert samples[("oubli_kms_refused_total", "reason=circuit_open")] == 1
    text = generate_latest(build_registry(guard, DataKeyCache())).decode()
    assert "secret-key-id" not in text
