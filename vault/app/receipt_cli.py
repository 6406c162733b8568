"""``oubli keys public`` and ``oubli receipt verify``: publish the signing key, check a
shred receipt offline.

``keys public`` reads the signing key's id from the data database and its public keys
from the KMS: one per version, the key rotates (kms.signatures.public_keys_pem gives the
file's format). ``receipt verify`` needs neither, nor a server: the receipt file and the
public keys are enough (vault.usecases.receipts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kms.signatures import (
    PublicKeyFileError,
    PublishedKey,
    public_keys_pem,
    read_public_keys_pem,
)
from vault.app.config import ConfigError, ServerConfig
from vault.usecases.receipts import ReceiptInvalid, verify_receipt_against

keys_app = typer.Typer(help="oubli's keys: rotation, their ages, the signing key's public half.")
receipt_app = typer.Typer(help="Shred receipts: check one offline.")
err = Console(stderr=True)


def _fail(prefix: str, error: Exception | str, code: int) -> typer.Exit:
    # escape(): messages quote patterns such as [a-z0-9] that rich would eat as markup.
    err.print(f"[red]{prefix}[/red] {escape(str(error))}")
    return typer.Exit(code)


@keys_app.command("public")
def keys_public(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="file (default stdout)")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="embedded default's directory")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
    kms: Annotated[str | None, typer.Option(help="local | vault")] = None,
    keystore: Annotated[Path | None, typer.Option(help="local keystore file")] = None,
    vault_addr: Annotated[str | None, typer.Option(help="Vault/OpenBao address")] = None,
    vault_mount: Annotated[str | None, typer.Option(help="Transit mount path")] = None,
) -> None:
    """Print the signing key's public keys that check shred receipts, audit checkpoints
    and erasure ledger heads: one PEM block (SubjectPublicKeyInfo of the Ed25519 key) per
    version, oldest first, each after a line `# oubli signing key <id> version <N>`.
    Publish the file (again after each rotation): with it anyone checks a receipt
    (`oubli receipt verify`) without the KMS."""
    from vault.app.server import signing_public_keys
    from vault.errors import OubliError

    try:
        config = ServerConfig.from_env(
            os.environ,
            data_dir=data_dir,
            database_url=database_url,
            kms=kms,
            keystore_path=keystore,
            vault_addr=vault_addr,
            vault_mount=vault_mount,
        )
    except ConfigError as e:
        raise _fail("invalid configuration:", e, 2) from None
    try:
        key_id, keys = signing_public_keys(config)
    except OubliError as e:
        raise _fail("keys public failed:", e, 1) from None
    pem = public_keys_pem(key_id, keys)
    if output is None:
        print(pem, end="")
    else:
        output.write_text(pem, encoding="ascii")
    versions = ", ".join(str(v) for v in sorted(keys))
    err.print(f"signing key {key_id}, versions {versions}")


@receipt_app.command("verify")
def receipt_verify(
    receipt: Annotated[Path, typer.Argument(help="the receipt file `oubli subject shred` printed")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="PEM file `oubli keys public` wrote")
    ],
) -> None:
    """Check a shred receipt offline (no server, KMS or database): its format, fields
    and signature against the published public keys (every version of the signing key;
    the receipt verifies if one of them verifies it). Exit 0 when it verifies, 1 when it
    does not, 2 when a file cannot be read."""
    keys = read_public_keys(public_key)
    try:
        text = receipt.read_bytes().decode("utf-8")
    except OSError as e:
        raise _fail("cannot read the receipt:", type(e).__name__, 2) from None
    except UnicodeDecodeError:
        raise _fail("receipt does not verify:", "the file is not UTF-8 text", 1) from None
    try:
        document, index = verify_receipt_against(text, [k.raw for k in keys])
    except ReceiptInvalid as e:
        raise _fail("receipt does not verify:", e, 1) from None
    print(
        f"receipt verifies: subject {document['subject_id']}, key {document['key_id']}, "
        f"ledger position {document['ledger_position']}, {_signed_by(keys[index])}"
    )


def read_public_keys(path: Path) -> list[PublishedKey]:
    """The public keys of a file `oubli keys public` wrote (exit 2 if it cannot be read)."""
    try:
        return read_public_keys_pem(path.read_bytes())
    except OSError as e:
        raise _fail("cannot read the public key:", type(e).__name__, 2) from None
    except PublicKeyFileError as e:
        raise _fail("invalid public key:", e, 2) from None


def _signed_by(key: PublishedKey) -> str:
    if key.version is None:
        return "signed by the published key"
    return f"signed by signing key version {key.version}"
