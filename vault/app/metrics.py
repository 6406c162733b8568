"""Prometheus metrics: live KMS, DEK-cache, RPC, database pool and readiness figures.

oubli keeps its own ``CollectorRegistry`` (never prometheus_client's global one), with
collectors that read the current values from the running vault when scraped (the RPC
figures alone are counted as each call ends, through the interceptor's hook):

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
    oubli_kms_call_duration_seconds{operation}
                                       histogram: time of each KMS call that reached the
                                       backend (unwrap, sign, key_exists, ...)
    oubli_kms_errors_total{kind}       counter: KMS calls that reached the backend and
                                       failed (unavailable, refused, destroyed, other)

and, from the gRPC server (oubli serve):

    oubli_rpc_duration_seconds{method} histogram: time of each oubli RPC, from the
                                       interceptor's start to its status
    oubli_rpcs_total{method,code}      counter: RPCs answered, by gRPC status code
    oubli_db_pool_size                 gauge: connections the database pool keeps
    oubli_db_pool_checked_out          gauge: connections in use by transactions now
    oubli_db_pool_overflow             gauge: connections open beyond the pool size now
    oubli_db_pool_max_overflow         gauge: the most allowed beyond the pool size
    oubli_dependency_up{dependency}    gauge: 1 when the last readiness probe reached
                                       the database / the KMS, else 0
    oubli_ready                        gauge: 1 when health says SERVING (fence passed,
                                       both dependencies reachable)

and, from the database (oubli serve):

    oubli_key_oldest_age_seconds{kind}  gauge: age of the oldest live key of each kind
                                       (subjects, buckets, deks, index, signing)
    oubli_key_cryptoperiod_seconds{kind} gauge: the configured cryptoperiod of the kind

With worker processes (``oubli serve --workers N``, vault/app/workers.py) the process
started serves the endpoint: each worker's figures above, read from the worker when
scraped, with a ``worker`` label (0..N-1), and:

    oubli_worker_pid{worker}           gauge: the worker's process id
    oubli_worker_up{worker}            gauge: 1 when the worker's figures were read
                                       in this scrape, else 0

Labels carry only the KMS backend's name (``local-keystore``, ``vault-transit``, ...),
the fixed state, reason, kind, operation and dependency names above, oubli's own RPC
names (``oubli.v1.SubjectService/CreateSubject``; only methods the server defines reach
the hook) and gRPC status code names: never a subject id, key id, caller, field name or
value.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from kms.base import KeyManager
from kms.guard import LATENCY_BUCKETS, BreakerState, GuardedKeyManager
from vault.app.readiness import Readiness
from vault.clock import Clock, utc_now
from vault.crypto.keycache import DataKeyCache
from vault.errors import OubliError
from vault.storage.base import PoolStatus
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
    durations = HistogramMetricFamily(
        "oubli_kms_call_duration_seconds",
        "Time of each KMS call that reached the backend, by operation (refusals of the "
        "guard are not timed).",
        labels=["operation"],
    )
    for operation, latencies in sorted(status.latencies.items()):
        cumulative, buckets = 0, []
        for bound, count in zip(LATENCY_BUCKETS, latencies.counts, strict=True):
            cumulative += count
            buckets.append((str(bound), cumulative))
        buckets.append(("+Inf", latencies.count))
        durations.add_metric([operation], buckets, latencies.total_seconds)
    yield durations
    errors = CounterMetricFamily(
        "oubli_kms_errors",
        "KMS calls that reached the backend and failed, by kind (unavailable: unreachable "
        "or timed out; refused: access denied; destroyed: the key is gone; other).",
        labels=["kind"],
    )
    for kind, count in sorted(status.errors.items()):
        errors.add_metric([kind], count)
    yield errors


#: Upper bounds, in seconds, of the RPC duration histogram's buckets.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RpcMetrics:
    """RPC durations and status codes, fed by the interceptor's hook
    (:meth:`observe`) and registered in the server's registry."""

    def __init__(self) -> None:
        self.duration = Histogram(
            "oubli_rpc_duration_seconds",
            "Time of each oubli RPC, from the interceptor's start to its status.",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=None,
        )
        self.handled = Counter(
            "oubli_rpcs",
            "oubli RPCs answered, by method and gRPC status code.",
            ["method", "code"],
            registry=None,
        )

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """``method`` is grpc's full name (``/oubli.v1.SubjectService/CreateSubject``)
        of a method the server defines: its set is fixed."""
        name = method.lstrip("/")
        self.duration.labels(name).observe(seconds)
        self.handled.labels(name, code.name).inc()

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self.duration)
        registry.register(self.handled)


