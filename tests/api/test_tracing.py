"""OpenTelemetry tracing: RPC -> database and RPC -> KMS span trees from a real in-process
server, no personal data or ids in any span, and nothing traced (or imported) when off."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from kms.guard import GuardedKeyManager
from oubli_client import OubliClient
from tests.memory_kms import InMemoryKeyManager
from tests.stack import TEST_TOKEN, suite_auth, vault_service
from vault.app.config import ConfigError, ServerConfig
from vault.app.server import RunningServer, start_server
from vault.app.tracing import Tracing, build_tracing
from vault.storage import Storage, make_engine, migrate

CANARY_EMAIL = "canary-tracing@example.org"


@dataclass
class TracedStack:
    server: RunningServer
    client: OubliClient
    exporter: InMemorySpanExporter


@pytest.fixture
def traced(database_url: str) -> Iterator[TracedStack]:
    """The real gRPC server in process, on SQLite and on PostgreSQL, its KMS guarded, its
    spans kept in memory."""
    engine = make_engine(database_url)
    migrate(engine)
    vault = vault_service(Storage(engine), GuardedKeyManager(InMemoryKeyManager()))
    exporter = InMemorySpanExporter()
    config = ServerConfig(
        listen="127.0.0.1:0", audit_checkpoint_seconds=3600, readiness_interval_seconds=3600
    )
    server = start_server(
        config,
        vault=vault,
        auth=suite_auth(),
        tracing=Tracing.with_exporter(exporter, batch=False),
    )
    client = OubliClient(f"127.0.0.1:{server.port}", timeout=10, token=TEST_TOKEN)
    yield TracedStack(server, client, exporter)
    client.close()
    server.stop(grace=0)


def rpc_spans(spans: tuple[ReadableSpan, ...], method: str) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is SpanKind.SERVER and s.name.endswith("/" + method)]


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [
        s
        for s in spans
        if s.parent is not None
        and s.parent.span_id == parent.context.span_id
        and s.context is not None
        and s.context.trace_id == parent.context.trace_id
    ]


def test_rpcs_are_traces_of_database_and_kms_spans_without_personal_data(
    traced: TracedStack,
) -> None:
    client = traced.client
    traced.exporter.clear()  # start-up work (outside any RPC) is not traced anyway
    subject = client.create_subject()
    record = client.create_record(subject.subject_id, "contact", {"email": CANARY_EMAIL})
    # A cold read: its DEK unwrapped by the KMS within the RPC.
    traced.server.vault.crypto.cache.evict(
        traced.server.vault.subject_info(subject.subject_id).key_id
    )
    assert client.get_record(subject.subject_id, record.record_id, "service").fields == {
        "email": CANARY_EMAIL
    }
    key_id = traced.server.vault.subject_info(subject.subject_id).key_id
    assert CANARY_EMAIL.encode() in b"".join(client.stream_export(subject.subject_id))
    client.shred_subject(subject.subject_id)
    spans = traced.exporter.get_finished_spans()

    create = rpc_spans(spans, "CreateSubject")
    assert len(create) == 1
    assert create[0].name == "oubli.v1.SubjectService/CreateSubject"
    assert create[0].parent is None  # a root: each RPC its own trace
    attributes = dict(create[0].attributes or {})
    assert attributes == {
        "rpc.system": "grpc",
        "rpc.service": "oubli.v1.SubjectService",
        "rpc.method": "CreateSubject",
        "rpc.grpc.status_code": 0,
        "oubli.caller": attributes["oubli.caller"],
    }
    assert attributes["oubli.caller"]  # the suite caller's name
    # RPC -> KMS: the subject's key created and a DEK generated, under the RPC's span.
    kms = {s.name for s in children(spans, create[0]) if s.name.startswith("kms.")}
    assert {"kms.create_key", "kms.generate_data_key"} <= kms
    # RPC -> DB: its transactions (the audit append, the subject row) under it too.
    db = [s for s in children(spans, create[0]) if s.name == "db.transaction"]
    assert db
    dialect = traced.server.vault.storage.engine.dialect.name  # sqlite, postgresql
    assert all(dict(s.attributes or {}) == {"db.system": dialect, **_outcome(s)} for s in db)

    (read,) = rpc_spans(spans, "GetRecord")
    unwraps = [s for s in children(spans, read) if s.name == "kms.unwrap"]
    assert len(unwraps) == 1
    assert dict(unwraps[0].attributes or {}) == {
        "oubli.kms.backend": "memory",
        "oubli.kms.outcome": "ok",
    }
    assert any(s.name == "db.transaction" for s in children(spans, read))

    (store,) = rpc_spans(spans, "CreateRecord")
    assert any(s.name == "db.transaction" for s in children(spans, store))
    (export,) = rpc_spans(spans, "StreamExport")  # a server stream: one span too
    assert (export.attributes or {})["rpc.grpc.status_code"] == 0
    assert any(s.name == "db.transaction" for s in children(spans, export))
    (shred,) = rpc_spans(spans, "ShredSubject")
    assert "kms.destroy_key" in {s.name for s in children(spans, shred)}
    assert any(s.name == "db.transaction" for s in children(spans, shred))

    # Nothing personal, no id, in any span's name, attributes, events or resource.
    text = json.dumps([json.loads(s.to_json()) for s in spans])
    for secret in (CANARY_EMAIL, "canary-tracing", subject.subject_id, record.record_id, key_id):
        assert secret not in text
    assert all(not s.events for s in spans)  # no exceptions recorded (their text)


def _outcome(span: ReadableSpan) -> dict[str, str]:
    outcome = (span.attributes or {}).get("oubli.db.outcome")
    assert outcome in ("commit", "rollback")
    return {"oubli.db.outcome": str(outcome)}


def test_a_failed_rpc_is_an_error_span_with_its_code_only(traced: TracedStack) -> None:
    traced.exporter.clear()
    with pytest.raises(Exception):  # the client's error for a bad id
        traced.client.get_subject(CANARY_EMAIL)
    (span,) = rpc_spans(traced.exporter.get_finished_spans(), "GetSubject")
    assert (span.attributes or {})["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is None  # no error text
    assert not span.events
    assert "canary-tracing" not in span.to_json()


def test_tracing_is_off_by_default_and_checked() -> None:
    assert ServerConfig().tracing == "off"
    assert build_tracing("off") is None
    assert ServerConfig.from_env({"OUBLI_TRACING": "console"}).tracing == "console"
    with pytest.raises(ConfigError, match="tracing must be"):
        ServerConfig.from_env({"OUBLI_TRACING": "jaeger"})
    otlp = build_tracing("otlp")  # the exporter is built; nothing is sent until a span ends
    assert otlp is not None
    otlp.shutdown()


def test_off_the_server_runs_without_importing_opentelemetry(sqlite_url: str) -> None:
    """A server with tracing off serves calls in a process where OpenTelemetry cannot be
    imported at all."""
    script = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError("opentelemetry is not installed")
        return None
sys.meta_path.insert(0, Refuse())
from oubli_client import OubliClient
from tests.memory_kms import InMemoryKeyManager
from tests.stack import TEST_TOKEN, suite_auth, vault_service
from kms.guard import GuardedKeyManager
from vault.app.config import ServerConfig
from vault.app.server import start_server
from vault.storage import Storage, make_engine, migrate
engine = make_engine({sqlite_url!r})
migrate(engine)
vault = vault_service(Storage(engine), GuardedKeyManager(InMemoryKeyManager()))
server = start_server(ServerConfig(listen="127.0.0.1:0"), vault=vault, auth=suite_auth())
client = OubliClient(f"127.0.0.1:{{server.port}}", timeout=10, token=TEST_TOKEN)
subject = client.create_subject()
client.create_record(subject.subject_id, "contact", {{"city": "Paris"}})
client.shred_subject(subject.subject_id)
client.close()
server.stop(grace=0)
assert not [m for m in sys.modules if m.startswith("opentelemetry")]
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
