"""oubli on real OpenBao with AppRole and the shipped least-privilege policy.

The policy installed is deploy/vault/oubli-policy.hcl itself. The AppRole's tokens live
4 s and at most 12 s, so a run of ~16 s crosses several renewals and re-logins:

- a real ``oubli serve --vault-auth approle`` process serves create, store, read, export,
  rotate-keys, shred and audit checkpoints throughout; then its credentials are taken
  away (secret id destroyed, tokens revoked): calls answer UNAVAILABLE; a new secret id
  written to the file: calls succeed again, no restart;
- the KMS backend logged in with that policy does everything oubli asks of Transit, and
  nothing more: no sys/policy, no other mount, no key export or backup, no key listing,
  no mount listing.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import hvac
import hvac.exceptions
import pytest

from kms.base import KmsAccessDenied
from kms.vault_auth import AppRole, VaultAuth
from kms.vault_transit import VaultTransitKeyManager
from oubli_client import OubliClient
from oubli_client.errors import OubliClientError
from tests.integration.processes import ServerProcess
from vault.app.openbao_process import OpenBaoDevServer

POLICY_FILE = Path(__file__).resolve().parents[2] / "deploy" / "vault" / "oubli-policy.hcl"
CONTACT = {"email": "approle@example.org", "city": "Gent"}


class AppRoleSetup:
    """An OpenBao dev server set up as an operator would for oubli."""

    def __init__(self, bao: OpenBaoDevServer, workdir: Path) -> None:
        self.bao = bao
        self.root = hvac.Client(url=bao.address, token=bao.token)
        self.root.sys.enable_secrets_engine("transit", path="transit")
        self.root.sys.create_or_update_policy("oubli", POLICY_FILE.read_text())
        self.root.sys.enable_auth_method("approle", path="approle")
        self.root.auth.approle.create_or_update_approle(
            "oubli",
            token_policies=["oubli"],
            token_no_default_policy=True,  # the policy file alone must be enough
            token_ttl="4s",
            token_max_ttl="12s",
            token_type="service",
        )
        role_id = self.root.auth.approle.read_role_id("oubli")["data"]["role_id"]
        self.role_id_file = workdir / "role-id"
        self.role_id_file.write_text(role_id)
        self.secret_id_file = workdir / "secret-id"
        self.new_secret_id()

    def new_secret_id(self) -> str:
        secret_id = str(self.root.auth.approle.generate_secret_id("oubli")["data"]["secret_id"])
        self.secret_id_file.write_text(secret_id + "\n")
        return secret_id

    def take_credentials_away(self) -> None:
        secret_id = self.secret_id_file.read_text().strip()
        self.root.auth.approle.destroy_secret_id("oubli", secret_id)
        self.root.sys.revoke_prefix("auth/approle/login")  # every token it gave out


@pytest.fixture
def approle(tmp_path: Path) -> Iterator[AppRoleSetup]:
    with OpenBaoDevServer(tmp_path / "openbao.log") as bao:
        yield AppRoleSetup(bao, tmp_path)


def _outcome(client: OubliClient) -> str:
    try:
        client.create_subject()
    except OubliClientError as e:
        return e.code.name
    return "OK"


@pytest.mark.timeout(120)
def test_a_replica_on_approle_serves_across_renewals_and_relogins(
    approle: AppRoleSetup, tmp_path: Path, sqlite_url: str
) -> None:
    ledger = tmp_path / "ledger" / "erasures.db"
    ledger.parent.mkdir()
    args = [
        "serve",
        "--database-url",
        sqlite_url,
        "--ledger-url",
        f"sqlite:///{ledger}",
        "--kms",
        "vault",
        "--vault-addr",
        approle.bao.address,
        "--vault-mount",
        "transit",
        "--vault-auth",
        "approle",
        "--vault-role-id-file",
        str(approle.role_id_file),
        "--vault-secret-id-file",
        str(approle.secret_id_file),
    ]
    env = {"OUBLI_AUDIT_CHECKPOINT_SECONDS": "2", "VAULT_TOKEN": ""}
    with (
        ServerProcess(tmp_path / "server", *args, env=env) as server,
        OubliClient(server.target, token=server.token, timeout=10) as client,
    ):
        started = time.monotonic()
        subjects = []
        while time.monotonic() - started < 16:  # > max ttl: renewals and re-logins
            sid = client.create_subject().subject_id
            record = client.create_record(sid, "contact", CONTACT)
            assert client.get_record(sid, record.record_id, "service").fields == CONTACT
            assert client.export_subject(sid)["categories"]["contact"]
            subjects.append((sid, record.record_id))
            time.sleep(1.0)
        rotation = client.rotate_keys("subjects", force=True)
        assert rotation.rotated >= len(subjects) and rotation.failed == 0
        shredded, record_id = subjects[0]
        receipt = client.shred_subject(shredded)
        assert receipt.subject_id == shredded
        with pytest.raises(OubliClientError) as gone:
            client.get_record(shredded, record_id, "service")
        assert gone.value.code != grpc.StatusCode.UNAVAILABLE
        with pytest.raises(hvac.exceptions.VaultError):  # the Transit key is gone
            approle.root.secrets.transit.read_key(receipt.key_id, mount_point="transit")
        checkpoints = client.list_audit_checkpoints().checkpoints
        assert len(checkpoints) >= 3  # signed by Transit across several tokens
        assert client.verify_audit(full=True).ok

        # Credentials taken away: fail closed, UNAVAILABLE (never INTERNAL).
        approle.take_credentials_away()
        with OubliClient(server.target, token=server.token, max_attempts=1) as once:
            # A DEK may still be cached; a new subject always needs Transit.
            assert {_outcome(once) for _ in range(3)} == {"UNAVAILABLE"}
            # A new secret id in the file: served again, no restart.
            secret_id = approle.new_secret_id()
            deadline = time.monotonic() + 15
            while _outcome(once) != "OK":
                assert time.monotonic() < deadline, "did not recover"
                time.sleep(0.3)
    log = server.log()
    # Logins: at start, again at the max ttl (12 s), again once the secret id is back.
    assert log.count('"vault_login"') >= 3, log[-3000:]
    assert log.count('"vault_token_renewed"') >= 3
    assert '"vault_auth_lost"' in log and '"vault_auth_restored"' in log
    assert secret_id not in log and approle.role_id_file.read_text() not in log
    assert '"s.' not in log and "hvs." not in log  # no token either


def test_the_policy_allows_what_oubli_does_and_nothing_more(approle: AppRoleSetup) -> None:
    auth = VaultAuth(AppRole(approle.role_id_file, approle.secret_id_file))
    kms = VaultTransitKeyManager(approle.bao.address, auth=auth, mount_point="transit")
    try:
        kms.ensure_mount(cache_size=100)  # no sys/mounts: the settings are written anyway
        settings = approle.root.read("transit/config/keys")["data"]
        assert settings["disable_upsert"] is True
        key_id = "k" + secrets.token_hex(6)
        kms.create_key(key_id)
        dek = kms.generate_data_key(key_id)
        assert kms.unwrap_many([(key_id, dek.wrapped)] * 2) == [dek.plaintext] * 2
        assert kms.rotate_key(key_id) == 2
        rewrapped = kms.rewrap(key_id, dek.wrapped)
        kms.set_min_decryption_version(key_id, 2)
        kms.trim_key(key_id, 2)
        assert kms.unwrap(key_id, rewrapped) == dek.plaintext
        signer = "s" + secrets.token_hex(6)
        kms.create_signing_key(signer)
        signature = kms.sign(signer, b"checkpoint")
        assert kms.verify(signer, b"checkpoint", signature)
        assert kms.public_keys(signer)
        kms.destroy_key(key_id)
        assert not kms.key_exists(key_id)

        # Nothing more: the same token, straight through hvac.
        token = auth.token()  # the token oubli holds
        as_oubli = hvac.Client(url=approle.bao.address, token=token)
        approle.root.sys.enable_secrets_engine("transit", path="transit-other")
        approle.root.secrets.transit.create_key(
            "other", exportable=True, allow_plaintext_backup=True, mount_point="transit-other"
        )
        approle.root.secrets.transit.create_key(
            "mine", exportable=True, allow_plaintext_backup=True, mount_point="transit"
        )
        refused: dict[str, Callable[[], object]] = {
            "read sys/policy": lambda: as_oubli.sys.read_policy("oubli"),
            "list mounts": lambda: as_oubli.sys.list_mounted_secrets_engines(),
            "enable a mount": lambda: as_oubli.sys.enable_secrets_engine("transit", path="x"),
            "use another mount": lambda: as_oubli.secrets.transit.generate_data_key(
                "other", key_type="plaintext", mount_point="transit-other"
            ),
            "export a key": lambda: as_oubli.secrets.transit.export_key(
                "mine", key_type="encryption-key", mount_point="transit"
            ),
            "back a key up": lambda: as_oubli.secrets.transit.backup_key(
                "mine", mount_point="transit"
            ),
            "list keys": lambda: as_oubli.secrets.transit.list_keys(mount_point="transit"),
            "encrypt arbitrary data": lambda: as_oubli.secrets.transit.encrypt_data(
                "mine", base64.b64encode(b"x").decode(), mount_point="transit"
            ),
            "create a token": lambda: as_oubli.auth.token.create(policies=["oubli"]),
        }
        for what, attempt in refused.items():
            with pytest.raises(hvac.exceptions.Forbidden):
                attempt()
                pytest.fail(f"the policy allowed: {what}")
        # Through oubli's backend, a refusal by policy stays KMS_REFUSED, not "auth lost".
        other = VaultTransitKeyManager(
            approle.bao.address,
            auth=VaultAuth(AppRole(approle.role_id_file, approle.secret_id_file)),
            mount_point="transit-other",
        )
        with pytest.raises(KmsAccessDenied):
            other.generate_data_key("other")
        other.close()
    finally:
        kms.close()
