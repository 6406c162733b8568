"""The configuration file (`oubli serve --config`): every type, precedence flags >
environment > file > defaults, unknown keys, wrong types, invalid values, the [vault]
table, secrets, and the shipped example deploy/oubli.toml."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vault.app.cli import app
from vault.app.config import ConfigError, ServerConfig, VaultSettings
from vault.app.config_file import (
    REDACTED,
    effective_toml,
    load_config,
    read_config_file,
    setting_sources,
)

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy" / "oubli.toml"
VAULT_ENV = {"VAULT_TOKEN": "hvs.env-token"}


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "oubli.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def load(
    tmp_path: Path, text: str, env: dict[str, str] | None = None, **flags: object
) -> ServerConfig:
    return load_config(write(tmp_path, text), env or {}, **flags)


def refusal(tmp_path: Path, text: str, env: dict[str, str] | None = None, mode: int = 0o600) -> str:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, text, mode), env or {})
    return str(refused.value)


# --- types ---------------------------------------------------------------------------


def test_every_type_is_read_as_declared(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        listen = "0.0.0.0:6000"            # str
        max_workers = 4                    # int
        workers = 2                        # int
        cache_ttl_seconds = 30             # float, from a TOML integer
        drain_seconds = 12.5               # float
        accept_ledger_behind = true        # bool
        data_dir = "data"                  # Path, relative to the file
        catalog_path = "/etc/oubli/c.toml" # Path | None, absolute
        key_trim_after_days = 3            # int | None
        kms = "local"                      # Literal
        """.replace("        ", ""),
    )
    assert config.listen == "0.0.0.0:6000"
    assert config.max_workers == 4
    assert config.workers == 2
    assert config.cache_ttl_seconds == 30.0 and isinstance(config.cache_ttl_seconds, float)
    assert config.drain_seconds == 12.5
    assert config.accept_ledger_behind is True
    assert config.data_dir == tmp_path / "data"
    assert config.catalog_path == Path("/etc/oubli/c.toml")
    assert config.key_trim_after_days == 3
    assert config.kms == "local"
    assert config.vault is None


def test_the_vault_table(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        'kms = "vault"\n[vault]\naddress = "http://v:8200"\nmount = "oubli"\ncache_size = 0\n',
        VAULT_ENV,
    )
    assert config.vault == VaultSettings("http://v:8200", "hvs.env-token", "oubli", 0)


def test_the_vault_table_is_ignored_with_the_local_kms(tmp_path: Path) -> None:
    config = load(tmp_path, '[vault]\naddress = "http://v:8200"\n')
    assert config.kms == "local" and config.vault is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('max_workers = "4"', "max_workers: must be an integer, not a string"),
        ("max_workers = true", "max_workers: must be an integer, not a boolean"),
        ("max_workers = 4.0", "max_workers: must be an integer, not a float"),
        ('drain_seconds = "5"', "drain_seconds: must be a number, not a string"),
        ("accept_ledger_behind = 1", "accept_ledger_behind: must be true or false, not an integer"),
        ("listen = 50051", "listen: must be a string, not an integer"),
        ('data_dir = ""', "data_dir: must be a path (a non-empty string), not a string"),
        ("tls_cert = [1]", "tls_cert: must be a path (a non-empty string), not an array"),
        ('kms = "aws"', 'kms: must be one of "local", "vault", not a string'),
        ("listen = 2026-01-01", "listen: must be a string, not a date or time"),
        ('vault = "http://v"', "vault: must be a table ([vault]), not a string"),
        ("[vault]\ncache_size = 1.5", "vault.cache_size: must be an integer, not a float"),
        ("[vault]\nmount = {a = 1}", "vault.mount: must be a string, not a table"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(tmp_path: Path, line: str, expected: str) -> None:
    assert refusal(tmp_path, line + "\n") == f"{tmp_path / 'oubli.toml'}: {expected}"


# --- unknown keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("max_worker", "did you mean max_workers?"),
        ("OUBLI_MAX_WORKERS", "did you mean max_workers?"),
        ("drain_secs", "did you mean drain_seconds?"),
        ("vault_addr", "did you mean address in the [vault] table?"),
        ("vault_mount", "did you mean mount in the [vault] table?"),
        ("[vault]\nadress", "did you mean vault.address?"),
    ],
)
def test_an_unknown_key_suggests_the_closest_name(tmp_path: Path, key: str, hint: str) -> None:
    message = refusal(tmp_path, f'{key} = "x"\n')
    assert "unknown setting" in message and hint in message


