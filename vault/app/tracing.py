"""Optional OpenTelemetry tracing: RPC -> database transaction and RPC -> KMS call spans.

Off unless ``tracing`` (``OUBLI_TRACING``) is ``console`` or ``otlp``. Off, nothing of
OpenTelemetry is imported (it is the optional extra ``oubli[tracing]``): the hooks hold
``None`` and cost one attribute test. On, this module builds a TracerProvider of its own
(never the process-global one, so in-process tests each get theirs) and hands its tracer
to the three hooks:

- the interceptor (vault/api/interceptor.py): one SERVER span per RPC, named for the
  gRPC method; attributes ``rpc.system``, ``rpc.method``, ``rpc.grpc.status_code``,
  ``oubli.caller``;
- the engine (:func:`vault.storage.engine.trace_transactions`): one ``db.transaction``
  span per transaction; attribute ``db.system`` (the dialect) only;
- the KMS guard (kms/guard.py): one ``kms.<operation>`` span per backend call;
  attributes ``oubli.kms.backend`` and ``oubli.kms.outcome``.

No span carries a subject id, record id, key id, field name or value, SQL text or
parameter, request or response body, or exception text (exceptions are not recorded:
their messages may quote a value). ``otlp`` exports over OTLP/HTTP to the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, headers…, read
by the exporter); ``OTEL_SERVICE_NAME`` overrides the service name ``oubli``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vault.app.config import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

#: The instrumentation scope's name.
SCOPE = "oubli"
EXTRA_HINT = "install oubli with its tracing extra: pip install 'oubli[tracing]'"


@dataclass(frozen=True, slots=True)
class Tracing:
    """A tracer and the provider that exports its spans (flushed by :meth:`shutdown`)."""

    provider: TracerProvider
    tracer: Tracer

    @classmethod
    def with_exporter(cls, exporter: SpanExporter, *, batch: bool = True) -> Tracing:
        """A provider exporting to ``exporter``: batched (off the RPC's thread), or one
        span at a time (``batch=False``, what tests with an in-memory exporter want)."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        # Resource.create reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES.
        provider = TracerProvider(resource=Resource.create({"service.name": SCOPE}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        return cls(provider, provider.get_tracer(SCOPE))

    def shutdown(self) -> None:
        """Export what is pending and stop the exporter."""
        self.provider.shutdown()


def build_tracing(mode: str) -> Tracing | None:
    """The tracing of ``mode`` (ServerConfig.tracing): None when off."""
    if mode == "off":
        return None
    try:
        if mode == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return Tracing.with_exporter(ConsoleSpanExporter())
        if mode == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return Tracing.with_exporter(OTLPSpanExporter())
    except ImportError:
        raise ConfigError(f"tracing = {mode!r} needs OpenTelemetry: {EXTRA_HINT}") from None
    raise ConfigError("tracing must be 'off', 'console' or 'otlp'")


def tracer_of(tracing: Tracing | None) -> Any:
    """What the hooks take: the tracer, or None when tracing is off."""
    return None if tracing is None else tracing.tracer
