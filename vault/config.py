"""Server configuration: a frozen dataclass built from flags and an explicit environment.

Environment variables (all optional):

    OUBLI_LISTEN          host:port to serve gRPC on (default 127.0.0.1:50051)
    OUBLI_DATA_DIR        directory for the embedded default (default ./oubli-data)
    OUBLI_DATABASE_URL    SQLAlchemy URL (default sqlite:///DATA_DIR/oubli.db)
    OUBLI_KMS             local | vault (default local)
    OUBLI_KEYSTORE_PATH   local keystore file (default DATA_DIR/keystore/keys.db)
    OUBLI_CATALOG         policy catalog TOML file (default: the shipped catalog)
    OUBLI_TENANT          tenant/namespace bound into every ciphertext (default "default")
    VAULT_ADDR, VAULT_TOKEN, OUBLI_VAULT_MOUNT (default transit)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from vault.keycache import MAX_TTL_SECONDS

_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class ConfigError(ValueError):
    """The configuration is invalid; the message says which setting and why."""


@dataclass(frozen=True, slots=True)
class VaultSettings:
    address: str
    token: str = field(repr=False)
    mount: str = "transit"
    cache_size: int = 0


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
    max_workers: int = 16

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'oubli.db').resolve()}"

    @property
    def resolved_keystore_path(self) -> Path:
        return (self.keystore_path or self.data_dir / "keystore" / "keys.db").resolve()

    def validate(self) -> ServerConfig:
        if not _TENANT.fullmatch(self.tenant):
            raise ConfigError("tenant must match [a-z0-9][a-z0-9_-]{0,63}")
        if not 0 < self.cache_ttl_seconds <= MAX_TTL_SECONDS:
            raise ConfigError(f"cache TTL must be in (0, {MAX_TTL_SECONDS}] seconds")
        if self.kms == "vault":
            if self.vault is None or not self.vault.address or not self.vault.token:
                raise ConfigError("--kms vault needs a Vault address and token")
        elif self.kms == "local":
            # Parsed, not prefix-matched: sqlite+pysqlite:///f.db?timeout=5 is the same file.
            try:
                url = make_url(self.resolved_database_url)
            except ArgumentError:
                raise ConfigError("database URL is not a valid SQLAlchemy URL") from None
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                db = Path(url.database).resolve()
                if db == self.resolved_keystore_path:
                    raise ConfigError("the keystore must not be the data database file")
        else:
            raise ConfigError("kms must be 'local' or 'vault'")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: object) -> ServerConfig:
        """Defaults, then the environment, then explicit overrides (CLI flags)."""
        values: dict[str, object] = {}
        if "OUBLI_LISTEN" in env:
            values["listen"] = env["OUBLI_LISTEN"]
        if "OUBLI_DATA_DIR" in env:
            values["data_dir"] = Path(env["OUBLI_DATA_DIR"])
        if "OUBLI_DATABASE_URL" in env:
            values["database_url"] = env["OUBLI_DATABASE_URL"]
        if "OUBLI_KMS" in env:
            values["kms"] = env["OUBLI_KMS"]
        if "OUBLI_KEYSTORE_PATH" in env:
            values["keystore_path"] = Path(env["OUBLI_KEYSTORE_PATH"])
        if "OUBLI_CATALOG" in env:
            values["catalog_path"] = Path(env["OUBLI_CATALOG"])
        if "OUBLI_TENANT" in env:
            values["tenant"] = env["OUBLI_TENANT"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        kms = values.get("kms", "local")
        if kms == "vault":
            address = str(values.pop("vault_addr", None) or env.get("VAULT_ADDR", ""))
            token = str(values.pop("vault_token", None) or env.get("VAULT_TOKEN", ""))
            mount = str(values.pop("vault_mount", None) or env.get("OUBLI_VAULT_MOUNT", "transit"))
            values["vault"] = VaultSettings(address, token, mount)
        for key in ("vault_addr", "vault_token", "vault_mount"):
            values.pop(key, None)
        return cls(**values).validate()  # type: ignore[arg-type]
