"""`oubli keys public` after a rotation of the signing key: one PEM block per version,
each after its comment line; `oubli receipt verify` and `oubli audit export-checkpoints`
accept such a file and check what each version signed. On the local keystore and on
real OpenBao."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from typer.testing import CliRunner

from kms.base import KeyManager
from kms.local_keystore import LocalKeystore
from kms.signatures import public_keys_pem, read_public_keys_pem, verify_offline
from kms.vault_transit import VaultTransitKeyManager
from tests.stack import TEST_TOKEN, Stack
from vault.app.cli import app
from vault.audit.chain import AuditLog
from vault.audit.entries import checkpoint_message
from vault.audit.recorder import signing_key_id
from vault.audit.signing import SigningKey
from vault.clock import utc_now
from vault.storage import Storage, make_engine, migrate
from vault.usecases.receipts import ReceiptSigner, ShredReceipt, receipt_text
from vault.usecases.signing_rotation import SigningKeyRotation

START = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----\n.*?-----END PUBLIC KEY-----\n", re.S)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner(env=env or {}).invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@dataclass
class Signed:
    """A database whose signing key was rotated once, the KMS holding it, and the
    options that point `oubli keys public` at both."""

    storage: Storage
    kms: KeyManager
    key_id: str
    options: list[str]
    env: dict[str, str]


@pytest.fixture(params=["local", "vault"])
def signed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Signed]:
    url = f"sqlite:///{tmp_path / 'oubli.db'}"
    engine = make_engine(url)
    migrate(engine)
    storage = Storage(engine)
    options = ["--database-url", url]
    env: dict[str, str] = {}
    kms: KeyManager
    if request.param == "local":
        kms = LocalKeystore(tmp_path / "keystore" / "keys.db")
        options += ["--kms", "local", "--keystore", str(kms.path)]
    else:
        kms = request.getfixturevalue("vault_kms")
        assert isinstance(kms, VaultTransitKeyManager)
        openbao = request.getfixturevalue("openbao")
        env["VAULT_TOKEN"] = openbao.token
        options += ["--kms", "vault", "--vault-addr", openbao.address]
        options += ["--vault-mount", kms.mount_point]
    key_id = signing_key_id(storage, utc_now)
    SigningKey(kms, key_id).ensure()
    yield Signed(storage, kms, key_id, options, env)
    kms.close()
    engine.dispose()


def rotate(signed: Signed) -> None:
    report = SigningKeyRotation(signed.storage, signed.kms, utc_now).rotate(
        dry_run=False, force=True, cryptoperiod=timedelta(days=365)
    )
    assert report.rotated == 1


def receipt(signed: Signed, n: int) -> str:
    unsigned = ShredReceipt(
        subject_id=f"{n:026d}",
        key_id=f"k{n:025d}",
        shredded_at=START,
        records_deleted=n,
        kms_backend=signed.kms.backend_name,
        residual_risk="",
        residual_copies_expire_at=START + timedelta(days=35),
        ledger_position=n,
    )
    return receipt_text(ReceiptSigner(SigningKey(signed.kms, signed.key_id)).sign(unsigned))


def keys_public(signed: Signed, output: Path) -> str:
    code, _, stderr = run("keys", "public", "-o", str(output), *signed.options, env=signed.env)
    assert code == 0, stderr
    return stderr


def test_keys_public_writes_every_version_each_after_its_comment(
    signed: Signed, tmp_path: Path
) -> None:
    rotate(signed)
    rotate(signed)
    pem = tmp_path / "oubli.pem"

    stderr = keys_public(signed, pem)

    assert f"signing key {signed.key_id}, versions 1, 2, 3" in stderr
    text = pem.read_text()
    expected = signed.kms.public_keys(signed.key_id)
    blocks = _BLOCK.findall(text)
    assert len(blocks) == 3
    for version, block in enumerate(blocks, 1):
        comment = f"# oubli signing key {signed.key_id} version {version}\n"
        assert text.index(comment) + len(comment) == text.index(block)
        # Each block loads on its own with the cryptography library.
        key = load_pem_public_key(block.encode("ascii"))
        assert isinstance(key, Ed25519PublicKey)
        assert key.public_bytes_raw() == expected[version]
    # A reader of one block (openssl, an older oubli) gets the first: version 1.
    whole = load_pem_public_key(text.encode("ascii"))
    assert isinstance(whole, Ed25519PublicKey)
    assert whole.public_bytes_raw() == expected[1]
    read = read_public_keys_pem(text.encode("ascii"))
    assert [(k.key_id, k.version, k.raw) for k in read] == [
        (signed.key_id, v, expected[v]) for v in (1, 2, 3)
    ]
    # To stdout, the same text.
    code, stdout, _ = run("keys", "public", *signed.options, env=signed.env)
    assert code == 0 and stdout == text


def test_receipt_verify_accepts_a_receipt_of_each_version(signed: Signed, tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(receipt(signed, 1))
    rotate(signed)
    new = tmp_path / "new.json"
    new.write_text(receipt(signed, 2))
    pem = tmp_path / "oubli.pem"
    keys_public(signed, pem)

    for path, version in ((old, 1), (new, 2)):
        code, stdout, stderr = run("receipt", "verify", str(path), "--public-key", str(pem))
        assert code == 0, stderr
        assert "receipt verifies" in stdout
        assert f"signed by signing key version {version}" in stdout

    # A file published before the rotation (version 1 only) does not verify the new one.
    keys = signed.kms.public_keys(signed.key_id)
    before = tmp_path / "before.pem"
    before.write_text(public_keys_pem(signed.key_id, {1: keys[1]}))
    code, _, stderr = run("receipt", "verify", str(new), "--public-key", str(before))
    assert code == 1 and "receipt does not verify" in stderr
    # One bare PEM block, as `keys public` wrote before rotation existed: still read.
    bare = tmp_path / "bare.pem"
    bare.write_bytes(
        Ed25519PublicKey.from_public_bytes(keys[1]).public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
    )
    code, stdout, _ = run("receipt", "verify", str(old), "--public-key", str(bare))
    assert code == 0 and "signed by the published key" in stdout
    # A changed receipt verifies under no version.
    text = new.read_text()
    new.write_text(text.replace('"records_deleted": 2', '"records_deleted": 7'))
    code, _, stderr = run("receipt", "verify", str(new), "--public-key", str(pem))
    assert code == 1
    assert "any of 2 public keys" in " ".join(stderr.split())


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"# oubli signing key k version 1\nnot a key\n", id="no-block"),
        pytest.param(b"\xff\xfe", id="binary"),
        pytest.param(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", id="bad-block"
        ),
        pytest.param(
            X25519PrivateKey.generate()
            .public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
            id="not-ed25519",
        ),
    ],
)
def test_receipt_verify_refuses_an_unreadable_key_file(tmp_path: Path, content: bytes) -> None:
    pem = tmp_path / "oubli.pem"
    pem.write_bytes(content)
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text("{}\n")
    code, _, stderr = run("receipt", "verify", str(receipt_file), "--public-key", str(pem))
    assert code == 2
    assert "invalid public key" in stderr


# --- audit export-checkpoints ---------------------------------------------------------


def cli(*args: str) -> tuple[int, str, str]:
    return run(*args, env={"OUBLI_TOKEN": TEST_TOKEN})


def _kms_options(stack: Stack, request: pytest.FixtureRequest) -> tuple[list[str], dict[str, str]]:
    options = ["--database-url", stack.database_url]
    if isinstance(stack.kms, LocalKeystore):
        return [*options, "--kms", "local", "--keystore", str(stack.kms.path)], {}
    assert isinstance(stack.kms, VaultTransitKeyManager)
    openbao = request.getfixturevalue("openbao")
    vault = ["--vault-addr", openbao.address, "--vault-mount", stack.kms.mount_point]
    return [*options, "--kms", "vault", *vault], {"VAULT_TOKEN": openbao.token}


def test_export_checkpoints_of_every_version_with_the_published_keys(
    stack: Stack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    audit = AuditLog(stack.storage, stack.kms, utc_now, stack.server.audit.audit.signing_key_id)
    sid = stack.client.create_subject().subject_id
    stack.client.create_record(sid, "usage", {"page": "/1"}, "web")
    old = audit.checkpoint()
    report = SigningKeyRotation(stack.storage, stack.kms, utc_now).rotate(
        dry_run=False, force=True, cryptoperiod=timedelta(days=365)
    )
    assert report.rotated == 1
    stack.client.create_record(sid, "usage", {"page": "/2"}, "web")
    new = audit.checkpoint()
    assert old is not None and new is not None
    assert (old.key_version, new.key_version) == (1, 2)
    export = tmp_path / "checkpoints.jsonl"

    # The server publishes every version (ListAuditCheckpoints' public_keys): both
    # checkpoints export without a file; with the published file, the same.
    export_args = ["audit", "export-checkpoints", "-o", str(export), "--target", stack.target]
    code, _, stderr = cli(*export_args)
    assert code == 0, stderr
    served = [json.loads(line)["key_version"] for line in export.read_text().splitlines()]
    assert served == [1, 2]
    export.unlink()

    options, env = _kms_options(stack, request)
    pem = tmp_path / "oubli.pem"
    code, _, stderr = run("keys", "public", "-o", str(pem), *options, env=env)
    assert code == 0, stderr
    code, _, stderr = cli(*export_args, "--public-key", str(pem))
    assert code == 0, stderr
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [(line["seq"], line["key_version"]) for line in lines] == [
        (old.seq, 1),
        (new.seq, 2),
    ]
    keys = stack.kms.public_keys(old.key_id)
    for line in lines:
        public_key = base64.b64decode(line["public_key"])
        assert public_key == keys[line["key_version"]]
        message = checkpoint_message(line["seq"], line["hash"])
        assert verify_offline(public_key, message, base64.b64decode(line["signature"]))
    # The server verifies the exported copies of both versions through the KMS.
    code, stdout, _ = cli("audit", "verify", "--checkpoints", str(export), "--target", stack.target)
    result = json.loads(stdout)
    assert code == 0 and result["ok"] and result["exported_checked"] == 2

    page = stack.client.list_audit_checkpoints()
    assert page.public_keys == keys and page.public_key == keys[2]