class PoolCollector(Collector):
    """The database connection pool's use, read per scrape (no round trip)."""

    def __init__(self, pool_status: Callable[[], PoolStatus | None]) -> None:
        self._pool_status = pool_status

    def collect(self) -> Iterable[Metric]:
        status = self._pool_status()
        if status is None:  # a pool without counts (in-memory SQLite)
            return
        yield GaugeMetricFamily(
            "oubli_db_pool_size", "Connections the database pool keeps open.", value=status.size
        )
        yield GaugeMetricFamily(
            "oubli_db_pool_checked_out",
            "Database connections in use by transactions now.",
            value=status.checked_out,
        )
        yield GaugeMetricFamily(
            "oubli_db_pool_overflow",
            "Database connections open beyond the pool size now.",
            value=status.overflow,
        )
        yield GaugeMetricFamily(
            "oubli_db_pool_max_overflow",
            "The most database connections allowed beyond the pool size.",
            value=status.max_overflow,
        )


class ReadinessCollector(Collector):
    """Each dependency's state at the readiness probe's last check, and readiness."""

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "oubli_dependency_up",
            "1 when the readiness probe's last check reached the dependency (database, "
            "kms), else 0.",
            labels=["dependency"],
        )
        for dependency, reachable in sorted(self._readiness.dependencies().items()):
            up.add_metric([dependency.value], 1 if reachable else 0)
        yield up
        yield GaugeMetricFamily(
            "oubli_ready",
            "1 when gRPC health says SERVING (restore fence passed, database and KMS "
            "reachable), else 0.",
            value=1 if self._readiness.ready else 0,
        )


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


@dataclass(frozen=True, slots=True)
class WorkerEndpoint:
    """Where one worker process serves its own figures (loopback, a port it picked)."""

    index: int
    pid: int
    metrics_port: int


#: How long a scrape waits for one worker's figures (a busy worker answers late).
WORKER_SCRAPE_SECONDS = 5.0


class WorkersCollector(Collector):
    """The figures of every worker process, read per scrape over loopback HTTP and
    labelled ``worker``; a family every worker reports becomes one family.

    Why not prometheus_client's multiprocess mode: it shares only Counter, Gauge and
    Histogram values (through files in a directory), and most of oubli's figures are
    read live when scraped (DEK cache size, KMS breaker and calls in flight, database
    pool, readiness, the fence), which that mode cannot carry across processes.
    """

    def __init__(self, workers: Callable[[], Sequence[WorkerEndpoint]]) -> None:
        self._workers = workers

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        pids = GaugeMetricFamily("oubli_worker_pid", "The worker's process id.", labels=["worker"])
        up = GaugeMetricFamily(
            "oubli_worker_up",
            "1 when the worker's figures were read in this scrape, else 0.",
            labels=["worker"],
        )
        for worker in self._workers():
            label = str(worker.index)
            pids.add_metric([label], worker.pid)
            try:
                text = _scrape(worker.metrics_port)
            except OSError:  # exited, or too busy to answer in time: no figures
                up.add_metric([label], 0)
                continue
            up.add_metric([label], 1)
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    merged.add_sample(
                        sample.name,
                        {**sample.labels, "worker": label},
                        sample.value,
                        sample.timestamp,
                        sample.exemplar,
                    )
        yield pids
        yield up
        yield from families.values()


def _scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=WORKER_SCRAPE_SECONDS) as response:
        return str(response.read().decode())


def build_registry(
    kms: KeyManager,
    cache: DataKeyCache,
    fence: RestoreFence | None = None,
    gate: ServingGate | None = None,
    key_ages: Callable[[], list[KeyAge]] | None = None,
    clock: Clock = utc_now,
    *,
    rpc: RpcMetrics | None = None,
    pool_status: Callable[[], PoolStatus | None] | None = None,
    readiness: Readiness | None = None,
) -> CollectorRegistry:
    """A registry of its own holding the vault collector and, when given, the restore
    fence's, the key ages', the RPCs', the database pool's and readiness's (nothing
    process-global)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(VaultCollector(kms, cache))
    if fence is not None and gate is not None:
        registry.register(FenceCollector(fence, gate))
    if key_ages is not None:
        registry.register(KeyAgeCollector(key_ages, clock))
    if rpc is not None:
        rpc.register(registry)
    if pool_status is not None:
        registry.register(PoolCollector(pool_status))
    if readiness is not None:
        registry.register(ReadinessCollector(readiness))
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
