"""Who may touch what: every RPC x every default caller, tokens and mTLS."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from oubli_client import OubliClient
from oubli_client.errors import OubliClientError, PermissionDenied, Unavailable
from oubli_client.v1 import vault_pb2 as pb
from tests.memory_kms import InMemoryKeyManager
from tests.stack import vault_service
from vault.access.authentication import Authenticator, token_hash
from vault.access.caller_policy import CallerPolicy, rpc_name
from vault.app.config import ServerConfig
from vault.app.server import RunningServer, start_server
from vault.storage import Storage, make_engine, migrate
from vault.usecases.service import VaultService

POLICY = CallerPolicy.load()
CALLERS = sorted(POLICY.callers)
TOKENS = {caller: f"token-of-{caller}" for caller in CALLERS}
RPCS = sorted(
    (service.full_name, method.name, method.server_streaming)
    for service in pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods
)


@dataclass
class Served:
    server: RunningServer
    vault: VaultService

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


def _vault(url: str) -> VaultService:
    engine = make_engine(url)
    migrate(engine)
    return vault_service(Storage(engine), InMemoryKeyManager())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    url = f"sqlite:///{tmp_path_factory.mktemp('authz') / 'oubli.db'}"
    vault = _vault(url)
    auth = Authenticator({token_hash(t): c for c, t in TOKENS.items()}), POLICY
    server = start_server(ServerConfig(listen="127.0.0.1:0"), vault=vault, auth=auth)
    yield Served(server, vault)
    server.stop(grace=0)


def _request(method: grpc.ServicerContext, subject_id: str, record_id: str) -> bytes:
    """A well-formed request for any RPC: authorization is decided before the domain."""
    descriptor = pb.DESCRIPTOR.services_by_name[method[0].rsplit(".", 1)[1]].methods_by_name[
        method[1]
    ]
    message = getattr(pb, descriptor.input_type.name)()
    values = {
        "subject_id": subject_id,
        "record_id": record_id,
        "purpose": "access",
        "category": "contact",
        "consent": "marketing",
        "kind": "access",
        "event": "resolved",
        "dry_run": True,
    }
    for name, value in values.items():
        if name in message.DESCRIPTOR.fields_by_name:
            with contextlib.suppress(TypeError, ValueError):  # e.g. an enum named "kind"
                setattr(message, name, value)
    if "fields" in message.DESCRIPTOR.fields_by_name:
        message.fields["email"] = "matrix@example.org"
    return message.SerializeToString()


def _call(
    target: str, rpc: tuple[str, str, bool], payload: bytes, token: str | None
) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    path = f"/{rpc[0]}/{rpc[1]}"
    with grpc.insecure_channel(target) as channel:
        try:
            if rpc[2]:
                for _ in channel.unary_stream(path)(payload, timeout=10, metadata=metadata):
                    pass
            else:
                channel.unary_unary(path)(payload, timeout=10, metadata=metadata)
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _outcome(
    target: str, rpc: tuple[str, str, bool], payload: bytes, token: str
) -> tuple[str, str]:
    """The call's status code and its ErrorInfo reason ("" when there is none)."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    path = f"/{rpc[0]}/{rpc[1]}"
    with grpc.insecure_channel(target) as channel:
        try:
            call = channel.unary_stream if rpc[2] else channel.unary_unary
            result = call(path)(
                payload, timeout=10, metadata=(("authorization", f"Bearer {token}"),)
            )
            if rpc[2]:
                list(result)
        except grpc.RpcError as e:
            status = rpc_status.from_call(e)  # type: ignore[arg-type]
            for detail in status.details if status else []:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return e.code().name, info.reason
            return e.code().name, ""
    return "OK", ""