def test_an_unknown_key_far_from_any_name_gets_no_suggestion(tmp_path: Path) -> None:
    assert refusal(tmp_path, "zzz = 1\n").endswith("zzz: unknown setting")


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    lines = refusal(tmp_path, "max_worker = 1\nlisten = 5\n[vault]\nmount = 3\n").splitlines()
    assert [re.sub(r"^.*?: ", "", line).split(":")[0] for line in lines] == [
        "max_worker",
        "listen",
        "vault.mount",
    ]
    assert all(line.startswith(f"{tmp_path / 'oubli.toml'}: ") for line in lines)


def test_a_file_that_is_not_toml_or_not_there(tmp_path: Path) -> None:
    assert "not valid TOML" in refusal(tmp_path, "listen = \n")
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        read_config_file(tmp_path / "absent.toml")


# --- invalid values (validate) ---------------------------------------------------------


def test_an_invalid_value_names_the_file_and_the_key(tmp_path: Path) -> None:
    assert refusal(tmp_path, 'tenant = "Bad Tenant"\n') == (
        f"{tmp_path / 'oubli.toml'}: tenant: tenant must match [a-z0-9][a-z0-9_-]{{0,63}}"
    )


def test_several_invalid_values_are_each_named(tmp_path: Path) -> None:
    message = refusal(
        tmp_path, 'tenant = "Bad"\ncache_ttl_seconds = 120\ndrain_seconds = -1\nlisten = "x:1"\n'
    )
    keys = [line.split(": ")[1] for line in message.splitlines()]
    assert sorted(keys) == ["cache_ttl_seconds", "drain_seconds", "tenant"]
    assert "drain period must be in [0, 3600] seconds" in message


def test_a_setting_missing_with_another_is_blamed_on_the_one_given(tmp_path: Path) -> None:
    message = refusal(tmp_path, 'tls_cert = "server.pem"\n')
    assert message.endswith("tls_cert: TLS needs both a certificate and its key")


def test_vault_without_a_token_is_blamed_on_kms(tmp_path: Path) -> None:
    message = refusal(tmp_path, 'kms = "vault"\n[vault]\naddress = "http://v:8200"\n')
    assert message.endswith("kms: --kms vault needs a Vault address and token")


def test_an_invalid_environment_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    message = refusal(tmp_path, "max_workers = 4\n", env={"OUBLI_CACHE_ENTRIES": "0"})
    assert message == "cache entries and worker count must be >= 1"
    message = refusal(tmp_path, "max_workers = 4\n", env={"OUBLI_DRAIN_SECONDS": "x"})
    assert message == "OUBLI_DRAIN_SECONDS is not a valid value"


# --- precedence ------------------------------------------------------------------------


def test_precedence_flags_then_environment_then_file_then_defaults(tmp_path: Path) -> None:
    text = 'listen = "file:1"\nmetrics_listen = "file:2"\ntenant = "file"\n'
    env = {"OUBLI_LISTEN": "env:1", "OUBLI_METRICS_LISTEN": "env:2"}
    config = load(tmp_path, text, env, listen="flag:1")
    assert config.listen == "flag:1"  # flag > environment > file
    assert config.metrics_listen == "env:2"  # environment > file
    assert config.tenant == "file"  # file > default
    assert config.max_workers == 16  # default
    sources = setting_sources(read_config_file(tmp_path / "oubli.toml"), env, {"listen": "x"})
    assert sources["listen"] == "flag"
    assert sources["metrics_listen"] == "environment (OUBLI_METRICS_LISTEN)"
    assert sources["tenant"] == "file"
    assert "max_workers" not in sources


def test_a_setting_without_a_variable_takes_the_file_unless_flagged(tmp_path: Path) -> None:
    assert load(tmp_path, "accept_ledger_behind = true\n").accept_ledger_behind is True
    assert load(
        tmp_path, "accept_ledger_behind = true\n", accept_ledger_behind=None
    ).accept_ledger_behind


