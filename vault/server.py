"""Server wiring: configuration -> KMS, database, domain, gRPC server.

Registers oubli's services, gRPC health checking and server reflection; with
``metrics_listen`` set, also serves Prometheus metrics over HTTP (vault/metrics.py).
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clients.oubli_v1 import vault_pb2 as pb
from clients.oubli_v1 import vault_pb2_grpc as pb_grpc
from kms.base import KeyManager, KmsError
from kms.local_keystore import LocalKeystore
from kms.vault_transit import VaultTransitKeyManager
from vault.auditing import AuditRecorder
from vault.auth import Authenticator, TokenStore
from vault.callers import CallerPolicy
from vault.catalog import Catalog
from vault.clock import Clock, utc_now
from vault.config import ConfigError, ServerConfig
from vault.errors import Unavailable
from vault.finder import SubjectFinder
from vault.grpc_api import (
    AuditServicer,
    LookupServicer,
    RecordServicer,
    RetentionServicer,
    RightsServicer,
    SubjectServicer,
    SupportServicer,
)
from vault.interceptors import ServiceInterceptor
from vault.keycache import DataKeyCache
from vault.metrics import MetricsServer, build_registry, start_metrics_server
from vault.retention import RetentionJob
from vault.rights import RightsService
from vault.service import VaultService
from vault.storage import Storage, make_engine, migrate
from vault.support import SupportAccess

log = structlog.get_logger("oubli.server")

SERVICE_NAMES = tuple(service.full_name for service in pb.DESCRIPTOR.services_by_name.values())


def build_kms(config: ServerConfig) -> KeyManager:
    if config.kms == "vault":
        assert config.vault is not None
        kms = VaultTransitKeyManager(
            config.vault.address, config.vault.token, mount_point=config.vault.mount
        )
        try:
            kms.ensure_mount(cache_size=config.vault.cache_size)
        except KmsError as e:
            raise Unavailable(f"cannot prepare the Transit mount: {e}") from e
        return kms
    return LocalKeystore(config.resolved_keystore_path)


def build_vault(config: ServerConfig, clock: Clock = utc_now) -> VaultService:
    if not config.database_url:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(config.resolved_database_url)
    migrate(engine)
    return VaultService(
        Storage(engine),
        build_kms(config),
        Catalog.load(config.catalog_path),
        tenant=config.tenant,
        cache=DataKeyCache(config.cache_entries, config.cache_ttl_seconds),
        clock=clock,
        kms_backup_retention=timedelta(days=config.kms_backup_retention_days),
    )


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    vault: VaultService
    health: health.HealthServicer
    audit: AuditRecorder
    #: The Prometheus endpoint, when ``metrics_listen`` is set.
    metrics: MetricsServer | None = None

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.metrics is not None:
            self.metrics.stop()
        self.audit.stop()
        self.vault.kms.close()
        self.vault.storage.engine.dispose()


def build_auth(config: ServerConfig) -> tuple[Authenticator, CallerPolicy]:
    policy = CallerPolicy.load(config.callers_path)
    store = TokenStore(config.resolved_tokens_path)
    try:
        tokens = store.load()
    except (OSError, ValueError) as e:  # TOMLDecodeError is a ValueError
        raise ConfigError(f"cannot read the tokens file: {type(e).__name__}") from e
    return Authenticator(tokens, mtls=config.tls_client_ca is not None, store=store), policy


def start_server(
    config: ServerConfig,
    vault: VaultService | None = None,
    clock: Clock = utc_now,
    auth: tuple[Authenticator, CallerPolicy] | None = None,
    audit: AuditRecorder | None = None,
) -> RunningServer:
    vault = vault or build_vault(config, clock)
    authenticator, policy = auth or build_auth(config)
    audit = audit or AuditRecorder.build(vault.storage, vault.kms, vault.clock, vault.catalog)
    audit.start_checkpoints(config.audit_checkpoint_seconds)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers),
        interceptors=[ServiceInterceptor(authenticator, policy, audit)],
        options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)],
    )
    pb_grpc.add_SubjectServiceServicer_to_server(SubjectServicer(vault, clock), server)
    pb_grpc.add_RecordServiceServicer_to_server(RecordServicer(vault), server)
    pb_grpc.add_RightsServiceServicer_to_server(
        RightsServicer(RightsService(vault), audit.audit), server
    )
    pb_grpc.add_RetentionServiceServicer_to_server(RetentionServicer(RetentionJob(vault)), server)
    pb_grpc.add_AuditServiceServicer_to_server(AuditServicer(audit.audit), server)
    pb_grpc.add_LookupServiceServicer_to_server(LookupServicer(SubjectFinder(vault)), server)
    pb_grpc.add_SupportServiceServicer_to_server(SupportServicer(SupportAccess(vault)), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
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
        raise Unavailable(f"cannot listen on {config.listen}") from e
    if port == 0:
        raise Unavailable("cannot listen on the configured address")
    metrics = start_metrics(config, vault)
    server.start()
    return RunningServer(server, port, vault, health_servicer, audit, metrics)


def start_metrics(config: ServerConfig, vault: VaultService) -> MetricsServer | None:
    """The Prometheus endpoint for ``vault``, or None when ``metrics_listen`` is empty."""
    address = config.metrics_address
    if address is None:
        return None
    try:
        return start_metrics_server(build_registry(vault.kms, vault.cache), *address)
    except OSError as e:  # taken, not a local address, or a host name that does not resolve
        raise Unavailable(f"cannot listen on {config.metrics_listen} for metrics") from e


def serve(config: ServerConfig, ready_file: Path | None = None) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight calls and stop."""
    running = start_server(config)
    log.info(
        "serving",
        port=running.port,
        kms=running.vault.kms.backend_name,
        database=running.vault.storage.engine.dialect.name,
        pid=os.getpid(),
        **({"metrics_port": running.metrics.port} if running.metrics else {}),
    )
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(ready_file)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping")
    running.stop()
