"""Server configuration: a frozen dataclass built from flags and an explicit environment.

Environment variables (all optional):

    OUBLI_LISTEN          host:port to serve gRPC on (default 127.0.0.1:50051)
    OUBLI_METRICS_LISTEN  host:port to serve Prometheus metrics on (default: empty, off)
    OUBLI_DATA_DIR        directory for the embedded default (default ./oubli-data)
    OUBLI_DATABASE_URL    SQLAlchemy URL (default sqlite:///DATA_DIR/oubli.db)
    OUBLI_LEDGER_URL      the erasure ledger's own database, never the data database
                          (default sqlite:///DATA_DIR/ledger/erasures.db; PostgreSQL:
                          one ledger database shared by every replica)
    OUBLI_LEDGER_MIRROR_DIR  also append each ledger entry, fsynced, as a JSON line to
                          DIR/erasures.jsonl (to ship to write-once storage; default off)
    OUBLI_FENCE_INTERVAL_SECONDS  how often the restore fence runs again after the
                          first pass at start (default 300)
    OUBLI_READINESS_INTERVAL_SECONDS  how often the readiness probe checks the database
                          and the KMS for gRPC health (default 2)
    OUBLI_KMS             local | vault (default local)
    OUBLI_KEYSTORE_PATH   local keystore file (default DATA_DIR/keystore/keys.db)
    OUBLI_CATALOG         policy catalog TOML file (default: the shipped catalog)
    OUBLI_TENANT          tenant/namespace bound into every ciphertext (default "default")
    OUBLI_CACHE_ENTRIES   DEK cache bound (default 10000 subjects)
    OUBLI_CACHE_TTL_SECONDS  DEK cache TTL, at most 60 (default 60)
    OUBLI_MAX_WORKERS     gRPC worker threads, per process (default 16)
    OUBLI_WORKERS         server processes sharing the listen port (SO_REUSEPORT; default
                          1: one process, no supervisor; vault/app/workers.py)
    OUBLI_KMS_BACKUP_RETENTION_DAYS  how long KMS backups are kept (default 7)
    OUBLI_CALLERS         caller policy TOML (default: the shipped default_callers.toml)
    OUBLI_TOKENS_FILE     pre-0007 bearer token hashes, imported at start (default
                          DATA_DIR/tokens.toml; tokens now live in the database)
    OUBLI_TLS_CERT, OUBLI_TLS_KEY  serve TLS (1.3 negotiated) with this certificate
    OUBLI_TLS_CLIENT_CA   require client certificates signed by this CA (mTLS)
    OUBLI_AUDIT_CHECKPOINT_SECONDS  how often the audit chain head is signed (default 300)
    OUBLI_AUDIT_SEAL_SECONDS  how often recorded audit entries are sealed into the chain
                          (default 0.2)
    OUBLI_AUDIT_FULL_VERIFY_SECONDS  least pause between two full walks of the audit
                          chain (VerifyAudit full, or before any checkpoint; default 300,
                          0 = no limit)
    VAULT_ADDR            Vault / OpenBao address (https://... in production)
    OUBLI_VAULT_MOUNT     the Transit mount (default transit)
    OUBLI_VAULT_CACHE_SIZE  Transit key cache (LRU) size set on the mount (default 10000)
    OUBLI_VAULT_AUTH      how oubli gets its Vault token (docs/operations.md#vault-authentication):
                          token (default: VAULT_TOKEN, renewed while renewable) |
                          token-file (a Vault/OpenBao Agent sink, read again when it
                          changes; the agent renews) | approle | kubernetes
    VAULT_TOKEN           the token of OUBLI_VAULT_AUTH=token (only then)
    OUBLI_VAULT_TOKEN_FILE  the agent's sink file (token-file)
    OUBLI_VAULT_ROLE_ID_FILE, OUBLI_VAULT_SECRET_ID_FILE  AppRole role id and secret id
                          files, read at every login (approle)
    OUBLI_VAULT_K8S_ROLE  the Kubernetes auth role (kubernetes)
    OUBLI_VAULT_K8S_JWT_FILE  the service-account JWT (kubernetes; default
                          /var/run/secrets/kubernetes.io/serviceaccount/token)
    OUBLI_VAULT_AUTH_MOUNT  the auth method's mount (default approle / kubernetes)
    VAULT_CACERT          CA bundle (PEM) that Vault's TLS certificate is verified with
                          (default: the system's CAs)
    VAULT_CLIENT_CERT, VAULT_CLIENT_KEY  client certificate and key (PEM) when Vault
                          requires mTLS (both or neither)
    VAULT_NAMESPACE       Vault Enterprise / OpenBao namespace of the Transit and auth
                          mounts (default: none, the root namespace)
    OUBLI_KMS_TIMEOUT_SECONDS  longest a KMS call may take, less when the caller's
                          deadline is nearer (default 2)
    OUBLI_KMS_MAX_IN_FLIGHT  KMS calls in flight at once; 0: half the worker threads
                          (default 0)
    OUBLI_KMS_BREAKER_FAILURES  consecutive KMS failures that open the breaker (default 5)
    OUBLI_KMS_BREAKER_RESET_SECONDS  an open breaker lets a probe through after (default 0.5)
    OUBLI_CRYPTOPERIOD_{SUBJECT_KEYS,BUCKET_KEYS,DEKS,INDEX_KEY,SIGNING_KEY}_DAYS
                          how long each kind of key is used before `oubli keys rotate`
                          finds it due (defaults 365, 365, 365, 730, 365; docs/keys.md)
    OUBLI_KEY_TRIM_AFTER_DAYS  days after a rotation before the KMS key's old versions
                          are trimmed (default: OUBLI_KMS_BACKUP_RETENTION_DAYS)
    OUBLI_TRACING         off | console | otlp: OpenTelemetry spans of RPCs, database
                          transactions and KMS calls (vault/app/tracing.py; needs the
                          ``tracing`` extra; otlp reads OTEL_EXPORTER_OTLP_ENDPOINT;
                          default off)
    OUBLI_DRAIN_SECONDS   on SIGTERM/SIGINT, how long calls in flight may take to finish
                          before they are cancelled (default 5)

A configuration file (``oubli serve --config oubli.toml``, or OUBLI_CONFIG) holds any of
these settings under the field names of ServerConfig, the Vault ones in a ``[vault]``
table; precedence: flags > environment > file > defaults (vault/app/config_file.py,
deploy/oubli.toml, docs/operations.md#configuration-file).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from kms.vault_auth import (
    DEFAULT_K8S_JWT_FILE,
    AppRole,
    AuthMethod,
    Kubernetes,
    StaticToken,
    TokenFile,
    VaultTls,
)
from vault.crypto.keycache import MAX_TTL_SECONDS
from vault.storage.engine import sqlite_file
from vault.usecases.key_rotation import Cryptoperiods

_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: A Vault mount path: segments of [A-Za-z0-9_.-], no leading or trailing slash.
_MOUNT = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
#: host:port; a host name or IPv4 address, or an IPv6 address in brackets.
_HOST_PORT = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]{1,5})"
)


class ConfigError(ValueError):
    """The configuration is invalid; the message says which setting and why."""


VaultAuthMethod = Literal["token", "token-file", "approle", "kubernetes"]
VAULT_AUTH_METHODS: tuple[str, ...] = ("token", "token-file", "approle", "kubernetes")


@dataclass(frozen=True, slots=True)
class VaultSettings:
    address: str
    token: str = field(default="", repr=False)
    mount: str = "transit"
    cache_size: int = 0
    #: How oubli gets its token (kms/vault_auth.py); "token" uses ``token`` above.
    auth: VaultAuthMethod = "token"
    token_file: Path | None = None
    role_id_file: Path | None = None
    secret_id_file: Path | None = None
    k8s_role: str = ""
    k8s_jwt_file: Path = DEFAULT_K8S_JWT_FILE
    #: The auth method's mount (empty: the method's name, approle / kubernetes).
    auth_mount: str = ""
    #: TLS towards Vault: CA bundle, client certificate and key; and the namespace.
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    namespace: str = ""

    def validate(self) -> VaultSettings:
        """One clear error per bad combination (names the variable or flag)."""
        if not self.address:
            raise ConfigError(
                "--kms vault needs a Vault address and token (or another --vault-auth): "
                "VAULT_ADDR / --vault-addr is not set"
            )
        if self.auth not in VAULT_AUTH_METHODS:
            raise ConfigError(
                f"OUBLI_VAULT_AUTH / --vault-auth must be one of {', '.join(VAULT_AUTH_METHODS)}"
            )
        if self.auth == "token":
            if not self.token:
                raise ConfigError("--kms vault needs a Vault address and token")
        elif self.token:
            raise ConfigError(
                f"VAULT_TOKEN / --vault-token is set but the Vault auth method is {self.auth}: "
                "unset one of them"
            )
        if self.auth == "token-file" and self.token_file is None:
            raise ConfigError(
                "--vault-auth token-file needs OUBLI_VAULT_TOKEN_FILE / --vault-token-file"
            )
        if self.auth == "approle" and (self.role_id_file is None or self.secret_id_file is None):
            raise ConfigError(
                "--vault-auth approle needs OUBLI_VAULT_ROLE_ID_FILE / --vault-role-id-file "
                "and OUBLI_VAULT_SECRET_ID_FILE / --vault-secret-id-file"
            )
        if self.auth == "kubernetes" and not self.k8s_role:
            raise ConfigError(
                "--vault-auth kubernetes needs OUBLI_VAULT_K8S_ROLE / --vault-k8s-role"
            )
        unused = {
            "OUBLI_VAULT_TOKEN_FILE": self.auth != "token-file" and self.token_file is not None,
            "OUBLI_VAULT_ROLE_ID_FILE / OUBLI_VAULT_SECRET_ID_FILE": self.auth != "approle"
            and (self.role_id_file is not None or self.secret_id_file is not None),
            "OUBLI_VAULT_K8S_ROLE": self.auth != "kubernetes" and bool(self.k8s_role),
            "OUBLI_VAULT_AUTH_MOUNT": self.auth not in ("approle", "kubernetes")
            and bool(self.auth_mount),
        }
        for name, set_in_vain in unused.items():
            if set_in_vain:
                raise ConfigError(f"{name} is set but the Vault auth method is {self.auth}")
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigError(
                "a Vault client certificate needs its key (VAULT_CLIENT_CERT and "
                "VAULT_CLIENT_KEY, or neither)"
            )
        if (self.ca_cert or self.client_cert) and not self.address.startswith("https://"):
            raise ConfigError("VAULT_CACERT / VAULT_CLIENT_CERT need an https:// VAULT_ADDR")
        if self.auth_mount and not _MOUNT.fullmatch(self.auth_mount):
            raise ConfigError(
                "OUBLI_VAULT_AUTH_MOUNT must be a mount path like approle or k8s/prod"
            )
        return self

    @property
    def resolved_auth_mount(self) -> str:
        return self.auth_mount or self.auth

    @property
    def tls(self) -> VaultTls:
        return VaultTls(self.ca_cert, self.client_cert, self.client_key)

    def auth_method(self) -> AuthMethod:
        """The configured way to get a token (validate() first)."""
        if self.auth == "token-file":
            assert self.token_file is not None
            return TokenFile(self.token_file)
        if self.auth == "approle":
            assert self.role_id_file is not None and self.secret_id_file is not None
            return AppRole(self.role_id_file, self.secret_id_file, self.resolved_auth_mount)
        if self.auth == "kubernetes":
            return Kubernetes(self.k8s_role, self.k8s_jwt_file, self.resolved_auth_mount)
        return StaticToken(self.token)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path("oubli-data")
    database_url: str = ""
    kms: Literal["local", "vault"] = "local"
    keystore_path: Path | None = None
    vault: VaultSettings | None = None
    catalog_path: Path | None = None
    tenant: str = "default"
    cache_entries: int = 10_000
    cache_ttl_seconds: float = MAX_TTL_SECONDS
    #: gRPC handler threads, in each server process.
    max_workers: int = 16
    #: Server processes on the one listen port (SO_REUSEPORT), supervised by the
    #: process started (vault/app/workers.py); 1: that process serves itself.
    workers: int = 1
    #: How long backups of the KMS (Vault snapshots, keystore file copies) are kept;
    #: shred receipts say when the last copy holding an erased key expires.
    kms_backup_retention_days: int = 7
    #: Caller policy TOML (default: the shipped vault/access/default_callers.toml).
    callers_path: Path | None = None
    #: A pre-0007 file of bearer token hashes, imported into the database at start
    #: (default: DATA_DIR/tokens.toml).
    tokens_path: Path | None = None
    #: TLS: server certificate and key (PEM); with a client CA, mTLS is required.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    #: How often the audit chain's head is signed with the KMS signing key.
    audit_checkpoint_seconds: float = 300.0
    #: How often this server's sealer moves recorded audit entries into the chain.
    audit_seal_seconds: float = 0.2
    #: Least pause between two walks of the whole audit chain by this server (0: none).
    audit_full_verify_seconds: float = 300.0
    #: host:port of the Prometheus metrics endpoint (HTTP, ``/metrics``); empty = off.
    metrics_listen: str = ""
    #: The KMS guard (kms/guard.py): per-call budget cap, calls in flight (0: half the
    #: workers), consecutive failures that open the breaker, and when it probes again.
    kms_timeout_seconds: float = 2.0
    kms_max_in_flight: int = 0
    kms_breaker_failures: int = 5
    kms_breaker_reset_seconds: float = 0.5
    #: The erasure ledger's database URL (empty: DATA_DIR/ledger/erasures.db) and the
    #: directory its entries are mirrored to as JSON lines (None: off).
    ledger_url: str = ""
    ledger_mirror_dir: Path | None = None
    #: How often the restore fence runs again once it has passed at start.
    fence_interval_seconds: float = 300.0
    #: How often the readiness probe checks the database and the KMS (vault/app/readiness.py).
    readiness_interval_seconds: float = 2.0
    #: Serve although the ledger is behind the database (an operator's explicit
    #: acknowledgement that the ledger was lost or restored; a flag, no variable).
    accept_ledger_behind: bool = False
    #: Cryptoperiods, in days (docs/keys.md#cryptoperiods): how long each kind of key
    #: is used before ``oubli keys rotate`` finds it due.
    cryptoperiod_subject_keys_days: int = 365
    cryptoperiod_bucket_keys_days: int = 365
    cryptoperiod_deks_days: int = 365
    cryptoperiod_index_key_days: int = 730
    cryptoperiod_signing_key_days: int = 365
    #: Days after a rotation before the old versions of a subject's or bucket's KMS key
    #: are trimmed (None: the KMS backup retention). Database copies older than the
    #: rotation can be opened until then, and never after.
    key_trim_after_days: int | None = None
    #: On SIGTERM/SIGINT: how long calls in flight may take to finish (health says
    #: NOT_SERVING and new calls are refused from the start) before they are cancelled.
    drain_seconds: float = 5.0
    #: OpenTelemetry tracing (vault/app/tracing.py): off, console, or otlp (to the
    #: standard OTEL_EXPORTER_OTLP_ENDPOINT).
    tracing: Literal["off", "console", "otlp"] = "off"

    @property
    def cryptoperiods(self) -> Cryptoperiods:
        return Cryptoperiods(
            subjects=timedelta(days=self.cryptoperiod_subject_keys_days),
            buckets=timedelta(days=self.cryptoperiod_bucket_keys_days),
            deks=timedelta(days=self.cryptoperiod_deks_days),
            index=timedelta(days=self.cryptoperiod_index_key_days),
            signing=timedelta(days=self.cryptoperiod_signing_key_days),
        )

    @property
    def key_trim_after(self) -> timedelta:
        days = self.key_trim_after_days
        return timedelta(days=self.kms_backup_retention_days if days is None else days)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """The metrics endpoint's (host, port), or None when metrics are off."""
        if not self.metrics_listen:
            return None
        return parse_host_port(self.metrics_listen, "OUBLI_METRICS_LISTEN / --metrics-listen")

    @property
    def resolved_kms_max_in_flight(self) -> int:
        """KMS calls in flight at once: as set, or half the workers, so that a hung KMS
        always leaves workers for the calls that need no key."""
        return self.kms_max_in_flight or max(1, self.max_workers // 2)

    @property
    def resolved_tokens_path(self) -> Path:
        return (self.tokens_path or self.data_dir / "tokens.toml").resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'oubli.db').resolve()}"

    @property
    def resolved_ledger_url(self) -> str:
        return (
            self.ledger_url or f"sqlite:///{(self.data_dir / 'ledger' / 'erasures.db').resolve()}"
        )

    @property
    def resolved_keystore_path(self) -> Path:
        return (self.keystore_path or self.data_dir / "keystore" / "keys.db").resolve()

    def validate(self) -> ServerConfig:
        if not _TENANT.fullmatch(self.tenant):
            raise ConfigError("tenant must match [a-z0-9][a-z0-9_-]{0,63}")
        if self.cache_entries < 1 or self.max_workers < 1:
            raise ConfigError("cache entries and worker count must be >= 1")
        if not 1 <= self.workers <= MAX_WORKER_PROCESSES:
            raise ConfigError(f"the worker process count must be in [1, {MAX_WORKER_PROCESSES}]")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both a certificate and its key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("mTLS (a client CA) needs the server's TLS certificate and key")
        if self.audit_checkpoint_seconds <= 0:
            raise ConfigError("the audit checkpoint interval must be > 0 seconds")
        if self.audit_seal_seconds <= 0:
            raise ConfigError("the audit seal interval must be > 0 seconds")
        if self.audit_full_verify_seconds < 0:
            raise ConfigError("the pause between full audit walks must be >= 0 seconds")
        if self.kms_backup_retention_days < 0:
            raise ConfigError("KMS backup retention must be >= 0 days")
        if not 0 < self.cache_ttl_seconds <= MAX_TTL_SECONDS:
            raise ConfigError(f"cache TTL must be in (0, {MAX_TTL_SECONDS}] seconds")
        if not MIN_KMS_TIMEOUT_SECONDS <= self.kms_timeout_seconds <= MAX_KMS_TIMEOUT_SECONDS:
            raise ConfigError(
                f"the KMS timeout must be in [{MIN_KMS_TIMEOUT_SECONDS}, "
                f"{MAX_KMS_TIMEOUT_SECONDS}] seconds"
            )
        if self.kms_max_in_flight < 0 or self.kms_breaker_failures < 1:
            raise ConfigError("KMS calls in flight must be >= 0 and breaker failures >= 1")
        if not 0 < self.kms_breaker_reset_seconds <= MAX_KMS_TIMEOUT_SECONDS:
            raise ConfigError(
                f"the KMS breaker's reset interval must be in (0, {MAX_KMS_TIMEOUT_SECONDS}] s"
            )
        if self.fence_interval_seconds <= 0:
            raise ConfigError("the restore fence interval must be > 0 seconds")
        if not 0 < self.readiness_interval_seconds <= 3600:
            raise ConfigError("the readiness probe interval must be in (0, 3600] seconds")
        if (
            min(
                self.cryptoperiod_subject_keys_days,
                self.cryptoperiod_bucket_keys_days,
                self.cryptoperiod_deks_days,
                self.cryptoperiod_index_key_days,
                self.cryptoperiod_signing_key_days,
            )
            < 1
        ):
            raise ConfigError("every cryptoperiod must be at least 1 day")
        if self.key_trim_after_days is not None and self.key_trim_after_days < 0:
            raise ConfigError("the delay before trimming old key versions must be >= 0 days")
        if not 0 <= self.drain_seconds <= MAX_DRAIN_SECONDS:
            raise ConfigError(f"the drain period must be in [0, {MAX_DRAIN_SECONDS:g}] seconds")
        if self.tracing not in ("off", "console", "otlp"):
            raise ConfigError("tracing must be 'off', 'console' or 'otlp'")
        try:
            ledger_file = sqlite_file(self.resolved_ledger_url)
            database_file = sqlite_file(self.resolved_database_url)
        except ValueError:
            raise ConfigError("database or ledger URL is not a valid SQLAlchemy URL") from None
        if self.resolved_ledger_url == self.resolved_database_url or (
            ledger_file is not None
            and database_file is not None
            and ledger_file.resolve() == database_file.resolve()
        ):
            raise ConfigError("the erasure ledger must not be the data database")
        metrics = self.metrics_address  # raises ConfigError when malformed
        if metrics is not None and metrics[1] != 0 and self.metrics_listen == self.listen:
            raise ConfigError("the metrics address must differ from the gRPC listen address")
        if self.kms == "vault":
            if self.vault is None:
                raise ConfigError("--kms vault needs a Vault address and token")
            self.vault.validate()
        elif self.kms == "local":
            try:
                database_file = sqlite_file(self.resolved_database_url)
            except ValueError:
                raise ConfigError("database URL is not a valid SQLAlchemy URL") from None
            if database_file is not None and database_file.resolve() == self.resolved_keystore_path:
                raise ConfigError("the keystore must not be the data database file")
        else:
            raise ConfigError("kms must be 'local' or 'vault'")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: object) -> ServerConfig:
        """Defaults, then the environment, then explicit overrides (CLI flags)."""
        values: dict[str, object] = {}
        for name, (attribute, parse) in _ENVIRONMENT.items():
            if name in env:
                try:
                    values[attribute] = parse(env[name])
                except ValueError:
                    raise ConfigError(f"{name} is not a valid value") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        vault_values = {key: values.pop(key, None) for key in _VAULT_OVERRIDES}
        if values.get("kms", "local") == "vault":
            values["vault"] = _vault_settings(env, vault_values)
        return cls(**values).validate()  # type: ignore[arg-type]