def test_precedence_in_the_vault_table(tmp_path: Path) -> None:
    text = (
        'kms = "vault"\n[vault]\naddress = "http://file:8200"\nmount = "file"\n'
        'cache_size = 0\ntoken = "hvs.file-token"\n'
    )
    config = load(tmp_path, text)
    assert config.vault == VaultSettings("http://file:8200", "hvs.file-token", "file", 0)
    env = {"VAULT_ADDR": "http://env:8200", "VAULT_TOKEN": "hvs.env", "OUBLI_VAULT_MOUNT": "env"}
    config = load(tmp_path, text, env)
    assert config.vault == VaultSettings("http://env:8200", "hvs.env", "env", 0)
    config = load(tmp_path, text, env, vault_addr="http://flag:8200", vault_mount="flag")
    assert config.vault == VaultSettings("http://flag:8200", "hvs.env", "flag", 0)
    # The environment's cache size wins over the file's 0, the default over nothing.
    config = load(tmp_path, text, {"OUBLI_VAULT_CACHE_SIZE": "500"})
    assert config.vault is not None and config.vault.cache_size == 500


def test_the_file_can_choose_vault_and_the_environment_local(tmp_path: Path) -> None:
    text = 'kms = "vault"\n[vault]\naddress = "http://v:8200"\n'
    assert load(tmp_path, text, {"OUBLI_KMS": "local"}).vault is None


# --- secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_token_in_a_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    text = 'kms = "vault"\n[vault]\naddress = "http://v"\ntoken = "hvs.SECRET-VALUE"\n'
    message = refusal(tmp_path, text, mode=mode)
    assert "vault.token: a secret, in a file other users may read" in message
    assert f"chmod 600 {tmp_path / 'oubli.toml'}" in message
    assert "SECRET-VALUE" not in message


def test_a_token_in_a_private_file_is_used_and_never_printed(tmp_path: Path) -> None:
    text = 'kms = "vault"\n[vault]\naddress = "http://v"\ntoken = "hvs.SECRET-VALUE"\n'
    config = load(tmp_path, text)
    assert config.vault is not None and config.vault.token == "hvs.SECRET-VALUE"
    assert "SECRET-VALUE" not in effective_toml(config) + repr(config)
    assert f'token = "{REDACTED}"' in effective_toml(config)


def test_a_database_password_counts_as_a_secret(tmp_path: Path) -> None:
    text = 'database_url = "postgresql+psycopg://oubli:hunter2@db/oubli"\n'
    message = refusal(tmp_path, text, mode=0o644)
    assert "database_url: a secret" in message and "hunter2" not in message
    config = load(tmp_path, text)
    assert "hunter2" not in effective_toml(config)
    assert "postgresql+psycopg://oubli:***@db/oubli" in effective_toml(config)


def test_a_wrongly_typed_secret_is_not_echoed(tmp_path: Path) -> None:
    message = refusal(tmp_path, "[vault]\ntoken = 123456789\n")
    assert "vault.token: must be a string, not an integer" in message
    assert "123456789" not in message


# --- generic over the dataclasses ------------------------------------------------------


def _sample(config: ServerConfig) -> ServerConfig:
    """``config`` with every optional setting given a value."""
    return dataclasses.replace(
        config,
        keystore_path=Path("/k/keys.db"),
        catalog_path=Path("/c.toml"),
        callers_path=Path("/callers.toml"),
        tokens_path=Path("/tokens.toml"),
        tls_cert=Path("/s.pem"),
        tls_key=Path("/s.key"),
        tls_client_ca=Path("/ca.pem"),
        ledger_mirror_dir=Path("/mirror"),
        key_trim_after_days=2,
        vault=VaultSettings("http://v:8200", "hvs.x", "m", 77),
        kms="vault",
    )


def test_the_printed_configuration_loads_back_as_itself(tmp_path: Path) -> None:
    """--check prints a valid file: every setting of ServerConfig and VaultSettings,
    found by dataclasses.fields, written and read back."""
    config = _sample(ServerConfig())
    text = effective_toml(config)
    for f in dataclasses.fields(ServerConfig):
        assert re.search(rf"^(# )?{f.name}\b|^\[{f.name}\]$", text, re.M), f.name
    for f in dataclasses.fields(VaultSettings):
        assert re.search(rf"^(# )?{f.name}\b", text, re.M), f.name
    loaded = load(tmp_path, text)
    assert loaded.vault is not None and config.vault is not None
    assert loaded == dataclasses.replace(
        config,
        data_dir=config.data_dir.absolute(),
        vault=dataclasses.replace(config.vault, token=REDACTED),
    )


