"""Vault authentication (kms/vault_auth.py): the token's life, then the wiring.

The lifecycle runs first against a fake Vault driven by a fake clock (renewal at 2/3
of the ttl, the max ttl, re-login, 403s, lost and restored credentials), then against
the real OpenBao: a static token of short ttl kept alive by renewal, an agent's token
file replaced under a running client, and Vault's TLS verified with a CA bundle
(``bao server -dev-tls``). AppRole on real OpenBao, with the shipped policy, is in
tests/integration/test_vault_policy.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests

from kms.base import KmsAccessDenied, KmsUnavailable
from kms.vault_auth import (
    AppRole,
    AuthLost,
    Kubernetes,
    StaticToken,
    TokenFile,
    VaultAuth,
    VaultTls,
)
from kms.vault_transit import VaultTransitKeyManager
from vault.app.config import ConfigError, ServerConfig, VaultSettings
from vault.app.openbao_process import OpenBaoDevServer, find_bao, free_port

# --- a fake Vault and clock ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class _Lease:
    expires: float
    creation_ttl: int
    max_expires: float
    renewable: bool


class FakeVault:
    """Tokens with ttl and max ttl on a fake clock; AppRole and Kubernetes logins."""

    def __init__(self, clock: Callable[[], float], ttl: int = 30, max_ttl: int = 90) -> None:
        self.clock = clock
        self.ttl = ttl
        self.max_ttl = max_ttl
        self.tokens: dict[str, _Lease] = {}
        self.secret_ids = {"secret-1"}
        self.role_id = "role-1"
        self.jwts = {"jwt-1"}
        self.down = False
        self.renew_calls = 0
        self.logins: list[tuple[str, str]] = []  # (method, mount)

    def issue(self, ttl: int | None = None, max_ttl: int | None = None) -> str:
        token = "s." + secrets.token_hex(8)
        ttl = self.ttl if ttl is None else ttl
        max_ttl = self.max_ttl if max_ttl is None else max_ttl
        now = self.clock()
        self.tokens[token] = _Lease(now + ttl, ttl, now + max_ttl, True)
        return token

    def valid(self, token: str) -> _Lease | None:
        lease = self.tokens.get(token)
        if lease is None or self.clock() >= lease.expires:
            return None
        return lease

    def check_up(self) -> None:
        if self.down:
            raise requests.exceptions.ConnectionError("refused")


class _TokenApi:
    def __init__(self, vault: FakeVault, client: FakeClient) -> None:
        self.vault, self.client = vault, client

    def lookup_self(self) -> dict[str, Any]:
        self.vault.check_up()
        lease = self.vault.valid(self.client.token)
        if lease is None:
            raise hvac.exceptions.Forbidden("permission denied")
        ttl = int(lease.expires - self.vault.clock())
        return {"data": {"ttl": ttl, "creation_ttl": lease.creation_ttl, "renewable": True}}

    def renew_self(self) -> dict[str, Any]:
        self.vault.check_up()
        self.vault.renew_calls += 1
        lease = self.vault.valid(self.client.token)
        if lease is None:
            raise hvac.exceptions.Forbidden("permission denied")
        now = self.vault.clock()
        lease.expires = min(now + lease.creation_ttl, lease.max_expires)
        return {"auth": {"lease_duration": int(lease.expires - now)}}


class _AppRoleApi:
    def __init__(self, vault: FakeVault) -> None:
        self.vault = vault

    def login(self, role_id: str, secret_id: str, use_token: bool, mount_point: str) -> Any:
        assert use_token is False
        self.vault.check_up()
        self.vault.logins.append(("approle", mount_point))
        if role_id != self.vault.role_id or secret_id not in self.vault.secret_ids:
            raise hvac.exceptions.InvalidRequest("invalid role or secret ID")
        return {"auth": {"client_token": self.vault.issue()}}


class _KubernetesApi:
    def __init__(self, vault: FakeVault) -> None:
        self.vault = vault

    def login(self, role: str, jwt: str, use_token: bool, mount_point: str) -> Any:
        assert use_token is False and role == "oubli"
        self.vault.logins.append(("kubernetes", mount_point))
        if jwt not in self.vault.jwts:
            raise hvac.exceptions.Forbidden("permission denied")
        return {"auth": {"client_token": self.vault.issue()}}


class FakeClient:
    def __init__(self, vault: FakeVault) -> None:
        self.token = ""
        self.auth = type("Auth", (), {})()
        self.auth.token = _TokenApi(vault, self)
        self.auth.approle = _AppRoleApi(vault)
        self.auth.kubernetes = _KubernetesApi(vault)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock) -> FakeVault:
    return FakeVault(clock)


def _auth(method: Any, fake: FakeVault, clock: Clock, events: list[Any] | None = None) -> VaultAuth:
    def record(name: str, **fields: object) -> None:
        if events is not None:
            events.append((name, fields))

    auth = VaultAuth(method, clock=clock, on_event=record)
    auth.bind(FakeClient(fake))
    return auth


def _approle_files(tmp_path: Path, secret_id: str = "secret-1") -> tuple[Path, Path]:
    role, secret = tmp_path / "role-id", tmp_path / "secret-id"
    role.write_text("role-1\n")
    secret.write_text(secret_id + "\n")
    return role, secret


# --- the lifecycle on a fake clock ---------------------------------------------------


def test_a_static_token_is_renewed_at_two_thirds_until_its_max_ttl(
    fake: FakeVault, clock: Clock
) -> None:
    token = fake.issue(ttl=30, max_ttl=90)
    events: list[Any] = []
    auth = _auth(StaticToken(token), fake, clock, events)
    assert auth.token() == token
    clock.now += 19
    auth.refresh_if_due()
    assert fake.renew_calls == 0  # not yet at 2/3 of 30 s
    for elapsed in (20, 40, 60, 80, 85):  # far beyond the first ttl
        clock.now = 1000 + elapsed
        auth.refresh_if_due()
        assert auth.token() == token
    assert fake.renew_calls == 4  # 20, 40, 60, 80 s: the last one capped at the max ttl
    assert ("vault_token_max_ttl", {"method": "token", "ttl": 10}) in events
    clock.now = 1000 + 91
    with pytest.raises(AuthLost) as lost:
        auth.token()
    assert str(lost.value) == "Vault authentication lost"
    assert token not in repr(lost.value) + lost.value.reason + repr(auth)


def test_approle_renews_then_logs_in_again_at_the_max_ttl(
    fake: FakeVault, clock: Clock, tmp_path: Path
) -> None:
    role, secret = _approle_files(tmp_path)
    auth = _auth(AppRole(role, secret, mount="approle-x"), fake, clock)
    first = auth.token()
    assert fake.logins == [("approle", "approle-x")]
    seen = {first}
    for _ in range(12):  # 12 x 21 s: several max ttls of 90 s
        clock.now += 21
        auth.refresh_if_due()
        seen.add(auth.token())
    assert auth.renewals >= 6
    assert len(seen) >= 3  # a new token after each max ttl
    assert fake.valid(auth.token()) is not None  # never an expired one


def test_a_rotated_secret_id_is_read_at_the_next_login(
    fake: FakeVault, clock: Clock, tmp_path: Path
) -> None:
    role, secret = _approle_files(tmp_path)
    auth = _auth(AppRole(role, secret), fake, clock)
    old = auth.token()
    fake.secret_ids = {"secret-2"}  # the operator rotated it: the old one is gone
    secret.write_text("secret-2\n")
    fake.tokens.pop(old)  # and revoked the token
    assert auth.denied(old) is True
    assert auth.token() != old
    assert auth.logins == 2


def test_a_denied_request_with_a_valid_token_is_a_policy_refusal(
    fake: FakeVault, clock: Clock, tmp_path: Path
) -> None:
    role, secret = _approle_files(tmp_path)
    auth = _auth(AppRole(role, secret), fake, clock)
    token = auth.token()
    assert auth.denied(token) is False  # the token is fine: the policy said no
    assert auth.logins == 1 and auth.token() == token


def test_lost_credentials_fail_closed_and_recover_by_themselves(
    fake: FakeVault, clock: Clock, tmp_path: Path
) -> None:
    role, secret = _approle_files(tmp_path)
    events: list[Any] = []
    auth = _auth(AppRole(role, secret), fake, clock, events)
    token = auth.token()
    fake.secret_ids.clear()  # secret id destroyed
    fake.tokens.pop(token)  # token revoked
    with pytest.raises(AuthLost):
        auth.denied(token)
    logins = len(fake.logins)
    with pytest.raises(AuthLost):
        auth.token()  # within the retry pause: refused at once, Vault not asked
    assert len(fake.logins) == logins
    fake.secret_ids.add("secret-1")  # the operator restored it
    clock.now += 1.5
    assert auth.token()
    names = [name for name, _ in events]
    assert names.count("vault_auth_lost") == 1 and "vault_auth_restored" in names
    for _, fields in events:
        assert not any("secret-1" in str(v) or "s." in str(v) for v in fields.values())


def test_a_missing_secret_id_file_is_lost_not_a_crash(
    fake: FakeVault, clock: Clock, tmp_path: Path
) -> None:
    role, secret = _approle_files(tmp_path)
    secret.unlink()
    auth = _auth(AppRole(role, secret), fake, clock)
    with pytest.raises(AuthLost) as lost:
        auth.token()
    assert lost.value.reason == "secret id file unreadable"
    assert isinstance(lost.value, KmsUnavailable)


def test_vault_down_at_renewal_keeps_the_valid_token_and_retries(
    fake: FakeVault, clock: Clock, tmp_path: Path
) -> None:
    role, secret = _approle_files(tmp_path)
    auth = _auth(AppRole(role, secret), fake, clock)
    token = auth.token()
    fake.down = True
    clock.now += 21
    auth.refresh_if_due()
    assert auth.token() == token  # still valid for 9 s: used as it is
    fake.down = False
    clock.now += 1.5
    auth.refresh_if_due()
    assert auth.renewals == 1 and auth.token() == token


def test_vault_down_at_login_is_unavailable_not_lost(fake: FakeVault, clock: Clock) -> None:
    fake.down = True
    auth = _auth(StaticToken(fake.issue()), fake, clock)
    with pytest.raises(KmsUnavailable) as caught:
        auth.token()
    assert "unreachable" in str(caught.value)


def test_a_token_file_is_read_again_when_it_changes(
    fake: FakeVault, clock: Clock, tmp_path: Path
) -> None:
    sink = tmp_path / "sink"
    first = fake.issue()
    sink.write_text(first)
    auth = _auth(TokenFile(sink), fake, clock)
    assert auth.token() == first
    assert auth.token() == first and auth.logins == 1  # unchanged: not read again
    second = fake.issue()
    tmp = tmp_path / "sink.tmp"
    tmp.write_text(second)
    os.replace(tmp, sink)  # as an agent writes it
    assert auth.token() == second
    clock.now += 25
    auth.refresh_if_due()
    assert fake.renew_calls == 0  # the agent renews, not oubli


def test_a_stale_token_file_is_lost_until_the_agent_writes_a_new_one(
    fake: FakeVault, clock: Clock, tmp_path: Path
) -> None:
    sink = tmp_path / "sink"
    token = fake.issue()
    sink.write_text(token)
    auth = _auth(TokenFile(sink), fake, clock)
    assert auth.token() == token
    fake.tokens.pop(token)
    with pytest.raises(AuthLost):
        auth.denied(token)
    sink.write_text(fake.issue())
    clock.now += 1.5
    assert auth.token() != token


def test_kubernetes_reads_the_jwt_at_each_login(
    fake: FakeVault, clock: Clock, tmp_path: Path
) -> None:
    jwt = tmp_path / "token"
    jwt.write_text("jwt-1")
    auth = _auth(Kubernetes("oubli", jwt, mount="k8s/prod"), fake, clock)
    first = auth.token()
    assert fake.logins == [("kubernetes", "k8s/prod")]
    fake.jwts = {"jwt-2"}
    jwt.write_text("jwt-2")  # the kubelet rotated the projected token
    fake.tokens.pop(first)
    assert auth.denied(first) is True
    assert auth.token() != first


def test_the_background_thread_renews_an_idle_token() -> None:
    fake = FakeVault(time.monotonic)
    token = fake.issue(ttl=2, max_ttl=1000)
    auth = VaultAuth(StaticToken(token))
    auth.bind(FakeClient(fake))
    auth.token()
    auth.start()
    try:
        time.sleep(4.5)  # more than twice the ttl, no request at all
    finally:
        auth.stop()
    assert fake.renew_calls >= 3
    assert fake.valid(token) is not None


# --- configuration ------------------------------------------------------------------


def _vault_config(**env: str) -> ServerConfig:
    return ServerConfig.from_env({"OUBLI_KMS": "vault", "VAULT_ADDR": "https://v:8200", **env})


def test_the_token_default_is_unchanged() -> None:
    config = _vault_config(VAULT_TOKEN="t")
    assert config.vault is not None
    assert config.vault.auth == "token" and isinstance(config.vault.auth_method(), StaticToken)
    assert "'t'" not in repr(config.vault)


def test_every_variable_reaches_the_settings(tmp_path: Path) -> None:
    config = _vault_config(
        OUBLI_VAULT_AUTH="approle",
        OUBLI_VAULT_ROLE_ID_FILE="/r",
        OUBLI_VAULT_SECRET_ID_FILE="/s",
        OUBLI_VAULT_AUTH_MOUNT="approle-prod",
        VAULT_CACERT="/ca.pem",
        VAULT_CLIENT_CERT="/c.pem",
        VAULT_CLIENT_KEY="/k.pem",
        VAULT_NAMESPACE="team-a",
    )
    vault = config.vault
    assert vault is not None
    method = vault.auth_method()
    assert isinstance(method, AppRole)
    assert (method.role_id_file, method.secret_id_file, method.mount) == (
        Path("/r"),
        Path("/s"),
        "approle-prod",
    )
    assert vault.tls == VaultTls(Path("/ca.pem"), Path("/c.pem"), Path("/k.pem"))
    assert vault.namespace == "team-a"
    k8s = _vault_config(OUBLI_VAULT_AUTH="kubernetes", OUBLI_VAULT_K8S_ROLE="oubli").vault
    assert k8s is not None
    method = k8s.auth_method()
    assert isinstance(method, Kubernetes) and method.mount == "kubernetes"
    assert str(method.jwt_file) == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    sink = _vault_config(OUBLI_VAULT_AUTH="token-file", OUBLI_VAULT_TOKEN_FILE="/sink").vault
    assert sink is not None and isinstance(sink.auth_method(), TokenFile)


def test_flags_win_over_the_environment() -> None:
    config = ServerConfig.from_env(
        {"OUBLI_KMS": "vault", "VAULT_ADDR": "https://v", "OUBLI_VAULT_AUTH": "kubernetes"},
        vault_auth="token-file",
        vault_token_file=Path("/flag"),
    )
    assert config.vault is not None and config.vault.token_file == Path("/flag")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OUBLI_VAULT_AUTH": "ldap"}, "must be one of"),
        ({}, "Vault address and token"),
        ({"OUBLI_VAULT_AUTH": "approle"}, "approle needs OUBLI_VAULT_ROLE_ID_FILE"),
        (
            {"OUBLI_VAULT_AUTH": "approle", "OUBLI_VAULT_ROLE_ID_FILE": "/r"},
            "OUBLI_VAULT_SECRET_ID_FILE",
        ),
        ({"OUBLI_VAULT_AUTH": "token-file"}, "needs OUBLI_VAULT_TOKEN_FILE"),
        ({"OUBLI_VAULT_AUTH": "kubernetes"}, "needs OUBLI_VAULT_K8S_ROLE"),
        (
            {"OUBLI_VAULT_AUTH": "token-file", "OUBLI_VAULT_TOKEN_FILE": "/s", "VAULT_TOKEN": "t"},
            "VAULT_TOKEN / --vault-token is set",
        ),
        ({"VAULT_TOKEN": "t", "OUBLI_VAULT_ROLE_ID_FILE": "/r"}, "OUBLI_VAULT_ROLE_ID_FILE"),
        ({"VAULT_TOKEN": "t", "OUBLI_VAULT_AUTH_MOUNT": "x"}, "OUBLI_VAULT_AUTH_MOUNT is set"),
        ({"VAULT_TOKEN": "t", "VAULT_CLIENT_CERT": "/c"}, "needs its key"),
        (
            {
                "OUBLI_VAULT_AUTH": "approle",
                "OUBLI_VAULT_ROLE_ID_FILE": "/r",
                "OUBLI_VAULT_SECRET_ID_FILE": "/s",
                "OUBLI_VAULT_AUTH_MOUNT": "/bad//mount",
            },
            "must be a mount path",
        ),
    ],
)
def test_each_bad_combination_has_its_own_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _vault_config(**env)


def test_a_ca_bundle_needs_https() -> None:
    with pytest.raises(ConfigError, match="https"):
        ServerConfig.from_env(
            {"OUBLI_KMS": "vault", "VAULT_ADDR": "http://v", "VAULT_TOKEN": "t"},
            vault_cacert=Path("/ca.pem"),
        )


def test_tls_and_namespace_reach_both_hvac_clients() -> None:
    made: list[dict[str, Any]] = []

    def factory(**kwargs: Any) -> hvac.Client:
        made.append(kwargs)
        return hvac.Client(**kwargs)

    settings = VaultSettings(
        address="https://vault:8200",
        token="t",
        ca_cert=Path("/ca.pem"),
        client_cert=Path("/c.pem"),
        client_key=Path("/k.pem"),
        namespace="team-a",
    ).validate()
    kms = VaultTransitKeyManager(
        settings.address,
        auth=VaultAuth(settings.auth_method()),
        tls=settings.tls,
        namespace=settings.namespace,
        client_factory=factory,
    )
    kms.close()
    assert len(made) == 2  # the Transit client and the auth client
    for kwargs in made:
        assert kwargs["verify"] == "/ca.pem"
        assert kwargs["cert"] == ("/c.pem", "/k.pem")
        assert kwargs["namespace"] == "team-a"
        assert kwargs["token"] == ""  # never VAULT_TOKEN or ~/.vault-token by accident


# --- real OpenBao ---------------------------------------------------------------------


def _root(openbao: OpenBaoDevServer) -> hvac.Client:
    return hvac.Client(url=openbao.address, token=openbao.token)


@pytest.mark.timeout(60)
def test_a_short_ttl_static_token_lives_on_through_renewals(openbao: OpenBaoDevServer) -> None:
    root = _root(openbao)
    mount = f"transit-{secrets.token_hex(4)}"
    root.sys.enable_secrets_engine("transit", path=mount)
    token = root.auth.token.create(policies=["root"], ttl="3s", explicit_max_ttl="60s")["auth"][
        "client_token"
    ]
    auth = VaultAuth(StaticToken(token))
    kms = VaultTransitKeyManager(openbao.address, auth=auth, mount_point=mount)
    try:
        kms.ensure_mount()
        auth.start()
        key_id = "k" + secrets.token_hex(6)
        kms.create_key(key_id)
        dek = kms.generate_data_key(key_id)
        for _ in range(3):  # idle beyond the ttl, three times over
            time.sleep(3.2)
            assert kms.unwrap(key_id, dek.wrapped) == dek.plaintext
        assert auth.renewals >= 3 and auth.logins == 1
        ttl = root.auth.token.lookup(token)["data"]["ttl"]
        assert 0 < ttl <= 3
    finally:
        kms.close()


def test_an_agents_token_file_is_picked_up_when_replaced(
    openbao: OpenBaoDevServer, tmp_path: Path
) -> None:
    root = _root(openbao)
    mount = f"transit-{secrets.token_hex(4)}"
    root.sys.enable_secrets_engine("transit", path=mount)

    def new_token() -> str:
        return str(root.auth.token.create(policies=["root"], ttl="1h")["auth"]["client_token"])

    sink = tmp_path / "agent-sink"
    first = new_token()
    sink.write_text(first)
    auth = VaultAuth(TokenFile(sink))
    kms = VaultTransitKeyManager(openbao.address, auth=auth, mount_point=mount)
    try:
        key_id = "k" + secrets.token_hex(6)
        kms.create_key(key_id)
        second = new_token()
        staged = tmp_path / "agent-sink.tmp"
        staged.write_text(second)
        os.replace(staged, sink)
        root.auth.token.revoke(first)  # the agent's old token is gone
        assert kms.key_exists(key_id)  # no 403: the new file was read first
        assert auth.logins == 2
        # The agent loses its token and has not written a new one yet: fail closed...
        root.auth.token.revoke(second)
        with pytest.raises(KmsUnavailable, match="Vault authentication lost"):
            kms.key_exists(key_id)
        # ...until it does.
        sink.write_text(new_token())
        assert kms.key_exists(key_id)
    finally:
        kms.close()


def test_a_valid_token_refused_by_policy_stays_a_refusal(openbao: OpenBaoDevServer) -> None:
    root = _root(openbao)
    root.sys.create_or_update_policy("nothing", 'path "sys/nothing" { capabilities = ["read"] }')
    token = root.auth.token.create(policies=["nothing"], ttl="1h")["auth"]["client_token"]
    auth = VaultAuth(StaticToken(token))
    kms = VaultTransitKeyManager(openbao.address, auth=auth)
    try:
        with pytest.raises(KmsAccessDenied):
            kms.key_exists("k1")
        assert auth.logins == 1  # looked up, found valid: no new login
    finally:
        kms.close()


@pytest.fixture
def tls_openbao(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """``bao server -dev-tls``: its address, root token and CA bundle."""
    port, token = free_port(), "dev-" + secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["BAO_DEV_ROOT_TOKEN_ID"] = token
    with (tmp_path / "bao-tls.log").open("wb") as log:
        process = subprocess.Popen(
            [
                find_bao(),
                "server",
                "-dev",
                "-dev-tls",
                f"-dev-tls-cert-dir={tmp_path}",
                "-dev-no-store-token",
                f"-dev-listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    ca = tmp_path / "vault-ca.pem"
    address = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "bao-tls.log").read_text()
            try:
                if ca.exists() and requests.get(f"{address}/v1/sys/health", verify=str(ca)).ok:
                    break
            except requests.exceptions.RequestException:
                pass
            assert time.monotonic() < deadline, "OpenBao -dev-tls did not start"
            time.sleep(0.1)
        yield address, token, ca
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.openbao
def test_vault_tls_is_verified_with_the_ca_bundle(tls_openbao: tuple[str, str, Path]) -> None:
    address, token, ca = tls_openbao
    kms = VaultTransitKeyManager(address, token, tls=VaultTls(ca_cert=ca))
    try:
        kms.ensure_mount()
        key_id = "k" + secrets.token_hex(6)
        kms.create_key(key_id)
        assert kms.key_exists(key_id)
    finally:
        kms.close()
    # Without the CA bundle the server's certificate is not trusted: no request is made.
    untrusted = VaultTransitKeyManager(address, token)
    try:
        with pytest.raises(KmsUnavailable, match="unreachable"):
            untrusted.key_exists("k1")
    finally:
        untrusted.close()