def parse_host_port(value: str, setting: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets: ``[::1]:9464``) -> (host, port).

    Port 0 picks a free port. Raises ConfigError naming ``setting`` when malformed.
    """
    match = _HOST_PORT.fullmatch(value)
    port = int(match["port"]) if match else -1
    if match is None or port > 65535:
        raise ConfigError(
            f"{setting} must be host:port with a port in 0..65535 (IPv6 as [::1]:9464), "
            f"got {value!r}"
        )
    return match["ipv6"] or match["host"], port


#: Bounds of the per-call KMS budget: below, a healthy KMS could miss it; above, a hung
#: one holds workers for longer than a client waits.
MIN_KMS_TIMEOUT_SECONDS = 0.1
MAX_KMS_TIMEOUT_SECONDS = 60.0

#: Longest drain on SIGTERM: beyond it, an orchestrator's own grace period has long run out.
MAX_DRAIN_SECONDS = 3600.0

#: Most server processes: each holds its own DEK cache, database pool and KMS client,
#: and beyond the cores there are to run them more only cost memory and connections.
MAX_WORKER_PROCESSES = 64

#: Bounded Transit key cache (an LRU in Vault): its default is unbounded.
DEFAULT_VAULT_CACHE_SIZE = 10_000

#: Vault settings: the override (flag) name, its variable, and the VaultSettings field.
_VAULT_SETTINGS: dict[str, tuple[str, str]] = {
    "vault_addr": ("VAULT_ADDR", "address"),
    "vault_token": ("VAULT_TOKEN", "token"),
    "vault_mount": ("OUBLI_VAULT_MOUNT", "mount"),
    "vault_cache_size": ("OUBLI_VAULT_CACHE_SIZE", "cache_size"),
    "vault_auth": ("OUBLI_VAULT_AUTH", "auth"),
    "vault_token_file": ("OUBLI_VAULT_TOKEN_FILE", "token_file"),
    "vault_role_id_file": ("OUBLI_VAULT_ROLE_ID_FILE", "role_id_file"),
    "vault_secret_id_file": ("OUBLI_VAULT_SECRET_ID_FILE", "secret_id_file"),
    "vault_k8s_role": ("OUBLI_VAULT_K8S_ROLE", "k8s_role"),
    "vault_k8s_jwt_file": ("OUBLI_VAULT_K8S_JWT_FILE", "k8s_jwt_file"),
    "vault_auth_mount": ("OUBLI_VAULT_AUTH_MOUNT", "auth_mount"),
    "vault_cacert": ("VAULT_CACERT", "ca_cert"),
    "vault_client_cert": ("VAULT_CLIENT_CERT", "client_cert"),
    "vault_client_key": ("VAULT_CLIENT_KEY", "client_key"),
    "vault_namespace": ("VAULT_NAMESPACE", "namespace"),
}
_VAULT_OVERRIDES = tuple(_VAULT_SETTINGS)
_VAULT_PATHS = frozenset(
    {
        "token_file",
        "role_id_file",
        "secret_id_file",
        "k8s_jwt_file",
        "ca_cert",
        "client_cert",
        "client_key",
    }
)


def _vault_settings(env: Mapping[str, str], overrides: Mapping[str, object]) -> VaultSettings:
    """VaultSettings from flags (``overrides``), else the environment, else defaults."""
    values: dict[str, object] = {}
    for override, (variable, attribute) in _VAULT_SETTINGS.items():
        raw = overrides.get(override)
        if raw is None or raw == "":
            raw = env.get(variable, "")
        if raw == "":
            continue
        if attribute == "cache_size":
            try:
                values[attribute] = int(str(raw))
            except ValueError:
                raise ConfigError(f"{variable} is not a valid value") from None
        elif attribute in _VAULT_PATHS:
            values[attribute] = raw if isinstance(raw, Path) else Path(str(raw))
        else:
            values[attribute] = str(raw)
    values.setdefault("address", "")
    values.setdefault("cache_size", DEFAULT_VAULT_CACHE_SIZE)
    return VaultSettings(**values)  # type: ignore[arg-type]


_ENVIRONMENT: dict[str, tuple[str, Callable[[str], object]]] = {
    "OUBLI_LISTEN": ("listen", str),
    "OUBLI_METRICS_LISTEN": ("metrics_listen", str),
    "OUBLI_DATA_DIR": ("data_dir", Path),
    "OUBLI_DATABASE_URL": ("database_url", str),
    "OUBLI_KMS": ("kms", str),
    "OUBLI_KEYSTORE_PATH": ("keystore_path", Path),
    "OUBLI_CATALOG": ("catalog_path", Path),
    "OUBLI_TENANT": ("tenant", str),
    "OUBLI_CACHE_ENTRIES": ("cache_entries", int),
    "OUBLI_CACHE_TTL_SECONDS": ("cache_ttl_seconds", float),
    "OUBLI_MAX_WORKERS": ("max_workers", int),
    "OUBLI_WORKERS": ("workers", int),
    "OUBLI_KMS_BACKUP_RETENTION_DAYS": ("kms_backup_retention_days", int),
    "OUBLI_CALLERS": ("callers_path", Path),
    "OUBLI_TOKENS_FILE": ("tokens_path", Path),
    "OUBLI_TLS_CERT": ("tls_cert", Path),
    "OUBLI_TLS_KEY": ("tls_key", Path),
    "OUBLI_TLS_CLIENT_CA": ("tls_client_ca", Path),
    "OUBLI_AUDIT_CHECKPOINT_SECONDS": ("audit_checkpoint_seconds", float),
    "OUBLI_AUDIT_SEAL_SECONDS": ("audit_seal_seconds", float),
    "OUBLI_KMS_TIMEOUT_SECONDS": ("kms_timeout_seconds", float),
    "OUBLI_KMS_MAX_IN_FLIGHT": ("kms_max_in_flight", int),
    "OUBLI_KMS_BREAKER_FAILURES": ("kms_breaker_failures", int),
    "OUBLI_KMS_BREAKER_RESET_SECONDS": ("kms_breaker_reset_seconds", float),
    "OUBLI_AUDIT_FULL_VERIFY_SECONDS": ("audit_full_verify_seconds", float),
    "OUBLI_LEDGER_URL": ("ledger_url", str),
    "OUBLI_LEDGER_MIRROR_DIR": ("ledger_mirror_dir", Path),
    "OUBLI_FENCE_INTERVAL_SECONDS": ("fence_interval_seconds", float),
    "OUBLI_READINESS_INTERVAL_SECONDS": ("readiness_interval_seconds", float),
    "OUBLI_CRYPTOPERIOD_SUBJECT_KEYS_DAYS": ("cryptoperiod_subject_keys_days", int),
    "OUBLI_CRYPTOPERIOD_BUCKET_KEYS_DAYS": ("cryptoperiod_bucket_keys_days", int),
    "OUBLI_CRYPTOPERIOD_DEKS_DAYS": ("cryptoperiod_deks_days", int),
    "OUBLI_CRYPTOPERIOD_INDEX_KEY_DAYS": ("cryptoperiod_index_key_days", int),
    "OUBLI_CRYPTOPERIOD_SIGNING_KEY_DAYS": ("cryptoperiod_signing_key_days", int),
    "OUBLI_KEY_TRIM_AFTER_DAYS": ("key_trim_after_days", int),
    "OUBLI_DRAIN_SECONDS": ("drain_seconds", float),
    "OUBLI_TRACING": ("tracing", str),
}
