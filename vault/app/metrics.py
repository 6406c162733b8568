"""Prometheus metrics: live KMS and DEK-cache figures, read on every scrape.

oubli keeps its own ``CollectorRegistry`` (never prometheus_client's global one), with a
single collector that reads the current values from the running vault when scraped:

    oubli_kms_calls_total{backend}     counter: KMS round trips made by this process
    oubli_kms_backend_info{backend}    gauge, always 1: which KMS backend is in use
    oubli_dek_cache_entries            gauge: keys (subjects, buckets) in the DEK cache

and, when the KMS is behind the guard (kms/guard.py, as ``oubli serve`` wires it):

    oubli_kms_breaker_state{state}     gauge: 1 for the breaker's current state
                                       (closed, open, half_open), 0 for the others
    oubli_kms_in_flight                gauge: KMS calls at the KMS now
    oubli_kms_in_flight_limit          gauge: the most allowed at once
    oubli_kms_refused_total{reason}    counter: calls refused without reaching the KMS
                                       (circuit_open, overloaded, no_time_left,
                                       failed_before)

and, from the database (oubli serve):

    oubli_key_oldest_age_seconds{kind}  gauge: age of the oldest live key of each kind
                                       (subjects, buckets, deks, index, signing)
    oubli_key_cryptoperiod_seconds{kind} gauge: the configured cryptoperiod of the kind

Labels carry only the KMS backend's name (``local-keystore``, ``vault-transit``, ...)
and the fixed state and reason names above: never a subject id, key id, caller, field
name or value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kms.base import KeyManager
from kms.guard import BreakerState, GuardedKeyManager
from vault.clock import Clock, utc_now
from vault.crypto.keycache import DataKeyCache
from vault.errors import OubliError
from vault.usecases.key_rotation import KeyAge
from vault.usecases.restore_fence import RestoreFence, ServingGate


class VaultCollector(Collector):
    """Reads ``kms.calls``, ``kms.backend_name`` and the DEK cache's size per scrape."""

    def __init__(self, kms: KeyManager, cache: DataKeyCache) -> None:
        self._kms = kms
        self._cache = cache

    def collect(self) -> Iterable[Metric]:
        backend = self._kms.backend_name
        calls = CounterMetricFamily(
            "oubli_kms_calls",
            "KMS round trips made by this process since it started.",
            labels=["backend"],
        )
        calls.add_metric([backend], self._kms.calls)
        yield calls
        info = GaugeMetricFamily(
            "oubli_kms_backend_info",
            "The KMS backend this process uses (the value is always 1).",
            labels=["backend"],
        )
        info.add_metric([backend], 1)
        yield info
        yield GaugeMetricFamily(
            "oubli_dek_cache_entries",
            "Keys (one per subject or bucket) whose plaintext DEKs are in the in-process "
            "cache; expired entries are not counted.",
            value=len(self._cache),
        )
        if isinstance(self._kms, GuardedKeyManager):
            yield from _guard_metrics(self._kms)


def _guard_metrics(guard: GuardedKeyManager) -> Iterable[Metric]:
    status = guard.status()
    breaker = GaugeMetricFamily(
        "oubli_kms_breaker_state",
        "The KMS circuit breaker's state: 1 for the current one (open: KMS calls are "
        "refused at once; half_open: one probe is let through).",
        labels=["state"],
    )
    for state in BreakerState:
        breaker.add_metric([state.value], 1 if status.breaker is state else 0)
    yield breaker
    yield GaugeMetricFamily(
        "oubli_kms_in_flight", "KMS calls at the KMS now.", value=status.in_flight
    )
    yield GaugeMetricFamily(
        "oubli_kms_in_flight_limit",
        "The most KMS calls allowed at the KMS at once.",
        value=status.max_in_flight,
    )
    refused = CounterMetricFamily(
        "oubli_kms_refused",
        "KMS calls refused without reaching the KMS (breaker open, too many in flight, "
        "caller's deadline too near, KMS unavailable earlier in the same call).",
        labels=["reason"],
    )
    for reason, count in sorted(status.refused.items()):
        refused.add_metric([reason], count)
    yield refused


class KeyAgeCollector(Collector):
    """The age of the oldest live key of each kind, read from the database per scrape
    (one indexed query per kind; no KMS call)."""

    def __init__(self, ages: Callable[[], list[KeyAge]], clock: Clock) -> None:
        self._ages = ages
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        try:
            ages = self._ages()
        except OubliError:  # the database is unreachable: no figure rather than a wrong one
            return
        now = self._clock()
        oldest = GaugeMetricFamily(
            "oubli_key_oldest_age_seconds",
            "Age of the oldest live key of each kind (since it got its current version).",
            labels=["kind"],
        )
        period = GaugeMetricFamily(
            "oubli_key_cryptoperiod_seconds",
            "The configured cryptoperiod of each kind of key.",
            labels=["kind"],
        )
        for age in ages:
            if age.oldest is not None:
                oldest.add_metric([age.kind.value], (now - age.oldest).total_seconds())
            period.add_metric([age.kind.value], age.cryptoperiod.total_seconds())
        yield oldest
        yield period


class FenceCollector(Collector):
    """The restore fence: how far the database was behind the erasure ledger at the last
    pass, and whether the serving gate is open."""

    def __init__(self, fence: RestoreFence, gate: ServingGate) -> None:
        self._fence = fence
        self._gate = gate

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "oubli_erasure_ledger_lag_entries",
            "Erasure ledger entries the data database was behind at the restore fence's "
            "last pass (a restored database; the fence erased them again).",
            value=self._fence.lag,
        )
        yield GaugeMetricFamily(
            "oubli_restore_fence_open",
            "1 once the restore fence has passed and RPCs are served, else 0.",
            value=0 if self._gate.refusal is not None else 1,
        )


def build_registry(
    kms: KeyManager,
    cache: DataKeyCache,
    fence: RestoreFence | None = None,
    gate: ServingGate | None = None,
    key_ages: Callable[[], list[KeyAge]] | None = None,
    clock: Clock = utc_now,
) -> CollectorRegistry:
    """A registry of its own holding the vault collector and, when given, the restore
    fence's and the key ages' (nothing process-global)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(VaultCollector(kms, cache))
    if fence is not None and gate is not None:
        registry.register(FenceCollector(fence, gate))
    if key_ages is not None:
        registry.register(KeyAgeCollector(key_ages, clock))
    return registry


@dataclass
class MetricsServer:
    """The HTTP endpoint serving a registry (any path; Prometheus scrapes /metrics)."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The bound port (the one picked when port 0 was asked for)."""
        return int(self.httpd.server_port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve ``registry`` over plain HTTP on host:port in a daemon thread.

    Raises:
        OSError: the address cannot be bound.
    """
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd, thread)