#: What an allowed call may answer to the matrix's one-size-fits-all request: success,
#: or a refusal by the domain after authorization let it through. Anything else (an
#: INTERNAL, UNKNOWN or UNIMPLEMENTED, or a caller-policy refusal) fails the matrix.
ALLOWED_OUTCOMES = {
    ("OK", ""),
    ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),  # the request lacks what this RPC needs
    ("FAILED_PRECONDITION", "NOT_OBJECTABLE"),  # "access" is not an objectable purpose
    ("FAILED_PRECONDITION", "ACCOUNT_NOT_CLOSED"),  # reopening an open account
    ("PERMISSION_DENIED", "PURPOSE_NOT_ALLOWED_FOR_CALLER"),  # billing reading for "access"
}


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: f"{r[0].rsplit('.', 1)[1]}.{r[1]}")
def test_every_rpc_refuses_calls_without_credentials(
    served: Served, rpc: tuple[str, str, bool]
) -> None:
    subject = served.vault.create_subject()
    payload = _request(rpc, subject.subject_id, "b" * 26)  # type: ignore[arg-type]
    assert _call(served.target, rpc, payload, None) == grpc.StatusCode.UNAUTHENTICATED
    assert _call(served.target, rpc, payload, "not-a-token") == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: f"{r[0].rsplit('.', 1)[1]}.{r[1]}")
def test_caller_rpc_matrix(served: Served, rpc: tuple[str, str, bool], caller: str) -> None:
    subject = served.vault.create_subject()
    record = served.vault.create_record(subject.subject_id, "contact", {"email": "m@x.y"}, "c")
    payload = _request(rpc, subject.subject_id, record.record_id)  # type: ignore[arg-type]
    service, method = rpc_name(f"/{rpc[0]}/{rpc[1]}")
    code, reason = _outcome(served.target, rpc, payload, TOKENS[caller])
    if POLICY.callers[caller].may_call(service, method):
        assert code not in ("INTERNAL", "UNKNOWN", "UNIMPLEMENTED", "UNAUTHENTICATED")
        assert reason not in ("RPC_NOT_ALLOWED", "UNKNOWN_CALLER")
        assert (code, reason) in ALLOWED_OUTCOMES
    else:
        assert (code, reason) == ("PERMISSION_DENIED", "RPC_NOT_ALLOWED")


def test_billing_reads_only_its_categories_and_purposes(served: Served) -> None:
    subject = served.vault.create_subject()
    usage = served.vault.create_record(subject.subject_id, "usage", {"page": "/"}, "web")
    contact = served.vault.create_record(subject.subject_id, "contact", {"email": "b@x.y"}, "c")
    with OubliClient(served.target, token=TOKENS["billing"]) as billing:
        assert billing.get_record(subject.subject_id, contact.record_id, "billing").fields
        with pytest.raises(PermissionDenied) as category:
            billing.get_record(subject.subject_id, usage.record_id, "billing")
        assert category.value.reason == "CATEGORY_NOT_ALLOWED_FOR_CALLER"
        with pytest.raises(PermissionDenied) as purpose:
            billing.get_record(subject.subject_id, contact.record_id, "marketing")
        assert purpose.value.reason == "PURPOSE_NOT_ALLOWED_FOR_CALLER"
        listed = billing.list_records(subject.subject_id, purpose="billing")
        assert {r.category for r in listed} == {"contact"}  # usage filtered out
        with pytest.raises(PermissionDenied):
            billing.create_record(subject.subject_id, "usage", {"page": "/"}, "billing")


