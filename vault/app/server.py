"""Server wiring: configuration -> KMS, database, domain, gRPC server.

Registers oubli's services, gRPC health checking and server reflection; with
``metrics_listen`` set, also serves Prometheus metrics over HTTP (vault/app/metrics.py).
Health says SERVING, and the RPCs run, only once the restore fence has passed
(vault/usecases/restore_fence.py); a ledger behind the database refuses the start.
Health also says NOT_SERVING while the database or the KMS cannot be reached
(vault/app/readiness.py); the ``oubli.liveness`` health name says SERVING until the
server stops.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kms.absent import AbsentKeyManager
from kms.base import KeyManager, KmsError
from kms.guard import BreakerState, GuardedKeyManager
from kms.local_keystore import LocalKeystore
from kms.vault_auth import AuthLost, VaultAuth
from kms.vault_transit import VaultTransitKeyManager
from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from vault.access.authentication import Authenticator
from vault.access.caller_policy import CallerPolicy
from vault.access.tokens import TokenRegistry
from vault.api.audit import AuditServicer
from vault.api.interceptor import ServiceInterceptor
from vault.api.key_admin import KeyAdminServicer
from vault.api.lookup import LookupServicer
from vault.api.records import RecordServicer
from vault.api.retention import RetentionServicer
from vault.api.rights import RightsServicer
from vault.api.subjects import SubjectServicer
from vault.api.support import SupportServicer
from vault.app.config import ConfigError, ServerConfig, parse_host_port
from vault.app.metrics import MetricsServer, RpcMetrics, build_registry, start_metrics_server
from vault.app.readiness import LIVENESS_SERVICE, Dependency, Readiness, kms_check
from vault.app.stop_signals import StopSignals
from vault.app.tracing import Tracing, build_tracing, tracer_of
from vault.audit.chain import AuditLog
from vault.audit.recorder import SIGNING_KEY_NAME, AuditRecorder
from vault.audit.signing import SigningKey
from vault.catalog import Catalog
from vault.clock import Clock, utc_now
from vault.crypto.keycache import DataKeyCache
from vault.crypto.record_crypto import RecordCrypto
from vault.errors import FailedPrecondition, Unavailable
from vault.private_files import make_private_dir, tighten, write_private
from vault.storage import Storage, make_engine, migrate, trace_transactions
from vault.storage.bearer_tokens import BearerTokenRepository
from vault.usecases.dek_rotation import DekRotation
from vault.usecases.erasure import Erasure
from vault.usecases.erasure_ledger import ErasureLedger
from vault.usecases.index_rotation import IndexKeyRotation
from vault.usecases.kek_rotation import KekRotation
from vault.usecases.key_rotation import KeyRotation, RotationKind, RotationReport
from vault.usecases.lookup import SubjectFinder
from vault.usecases.receipts import ReceiptSigner
from vault.usecases.restore_fence import FenceRunner, RestoreFence, ServingGate
from vault.usecases.retention import RetentionJob
from vault.usecases.rights import RightsService
from vault.usecases.service import VaultService
from vault.usecases.signing_rotation import SigningKeyRotation
from vault.usecases.support import SupportAccess

log = structlog.get_logger("oubli.server")

SERVICE_NAMES = tuple(service.full_name for service in pb.DESCRIPTOR.services_by_name.values())


def build_kms(config: ServerConfig) -> KeyManager:
    """The configured backend behind the KMS guard (budget, calls in flight, breaker)."""
    backend: KeyManager
    if config.kms == "vault":
        settings = config.vault
        assert settings is not None

        def auth_event(event: str, **fields: object) -> None:
            # Never a credential: methods, ttls, reasons (kms/vault_auth.py).
            lost = event in ("vault_auth_lost", "vault_token_max_ttl", "vault_token_invalid")
            (log.warning if lost else log.info)(event, **fields)

        auth = VaultAuth(settings.auth_method(), on_event=auth_event)
        transit = VaultTransitKeyManager(
            settings.address,
            auth=auth,
            tls=settings.tls,
            namespace=settings.namespace,
            mount_point=settings.mount,
        )
        try:
            transit.ensure_mount(cache_size=settings.cache_size)
        except AuthLost as e:
            transit.close()
            raise Unavailable(f"cannot log in to Vault: {e} ({e.reason})") from e
        except KmsError as e:
            transit.close()
            raise Unavailable(f"cannot prepare the Transit mount: {e}") from e
        auth.start()  # renews in the background: an idle server keeps its token
        backend = transit
    else:
        backend = LocalKeystore(config.resolved_keystore_path)
    return guard_kms(backend, config)


def guard_kms(backend: KeyManager, config: ServerConfig) -> GuardedKeyManager:
    def breaker_changed(state: BreakerState) -> None:
        # An operator's signal: the KMS stopped answering, or answers again.
        log.warning("kms_breaker", state=state.value, backend=backend.backend_name)

    return GuardedKeyManager(
        backend,
        max_call_seconds=config.kms_timeout_seconds,
        max_in_flight=config.resolved_kms_max_in_flight,
        failure_threshold=config.kms_breaker_failures,
        reset_seconds=config.kms_breaker_reset_seconds,
        on_breaker_change=breaker_changed,
    )


def make_local_files_private(config: ServerConfig) -> None:
    """Make what oubli keeps on this machine private before anything opens it.

    The data directory is created 0700 when the embedded database, the default
    keystore or the default erasure ledger lives there. Its existing directory, the
    default keystore and ledger directories, the keystore file and its journals and the
    tokens file lose any group or other permission (logged); one another user owns
    raises ``OpenToOthers``. The database and ledger files get the same treatment in
    ``make_engine``.
    """
    default_keystore = config.kms == "local" and config.keystore_path is None
    default_ledger = not config.ledger_url
    if not config.database_url or default_keystore or default_ledger:
        make_private_dir(config.data_dir)
    owned = [config.resolved_tokens_path]
    if not config.database_url or default_keystore or default_ledger or config.tokens_path is None:
        owned.insert(0, config.data_dir)
    if default_keystore:
        owned.append(config.resolved_keystore_path.parent)
    if default_ledger:
        owned.append(config.data_dir / "ledger")
    if config.kms == "local":
        keystore = config.resolved_keystore_path
        owned += [keystore, Path(f"{keystore}-wal"), Path(f"{keystore}-shm")]
    tighten(owned)


def open_database(config: ServerConfig) -> Storage:
    """The data database, migrated to the newest revision (what oubli keeps on this
    machine made private first: the embedded default's directory is created 0700)."""
    make_local_files_private(config)
    engine = make_engine(config.resolved_database_url)
    migrate(engine)
    return Storage(engine)


def build_vault(config: ServerConfig, clock: Clock = utc_now) -> VaultService:
    """The domain over ``config``'s database and KMS, records sealed through one
    RecordCrypto (its DEK cache sized by the configuration)."""
    storage = open_database(config)
    crypto = RecordCrypto(
        storage,
        build_kms(config),
        cache=DataKeyCache(config.cache_entries, config.cache_ttl_seconds),
        clock=clock,
    )
    ledger = ErasureLedger(
        config.resolved_ledger_url, mirror_dir=config.ledger_mirror_dir, clock=clock
    )
    return VaultService(
        storage,
        crypto,
        Catalog.load(config.catalog_path),
        ledger=ledger,
        tenant=config.tenant,
        clock=clock,
    )


def build_erasure(config: ServerConfig, vault: VaultService) -> Erasure:
    """Erasure over ``vault``'s database, keys and catalog; its receipts count the
    configured KMS backup retention."""
    return Erasure(
        vault.storage,
        vault.crypto,
        vault.catalog,
        ledger=vault.ledger,
        clock=vault.clock,
        kms_backup_retention=timedelta(days=config.kms_backup_retention_days),
    )


def build_key_rotation(config: ServerConfig, vault: VaultService) -> KeyRotation:
    """Every kind of rotation over ``vault``'s database and keys, with the configured
    cryptoperiods and trim delay."""
    signing = SigningKeyRotation(vault.storage, vault.crypto.kms, vault.clock)

    def signing_pass(
        dry_run: bool, force: bool, cryptoperiod: timedelta, _limit: int
    ) -> RotationReport:
        return signing.rotate(dry_run=dry_run, force=force, cryptoperiod=cryptoperiod)

    index = IndexKeyRotation(vault)

    def index_pass(
        dry_run: bool, force: bool, cryptoperiod: timedelta, limit: int
    ) -> RotationReport:
        return index.rotate(dry_run=dry_run, force=force, cryptoperiod=cryptoperiod, limit=limit)

    return KeyRotation(
        keks=KekRotation(
            vault.storage, vault.crypto, trim_after=config.key_trim_after, clock=vault.clock
        ),
        deks=DekRotation(vault.storage, vault.rekeying),
        service_keys={RotationKind.SIGNING: signing_pass, RotationKind.INDEX: index_pass},
        periods=config.cryptoperiods,
        clock=vault.clock,
    )


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    vault: VaultService
    health: health.HealthServicer
    audit: AuditRecorder
    #: The restore fence's periodic passes, and the gate they open.
    fence: FenceRunner
    #: The Prometheus endpoint, when ``metrics_listen`` is set.
    metrics: MetricsServer | None = None
    #: The database and KMS probes behind health.
    readiness: Readiness | None = None
    #: OpenTelemetry tracing, when on (vault/app/tracing.py); flushed at stop.
    tracing: Tracing | None = None

    def stop(self, grace: float = 5.0) -> None:
        """Drain, then release: health says NOT_SERVING and new calls are refused
        (UNAVAILABLE) at once; calls in flight have ``grace`` seconds to finish, then
        are cancelled; then the metrics endpoint, the checkpoint thread, the KMS client
        and the database pools are closed."""
        self.health.enter_graceful_shutdown()  # NOT_SERVING, sent to every Watch too
        if self.readiness is not None:
            self.readiness.stop()  # its probes publish nothing more
        drained = self.server.stop(grace)  # refuses new calls from now on
        _end_health_watches(self.health)
        self.fence.stop()
        drained.wait()
        if self.metrics is not None:
            self.metrics.stop()
        self.audit.stop()
        self.vault.crypto.kms.close()
        self.vault.storage.engine.dispose()
        self.vault.ledger.close()
        if self.tracing is not None:
            self.tracing.shutdown()


def _end_health_watches(servicer: health.HealthServicer) -> None:
    """End every health Watch stream (status OK, after the NOT_SERVING it was sent):
    left open, a load balancer's Watch would hold the drain until the grace period runs
    out. grpc's HealthServicer keeps its watchers' callbacks in a private dict; without
    it (another grpc version), the watches end with the grace period instead."""
    callbacks = getattr(servicer, "_send_response_callbacks", None)
    lock = getattr(servicer, "_lock", None)
    if not isinstance(callbacks, dict) or lock is None:
        return
    with lock:
        ending = [callback for watchers in callbacks.values() for callback in watchers]
    for callback in ending:
        callback(None)


def token_registry(config: ServerConfig, clock: Clock = utc_now) -> TokenRegistry:
    """The bearer tokens of ``config``'s database, for the ``oubli token`` commands.

    No KMS: the commands only append to the audit trail, and revoking a token must not
    wait for the KMS (nor need its credentials).
    """
    storage = open_database(config)
    audit = AuditLog(storage, AbsentKeyManager(), clock, "")
    return TokenRegistry(BearerTokenRepository(storage.engine), audit, clock)


def signing_public_keys(config: ServerConfig) -> tuple[str, dict[int, bytes]]:
    """The KMS signing key's id and the raw Ed25519 public key of each of its versions,
    for ``oubli keys public``: the key that signs shred receipts, audit checkpoints and
    erasure ledger heads. The id is read from the database (chosen there by the first
    server); nothing is created.

    Raises:
        FailedPrecondition: no server has chosen the key yet (SIGNING_KEY_NOT_CHOSEN),
            or the KMS does not hold it.
        Unavailable: the database or the KMS could not be reached.
    """
    storage = open_database(config)
    try:
        found = storage.service_key(SIGNING_KEY_NAME)
        if found is None:
            raise FailedPrecondition(
                "SIGNING_KEY_NOT_CHOSEN",
                "this database has no signing key yet: start `oubli serve` on it once",
            )
        kms = build_kms(config)
        try:
            return found.key_id, SigningKey(kms, found.key_id).public_keys()
        finally:
            kms.close()
    finally:
        storage.engine.dispose()


def build_auth(
    config: ServerConfig, storage: Storage, audit: AuditLog, clock: Clock = utc_now
) -> tuple[Authenticator, CallerPolicy]:
    """The caller policy, and an Authenticator over the database's token table, into
    which the tokens file (pre-0007 hashes), if there is one, is imported first."""
    policy = CallerPolicy.load(config.callers_path)
    registry = TokenRegistry(BearerTokenRepository(storage.engine), audit, clock)
    try:
        registry.import_file(config.resolved_tokens_path)
    except (OSError, ValueError) as e:  # TOMLDecodeError is a ValueError
        raise ConfigError(f"cannot read the tokens file: {type(e).__name__}") from e
    return Authenticator(mtls=config.tls_client_ca is not None, registry=registry), policy


def start_server(
    config: ServerConfig,
    vault: VaultService | None = None,
    clock: Clock = utc_now,
    auth: tuple[Authenticator, CallerPolicy] | None = None,
    audit: AuditRecorder | None = None,
    *,
    reuse_port: bool = False,
    tracing: Tracing | None = None,
) -> RunningServer:
    """Build and start the gRPC server for ``config``.

    The listening port is this server's alone: a port another process listens on is
    refused (``Unavailable``) rather than shared. ``reuse_port=True`` (SO_REUSEPORT) is
    for several worker processes of one server, on one database, that deliberately
    share the port; the kernel then spreads connections among them. It cannot join a
    port an exclusive server holds.
    """
    vault = vault or build_vault(config, clock)
    audit = audit or AuditRecorder.build(
        vault.storage,
        vault.crypto.kms,
        vault.clock,
        vault.catalog,
        timedelta(seconds=config.audit_full_verify_seconds),
    )
    authenticator, policy = auth or build_auth(config, vault.storage, audit.audit, clock)
    erasure = build_erasure(config, vault)
    signing_key = SigningKey(vault.crypto.kms, audit.audit.signing_key_id)
    fence = RestoreFence(
        erasure, accept_ledger_behind=config.accept_ledger_behind, signing_key=signing_key
    )
    fence.check_positions()  # a ledger behind the database refuses the start
    gate = ServingGate()
    rpc_metrics = RpcMetrics() if config.metrics_address is not None else None
    # Tracing (off unless configured; ``tracing`` given: tests' in-memory exporter).
    tracing = tracing or build_tracing(config.tracing)
    tracer = tracer_of(tracing)
    if tracer is not None:
        trace_transactions(vault.storage.engine, tracer)
        if isinstance(vault.crypto.kms, GuardedKeyManager):
            vault.crypto.kms.tracer = tracer
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers),
        interceptors=[
            ServiceInterceptor(
                authenticator,
                policy,
                audit,
                gate,
                observe=rpc_metrics.observe if rpc_metrics is not None else None,
                tracer=tracer,
            )
        ],
        options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            # grpc turns SO_REUSEPORT on by default: a second server on the same port
            # would then start without a word and take half the connections.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    pb_grpc.add_SubjectServiceServicer_to_server(
        SubjectServicer(vault, erasure, clock, ReceiptSigner(signing_key)), server
    )
    pb_grpc.add_RecordServiceServicer_to_server(RecordServicer(vault), server)
    pb_grpc.add_RightsServiceServicer_to_server(
        RightsServicer(RightsService(vault), audit.audit), server
    )
    pb_grpc.add_RetentionServiceServicer_to_server(RetentionServicer(RetentionJob(erasure)), server)
    pb_grpc.add_AuditServiceServicer_to_server(AuditServicer(audit.audit), server)
    pb_grpc.add_LookupServiceServicer_to_server(LookupServicer(SubjectFinder(vault)), server)
    pb_grpc.add_SupportServiceServicer_to_server(SupportServicer(SupportAccess(vault)), server)
    rotation = build_key_rotation(config, vault)
    pb_grpc.add_KeyAdminServiceServicer_to_server(KeyAdminServicer(rotation), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def serving(ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            health_servicer.set(name, status)

    serving(False)
    health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    # SERVING only with the fence passed and the database and KMS answering.
    signing_key_id = audit.audit.signing_key_id
    readiness = Readiness(
        {
            Dependency.DATABASE: vault.storage.ping,
            Dependency.KMS: kms_check(
                vault.crypto.kms, lambda: signing_key_id, config.kms_timeout_seconds
            ),
        },
        serving,
        interval=config.readiness_interval_seconds,
        timeout=config.kms_timeout_seconds,
    )
    readiness.probe_once()
    runner = FenceRunner(fence, gate, config.fence_interval_seconds, readiness.fence)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if config.tls_cert is not None and config.tls_key is not None:
            client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = server.add_secure_port(config.listen, credentials)
        else:
            port = server.add_insecure_port(config.listen)
    except RuntimeError as e:  # grpc raises it when the address is taken or invalid
        raise Unavailable(_cannot_listen(config.listen)) from e
    if port == 0:
        raise Unavailable(_cannot_listen(config.listen))
    metrics = start_metrics(
        config, vault, fence, gate, rotation, rpc=rpc_metrics, readiness=readiness
    )
    audit.start_checkpoints(config.audit_checkpoint_seconds, config.audit_seal_seconds)
    # The first pass before the port answers: a fence that can finish (the KMS is up)
    # opens the gate before any call arrives; one that cannot keeps it closed, and the
    # runner tries again while health says NOT_SERVING.
    runner.start(passed=runner.pass_once())
    readiness.start()
    server.start()
    return RunningServer(
        server, port, vault, health_servicer, audit, runner, metrics, readiness, tracing
    )


def _cannot_listen(listen: str) -> str:
    """Why ``listen`` could not be bound, as far as a plain bind can tell (grpc says
    only that it failed)."""
    return listen_refusal(listen) or f"cannot listen on {listen}"


def listen_refusal(listen: str) -> str | None:
    """Why a plain bind of ``listen`` (SO_REUSEADDR, as grpc sets, never SO_REUSEPORT)
    fails, or None when it succeeds: so a port any other socket listens on, whether
    or not that one allows sharing it, is found taken."""
    try:
        host, port = parse_host_port(listen, "--listen")
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (ConfigError, OSError):
        return f"cannot listen on {listen}: not a host:port this machine can resolve"
    reason = None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return (
                        f"cannot listen on {listen}: the port is in use (another oubli "
                        "server, or another program, listens there)"
                    )
                reason = reason or f"cannot listen on {listen}: {e.strerror}"
    return reason


def start_metrics(
    config: ServerConfig,
    vault: VaultService,
    fence: RestoreFence,
    gate: ServingGate,
    rotation: KeyRotation | None = None,
    *,
    rpc: RpcMetrics | None = None,
    readiness: Readiness | None = None,
) -> MetricsServer | None:
    """The Prometheus endpoint for ``vault``, its restore fence, RPCs, database pool
    and readiness, or None when ``metrics_listen`` is empty."""
    address = config.metrics_address
    if address is None:
        return None
    try:
        registry = build_registry(
            vault.crypto.kms,
            vault.crypto.cache,
            fence,
            gate,
            key_ages=rotation.ages if rotation is not None else None,
            clock=vault.clock,
            rpc=rpc,
            pool_status=vault.storage.pool_status,
            readiness=readiness,
        )
        return start_metrics_server(registry, *address)
    except OSError as e:  # taken, not a local address, or a host name that does not resolve
        raise Unavailable(f"cannot listen on {config.metrics_listen} for metrics") from e


def log_serving(running: RunningServer) -> None:
    """The ``serving`` log line: where the server listens and on what it runs."""
    log.info(
        "serving",
        port=running.port,
        kms=running.vault.crypto.kms.backend_name,
        database=running.vault.storage.engine.dialect.name,
        pid=os.getpid(),
        **({"metrics_port": running.metrics.port} if running.metrics else {}),
    )


def serve(config: ServerConfig, ready_file: Path | None = None) -> int:
    """Run until SIGINT/SIGTERM, then drain in-flight calls and stop; the exit code.

    With ``config.workers`` > 1 this process supervises that many server processes on
    the one port instead (vault/app/workers.py).
    """
    if config.workers > 1:
        from vault.app.workers import serve_workers

        return serve_workers(config, ready_file)
    running = start_server(config)
    log_serving(running)

    def ready() -> None:
        if ready_file is not None:
            write_private(ready_file, str(running.port).encode())

    serve_until_stopped(running, config.drain_seconds, ready)
    return 0


def serve_until_stopped(
    running: RunningServer, drain_seconds: float, ready: Callable[[], None]
) -> None:
    """Tell ``ready`` (the stop signals are caught by then), wait for SIGINT/SIGTERM,
    then drain ``running`` for up to ``drain_seconds``."""
    with StopSignals() as stop:
        ready()
        received = stop.wait()
    log.info("draining", signal=received.name, drain_seconds=drain_seconds)
    started = time.monotonic()
    running.stop(drain_seconds)
    log.info("stopped", seconds=round(time.monotonic() - started, 3))
