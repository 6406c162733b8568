"""ServerConfig: defaults, then the environment, then flags; invalid settings refused."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from vault.app.config import ConfigError, ServerConfig, VaultSettings
from vault.crypto.keycache import MAX_TTL_SECONDS

TOKEN = "s.super-secret-root-token-0123456789"


def test_defaults() -> None:
    config = ServerConfig.from_env({})
    assert config.listen == "127.0.0.1:50051"
    assert config.data_dir == Path("oubli-data")
    assert config.kms == "local"
    assert config.vault is None
    assert config.catalog_path is None
    assert config.tenant == "default"
    assert config.cache_ttl_seconds == MAX_TTL_SECONDS
    assert config.resolved_database_url == f"sqlite:///{Path('oubli-data/oubli.db').resolve()}"
    assert config.resolved_keystore_path == Path("oubli-data/keystore/keys.db").resolve()


def test_environment_overrides_defaults(tmp_path: Path) -> None:
    env = {
        "OUBLI_LISTEN": "0.0.0.0:6000",
        "OUBLI_DATA_DIR": str(tmp_path / "data"),
        "OUBLI_DATABASE_URL": "postgresql+psycopg://db/oubli",
        "OUBLI_KEYSTORE_PATH": str(tmp_path / "keys" / "ks.db"),
        "OUBLI_CATALOG": str(tmp_path / "catalog.toml"),
        "OUBLI_TENANT": "acme-eu",
    }
    config = ServerConfig.from_env(env)
    assert config.listen == "0.0.0.0:6000"
    assert config.data_dir == tmp_path / "data"
    assert config.resolved_database_url == "postgresql+psycopg://db/oubli"
    assert config.resolved_keystore_path == (tmp_path / "keys" / "ks.db").resolve()
    assert config.catalog_path == tmp_path / "catalog.toml"
    assert config.tenant == "acme-eu"


def test_data_dir_moves_the_embedded_files(tmp_path: Path) -> None:
    config = ServerConfig.from_env({"OUBLI_DATA_DIR": str(tmp_path)})
    assert config.resolved_database_url == f"sqlite:///{(tmp_path / 'oubli.db').resolve()}"
    assert config.resolved_keystore_path == (tmp_path / "keystore" / "keys.db").resolve()


def test_environment_selects_vault() -> None:
    env = {
        "OUBLI_KMS": "vault",
        "VAULT_ADDR": "http://127.0.0.1:8200",
        "VAULT_TOKEN": TOKEN,
        "OUBLI_VAULT_MOUNT": "oubli-transit",
    }
    config = ServerConfig.from_env(env)
    assert config.kms == "vault"
    assert config.vault == VaultSettings("http://127.0.0.1:8200", TOKEN, "oubli-transit", 10_000)


def test_flags_override_environment() -> None:
    env = {
        "OUBLI_LISTEN": "0.0.0.0:6000",
        "OUBLI_TENANT": "from-env",
        "OUBLI_KMS": "local",
        "VAULT_ADDR": "http://env:8200",
        "VAULT_TOKEN": "env-token",
    }
    config = ServerConfig.from_env(
        env,
        listen="127.0.0.1:7000",
        tenant="from-flag",
        kms="vault",
        vault_addr="http://flag:8200",
        vault_token=TOKEN,
        vault_mount="flag-mount",
    )
    assert config.listen == "127.0.0.1:7000"
    assert config.tenant == "from-flag"
    assert config.kms == "vault"
    assert config.vault == VaultSettings("http://flag:8200", TOKEN, "flag-mount", 10_000)


def test_unset_flags_keep_the_environment() -> None:
    config = ServerConfig.from_env({"OUBLI_LISTEN": "0.0.0.0:6000"}, listen=None, tenant=None)
    assert config.listen == "0.0.0.0:6000"
    assert config.tenant == "default"


def test_vault_flags_are_ignored_for_the_local_kms() -> None:
    config = ServerConfig.from_env({}, vault_addr="http://x:8200", vault_token=TOKEN)
    assert config.kms == "local"
    assert config.vault is None


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"OUBLI_KMS": "vault"}, id="neither"),
        pytest.param({"OUBLI_KMS": "vault", "VAULT_ADDR": "http://127.0.0.1:8200"}, id="no-token"),
        pytest.param({"OUBLI_KMS": "vault", "VAULT_TOKEN": TOKEN}, id="no-address"),
        pytest.param(
            {"OUBLI_KMS": "vault", "VAULT_ADDR": "", "VAULT_TOKEN": ""}, id="empty-values"
        ),
    ],
)
def test_vault_without_address_or_token_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env(env)
    assert "vault" in str(caught.value).lower()
    assert TOKEN not in str(caught.value)


def test_unknown_kms_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env({"OUBLI_KMS": "aws"})
    assert "kms" in str(caught.value)


@pytest.mark.parametrize("ttl", [MAX_TTL_SECONDS + 0.5, 61, 3600, 0, -1])
def test_cache_ttl_out_of_bounds_is_refused(ttl: float) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env({}, cache_ttl_seconds=ttl)
    assert "TTL" in str(caught.value)


def test_audit_seal_interval_from_the_environment() -> None:
    assert ServerConfig.from_env({}).audit_seal_seconds == 0.2
    assert ServerConfig.from_env({"OUBLI_AUDIT_SEAL_SECONDS": "30"}).audit_seal_seconds == 30
    with pytest.raises(ConfigError, match="seal interval"):
        ServerConfig.from_env({"OUBLI_AUDIT_SEAL_SECONDS": "0"})


def test_cache_ttl_at_the_cap_is_accepted() -> None:
    config = ServerConfig.from_env({}, cache_ttl_seconds=MAX_TTL_SECONDS)
    assert config.cache_ttl_seconds == MAX_TTL_SECONDS


def test_keystore_must_not_be_the_database(tmp_path: Path) -> None:
    db = tmp_path / "oubli.db"
    env = {"OUBLI_DATABASE_URL": f"sqlite:///{db}", "OUBLI_KEYSTORE_PATH": str(db)}
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env(env)
    assert "keystore" in str(caught.value)


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("sqlite+pysqlite:///{db}", id="explicit-driver"),
        pytest.param("sqlite:///{db}?timeout=5", id="query-string"),
    ],
)
def test_keystore_must_not_be_the_database_whatever_the_url_spelling(
    tmp_path: Path, template: str
) -> None:
    db = tmp_path / "oubli.db"
    env = {"OUBLI_DATABASE_URL": template.format(db=db), "OUBLI_KEYSTORE_PATH": str(db)}
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env(env)
    assert "keystore" in str(caught.value)


def test_keystore_beside_the_database_is_accepted(tmp_path: Path) -> None:
    env = {
        "OUBLI_DATABASE_URL": f"sqlite:///{tmp_path / 'oubli.db'}",
        "OUBLI_KEYSTORE_PATH": str(tmp_path / "keys.db"),
    }
    config = ServerConfig.from_env(env)
    assert config.resolved_keystore_path == (tmp_path / "keys.db").resolve()


def test_invalid_database_url_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env({"OUBLI_DATABASE_URL": "not a url at all"})
    assert "URL" in str(caught.value)


def test_keystore_must_not_be_the_default_database(tmp_path: Path) -> None:
    env = {"OUBLI_DATA_DIR": str(tmp_path), "OUBLI_KEYSTORE_PATH": str(tmp_path / "oubli.db")}
    with pytest.raises(ConfigError):
        ServerConfig.from_env(env)


def test_keystore_is_compared_after_resolving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    env = {
        "OUBLI_DATABASE_URL": f"sqlite:///{tmp_path / 'oubli.db'}",
        "OUBLI_KEYSTORE_PATH": "sub/../oubli.db",
    }
    with pytest.raises(ConfigError):
        ServerConfig.from_env(env)


@pytest.mark.parametrize("tenant", ["", "Acme", "-acme", "a" * 65, "acme eu"])
def test_bad_tenant_is_refused(tenant: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env({"OUBLI_TENANT": tenant})
    assert "tenant" in str(caught.value)


def test_repr_hides_the_vault_token() -> None:
    env = {"OUBLI_KMS": "vault", "VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_TOKEN": TOKEN}
    config = ServerConfig.from_env(env)
    assert config.vault is not None and config.vault.token == TOKEN
    for text in (repr(config), str(config), repr(config.vault), f"{config}"):
        assert TOKEN not in text
        assert "super-secret" not in text
    assert "http://127.0.0.1:8200" in repr(config)


def test_config_is_frozen() -> None:
    config = ServerConfig.from_env({})
    with pytest.raises(AttributeError):
        config.listen = "0.0.0.0:1"  # type: ignore[misc]


def test_cache_and_retention_settings_come_from_the_environment() -> None:
    config = ServerConfig.from_env(
        {
            "OUBLI_CACHE_ENTRIES": "50",
            "OUBLI_CACHE_TTL_SECONDS": "30",
            "OUBLI_KMS_BACKUP_RETENTION_DAYS": "14",
            "OUBLI_KMS": "vault",
            "VAULT_ADDR": "http://127.0.0.1:8200",
            "VAULT_TOKEN": "t",
            "OUBLI_VAULT_CACHE_SIZE": "500",
        }
    )
    assert (config.cache_entries, config.cache_ttl_seconds) == (50, 30.0)
    assert config.kms_backup_retention_days == 14
    assert config.vault is not None and config.vault.cache_size == 500


@pytest.mark.parametrize(
    "env",
    [
        {"OUBLI_CACHE_ENTRIES": "many"},
        {"OUBLI_CACHE_ENTRIES": "0"},
        {"OUBLI_CACHE_TTL_SECONDS": "61"},
        {"OUBLI_KMS_BACKUP_RETENTION_DAYS": "-1"},
    ],
)
def test_bad_numbers_are_config_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        ServerConfig.from_env(env)


def test_cryptoperiods_and_the_trim_delay_come_from_the_environment() -> None:
    defaults = ServerConfig.from_env({})
    assert defaults.cryptoperiods.subjects == timedelta(days=365)
    assert defaults.cryptoperiods.index == timedelta(days=730)
    assert defaults.key_trim_after == timedelta(days=7)  # the KMS backup retention
    config = ServerConfig.from_env(
        {
            "OUBLI_CRYPTOPERIOD_SUBJECT_KEYS_DAYS": "90",
            "OUBLI_CRYPTOPERIOD_DEKS_DAYS": "180",
            "OUBLI_KMS_BACKUP_RETENTION_DAYS": "30",
        }
    )
    assert config.cryptoperiods.subjects == timedelta(days=90)
    assert config.cryptoperiods.deks == timedelta(days=180)
    assert config.cryptoperiods.signing == timedelta(days=365)
    assert config.key_trim_after == timedelta(days=30)
    trim = ServerConfig.from_env({"OUBLI_KEY_TRIM_AFTER_DAYS": "0"})
    assert trim.key_trim_after == timedelta(0)


@pytest.mark.parametrize(
    "env",
    [
        {"OUBLI_CRYPTOPERIOD_INDEX_KEY_DAYS": "0"},
        {"OUBLI_CRYPTOPERIOD_SIGNING_KEY_DAYS": "-5"},
        {"OUBLI_CRYPTOPERIOD_BUCKET_KEYS_DAYS": "a year"},
        {"OUBLI_KEY_TRIM_AFTER_DAYS": "-1"},
    ],
)
def test_bad_cryptoperiods_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        ServerConfig.from_env(env)


def test_worker_processes_from_the_environment_and_the_flag() -> None:
    assert ServerConfig.from_env({}).workers == 1  # one process: no supervisor
    assert ServerConfig.from_env({"OUBLI_WORKERS": "4"}).workers == 4
    assert ServerConfig.from_env({"OUBLI_WORKERS": "4"}, workers=2).workers == 2


@pytest.mark.parametrize("workers", [0, -1, 65])
def test_worker_processes_out_of_bounds_are_refused(workers: int) -> None:
    with pytest.raises(ConfigError, match="worker process count"):
        ServerConfig.from_env({}, workers=workers)