# --- TLS and mTLS -------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Pki:
    ca: bytes
    server_cert: Path
    server_key: Path
    ca_path: Path
    clients: dict[str, tuple[bytes, bytes]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA made by the suite, a server certificate and client certificates."""
    root = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("oubli test CA", ca_key, None, None, ca=True)
    server_key = _key()
    server = _cert("localhost", server_key, ca, ca_key)
    (root / "ca.pem").write_bytes(_pem(ca))
    (root / "server.pem").write_bytes(_pem(server))
    (root / "server.key").write_bytes(_pem(server_key))
    clients = {}
    for name in ("billing", "stranger"):
        key = _key()
        clients[name] = (_pem(_cert(name, key, ca, ca_key)), _pem(key))
    rogue_key = _key()
    rogue_ca = _cert("rogue CA", rogue_key, None, None, ca=True)
    other = _key()
    clients["rogue"] = (_pem(_cert("billing", other, rogue_ca, rogue_key)), _pem(other))
    return Pki(_pem(ca), root / "server.pem", root / "server.key", root / "ca.pem", clients)


def _tls_server(tmp_path: Path, pki: Pki, *, mtls: bool) -> tuple[RunningServer, VaultService]:
    vault = _vault(f"sqlite:///{tmp_path / 'tls.db'}")
    config = ServerConfig(
        listen="127.0.0.1:0",
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_path if mtls else None,
    )
    auth = Authenticator({token_hash(TOKENS["billing"]): "billing"}, mtls=mtls), POLICY
    return start_server(config, vault=vault, auth=auth), vault


def test_mtls_names_the_caller_from_its_certificate(tmp_path: Path, pki: Pki) -> None:
    server, vault = _tls_server(tmp_path, pki, mtls=True)
    try:
        target = f"localhost:{server.port}"
        subject = vault.create_subject()
        cert, key = pki.clients["billing"]
        with OubliClient(target, root_certificates=pki.ca, client_cert=cert, client_key=key) as c:
            assert c.get_subject(subject.subject_id).state == "active"
            with pytest.raises(PermissionDenied) as refused:
                c.export_subject(subject.subject_id)  # billing may not export
            assert refused.value.reason == "RPC_NOT_ALLOWED"
        cert, key = pki.clients["stranger"]  # valid certificate, no policy
        with OubliClient(target, root_certificates=pki.ca, client_cert=cert, client_key=key) as c:
            with pytest.raises(PermissionDenied) as unknown:
                c.get_subject(subject.subject_id)
            assert unknown.value.reason == "UNKNOWN_CALLER"
        # A certificate from another CA, or none at all, does not even get a TLS session:
        # the handshake is refused, so the call never reaches the server's code.
        for cert, key in (pki.clients["rogue"], (None, None)):
            client = OubliClient(
                target,
                root_certificates=pki.ca,
                client_cert=cert,
                client_key=key,
                max_attempts=1,
                timeout=5,
            )
            with client as c, pytest.raises(Unavailable) as refused:
                c.get_subject(subject.subject_id)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert refused.value.reason == ""  # the transport's error, not the server's
    finally:
        server.stop(grace=0)


def test_tls_without_client_certificates_serves_tls13_and_takes_tokens(
    tmp_path: Path, pki: Pki
) -> None:
    server, vault = _tls_server(tmp_path, pki, mtls=False)
    try:
        subject = vault.create_subject()
        target = f"localhost:{server.port}"
        with OubliClient(target, root_certificates=pki.ca, token=TOKENS["billing"]) as c:
            assert c.get_subject(subject.subject_id).state == "active"
        with OubliClient(target, root_certificates=pki.ca, max_attempts=1) as c:
            with pytest.raises(OubliClientError) as refused:
                c.get_subject(subject.subject_id)
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        context = ssl.create_default_context(cadata=pki.ca.decode())
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.version() == "TLSv1.3"
    finally:
        server.stop(grace=0)


def test_refused_calls_are_audited_under_the_callers_name_unauthenticated_ones_not(
    served: Served,
) -> None:
    subject = served.vault.create_subject()
    audit = served.server.audit.audit
    with (
        OubliClient(served.target, token=TOKENS["billing"], max_attempts=1) as billing,
        pytest.raises(PermissionDenied),
    ):
        billing.export_subject(subject.subject_id)
    last = audit.query(subject_id=subject.subject_id)[-1].event
    assert (last.caller, last.action, last.outcome) == (
        "billing",
        "SubjectService.ExportSubject",
        "RPC_NOT_ALLOWED",
    )
    before = len(audit.query(limit=1000))
    rpc = ("oubli.v1.SubjectService", "GetSubject", False)
    for _ in range(3):
        payload = _request(rpc, subject.subject_id, "b" * 26)  # type: ignore[arg-type]
        assert _call(served.target, rpc, payload, None) == grpc.StatusCode.UNAUTHENTICATED
    assert len(audit.query(limit=1000)) == before


def test_a_token_created_while_serving_works_without_restart(tmp_path: Path) -> None:
    """The README's flow: `oubli token create` beside a running server, same data dir."""
    from typer.testing import CliRunner

    from vault.app.cli import app

    config = ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path)
    vault = _vault(config.resolved_database_url)
    server = start_server(config, vault=vault)
    try:
        subject = vault.create_subject()
        created = CliRunner().invoke(app, ["token", "create", "dpo", "--data-dir", str(tmp_path)])
        assert created.exit_code == 0, created.output
        token = created.stdout.strip()
        with OubliClient(f"127.0.0.1:{server.port}", token=token, max_attempts=1) as dpo:
            assert dpo.get_subject(subject.subject_id).state == "active"
    finally:
        server.stop(grace=0)