def test_every_setting_is_documented_in_the_example() -> None:
    """deploy/oubli.toml names each setting, set or commented out with its meaning."""
    text = EXAMPLE.read_text()
    vault_part = text.split("[vault]", 1)[1]
    for f in dataclasses.fields(ServerConfig):
        if f.name != "vault":
            assert re.search(rf"^(# )?{f.name} = ", text, re.M), f.name
    for f in dataclasses.fields(VaultSettings):
        assert re.search(rf"^(# )?{f.name} = ", vault_part, re.M), f.name


def test_the_example_loads(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, VAULT_ENV)
    assert config.kms == "vault" and config.vault is not None
    assert config.vault.address == "https://vault.internal:8200"
    assert config.vault.token == "hvs.env-token"  # the environment's: none in the file
    assert config.drain_seconds == 25.0
    assert config.tls_client_ca == Path("/etc/oubli/tls/clients-ca.pem")
    # The commented-out keys are valid too, uncommented.
    uncommented = re.sub(r"^# (\w+ = )", r"\1", EXAMPLE.read_text(), flags=re.M)
    uncommented = uncommented.replace('token = "..."', 'token = "hvs.file"')
    # The other auth methods' settings are alternatives to the token: one method at a time.
    alternatives = ("token_file", "role_id_file", "secret_id_file", "k8s_role", "k8s_jwt_file")
    uncommented = re.sub(rf"^({'|'.join(alternatives)}) = .*$", "", uncommented, flags=re.M)
    assert tomllib.loads(uncommented)["vault"]["token"] == "hvs.file"
    config = load_config(write(tmp_path, uncommented), {})
    assert config.key_trim_after_days == 7 and config.vault is not None
    assert config.vault.token == "hvs.file"


# --- the command line ------------------------------------------------------------------


def test_serve_check_prints_the_effective_configuration(tmp_path: Path) -> None:
    path = write(tmp_path, 'tenant = "acme"\nmax_workers = 4\n')
    result = CliRunner(env={"OUBLI_MAX_WORKERS": "6"}).invoke(
        app, ["serve", "--config", str(path), "--check", "--listen", "127.0.0.1:7001"]
    )
    assert result.exit_code == 0, result.output
    assert 'listen = "127.0.0.1:7001"  # flag' in result.output
    assert "max_workers = 6  # environment (OUBLI_MAX_WORKERS)" in result.output
    assert 'tenant = "acme"  # file' in result.output
    assert "drain_seconds = 5.0  # default" in result.output
    assert not (tmp_path / "oubli-data").exists()  # nothing started


def test_serve_refuses_a_bad_file_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "max_worker = 4\n")
    result = CliRunner(env={"OUBLI_CONFIG": str(path)}).invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "unknown setting" in result.output and "max_workers" in result.output


@pytest.mark.openbao  # `oubli dev` starts its own OpenBao
def test_dev_takes_a_file_but_keeps_its_own_data_and_kms(tmp_path: Path) -> None:
    from oubli_client import OubliClient
    from tests.integration.processes import ServerProcess

    path = write(
        tmp_path,
        'tenant = "acme"\ndrain_seconds = 1\n'
        f'database_url = "sqlite:///{tmp_path}/never.db"\nkms = "local"\n'
        '[vault]\naddress = "http://nowhere:1"\nmount = "transit-dev"\n',
    )
    with (
        ServerProcess(tmp_path / "dev", "dev", "--config", str(path)) as server,
        OubliClient(server.target, token=server.token) as client,
    ):
        subject = client.create_subject()
        assert client.shred_subject(subject.subject_id).kms_backend == "vault-transit"
        code = server.stop()
    assert code == 0
    log = server.log()
    assert "ignores these keys" in log and "database_url, kms, vault.address" in log
    assert '"drain_seconds": 1.0' in log
    assert not (tmp_path / "never.db").exists()
