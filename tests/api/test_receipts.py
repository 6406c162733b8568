"""Shred receipts anyone can check, end to end: shred through gRPC (the CLI and the
client), publish the key with `oubli keys public`, check the receipt with `oubli receipt
verify` — real processes, on SQLite with the local keystore and on PostgreSQL with real
OpenBao (Transit ed25519) — and see one byte changed refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from kms.local_keystore import LocalKeystore
from kms.vault_transit import VaultTransitKeyManager
from oubli_client import ShredReceipt
from tests.stack import TEST_TOKEN, Stack
from vault.usecases.receipts import receipt_text, verify_receipt_text


def _oubli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vault.app.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _kms_options(stack: Stack, request: pytest.FixtureRequest) -> tuple[list[str], dict[str, str]]:
    """`oubli keys public` options and environment for the stack's KMS and database."""
    env = {**os.environ, "OUBLI_TOKEN": TEST_TOKEN}
    options = ["--database-url", stack.database_url]
    if isinstance(stack.kms, LocalKeystore):
        return [*options, "--kms", "local", "--keystore", str(stack.kms.path)], env
    assert isinstance(stack.kms, VaultTransitKeyManager)
    openbao = request.getfixturevalue("openbao")
    env["VAULT_TOKEN"] = openbao.token
    vault = ["--vault-addr", openbao.address, "--vault-mount", stack.kms.mount_point]
    return [*options, "--kms", "vault", *vault], env


def test_a_shred_receipt_verifies_offline_and_fails_when_one_byte_changes(
    stack: Stack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    options, env = _kms_options(stack, request)
    sid = stack.client.create_subject().subject_id
    stack.client.create_record(sid, "contact", {"email": "receipt@example.org"})

    shred_args = ["subject", "shred", sid, "--target", stack.target, "--yes"]
    shred = _oubli(*shred_args, env=env, cwd=tmp_path)
    assert shred.returncode == 0, shred.stderr
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text(shred.stdout)
    retried = stack.client.shred_subject(sid)  # the retry: the same signed receipt
    assert receipt_text(retried) == shred.stdout
    assert retried.ledger_position >= 1 and len(retried.signature) == 64

    pem_file = tmp_path / "oubli.pem"
    public = _oubli("keys", "public", "-o", str(pem_file), *options, env=env, cwd=tmp_path)
    assert public.returncode == 0, public.stderr
    assert f"signing key {retried.signing_key_id}" in public.stderr
    pem = pem_file.read_bytes()
    comment = f"# oubli signing key {retried.signing_key_id} version 1\n".encode()
    assert pem.startswith(comment + b"-----BEGIN PUBLIC KEY-----")
    key = load_pem_public_key(pem)
    assert isinstance(key, Ed25519PublicKey)
    assert key.public_bytes_raw() == stack.kms.public_key(retried.signing_key_id)

    # offline: no server, no KMS, no database named
    verify = ["receipt", "verify", str(receipt_file), "--public-key", str(pem_file)]
    checked = _oubli(*verify, env={"PATH": os.environ["PATH"]}, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "receipt verifies" in checked.stdout

    text = shred.stdout
    at = text.index('"records_deleted": ') + len('"records_deleted": ')
    receipt_file.write_text(text[:at] + str(int(text[at]) + 1) + text[at + 1 :])
    changed = _oubli(*verify, env={"PATH": os.environ["PATH"]}, cwd=tmp_path)
    assert changed.returncode == 1
    assert "receipt does not verify" in changed.stderr
    assert sid not in changed.stderr and sid not in changed.stdout

    signature_at = text.index('"signature": "') + len('"signature": "') + 10
    flipped = "A" if text[signature_at] != "A" else "B"
    receipt_file.write_text(text[:signature_at] + flipped + text[signature_at + 1 :])
    assert _oubli(*verify, env={"PATH": os.environ["PATH"]}, cwd=tmp_path).returncode == 1


def test_every_receipt_of_a_batch_shred_is_signed(stack: Stack) -> None:
    sids = [stack.client.create_subject().subject_id for _ in range(4)]
    results = stack.client.shred_subjects(sids)
    receipts = [r for r in results if isinstance(r, ShredReceipt)]
    assert len(receipts) == 4
    public_key = stack.kms.public_key(receipts[0].signing_key_id)
    for receipt in receipts:
        assert verify_receipt_text(receipt_text(receipt), public_key)["subject_id"] in sids
    assert len({r.ledger_position for r in receipts}) == 4


@pytest.mark.parametrize("stack", ["postgresql+vault"], indirect=True)
def test_a_batch_shred_signs_its_receipts_in_one_kms_call(stack: Stack) -> None:
    """N subjects: N key destructions and one batch sign, not N + N."""
    sids = [stack.client.create_subject().subject_id for _ in range(12)]  # > 8 workers

    before = stack.kms.calls
    results = stack.client.shred_subjects(sids)
    calls = stack.kms.calls - before

    assert calls == len(sids) + 1
    receipts = [r for r in results if isinstance(r, ShredReceipt)]
    assert [r.subject_id for r in receipts] == sids
    public_key = stack.kms.public_key(receipts[0].signing_key_id)
    for receipt in receipts:
        assert verify_receipt_text(receipt_text(receipt), public_key)["subject_id"] in sids
