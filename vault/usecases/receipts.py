"""Shred receipts anyone can check: the signed document, its canonical bytes, signing
with the KMS signing key and verification offline.

A receipt says that a subject's key was destroyed, when, what was deleted and kept, and
where the destruction sits in the erasure ledger (:mod:`vault.usecases.erasure_ledger`).
It names ids, counts and times only, never personal data. Its document (format
``oubli.shred_receipt.v1``) is signed with the KMS signing key, the one that signs the
audit checkpoints and the ledger's heads (:mod:`vault.audit.signing`); the signature is
the bare 64-byte Ed25519 signature of :func:`canonical_bytes`, so any Ed25519 library
holding the public key (``oubli keys public``) checks it, with no server, KMS or
database. The signing key rotates (:mod:`vault.usecases.signing_rotation`) and the bare
signature does not name the version that made it: a verifier given every version's
public key (``oubli keys public`` writes them all) tries each.

The document names the signing key's id too. The receipt file (``oubli subject shred``
prints it, ``oubli receipt verify`` reads it) is the document plus its ``signature``
(base64), written by
:func:`receipt_text` in one layout only: a file that differs from it by one byte, even
in whitespace, does not verify.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from kms.signatures import raw_ed25519_signature, verify_ed25519
from vault.errors import IntegrityFailure

if TYPE_CHECKING:  # the verifier needs no KMS: only the signer loads it
    from vault.audit.signing import SigningKey

FORMAT = "oubli.shred_receipt.v1"
#: Signed before the document: a receipt's signature is never another message's.
CONTEXT = b"oubli-shred-receipt/v1\n"

#: The document's fields, in no particular order (the canonical bytes sort them).
DOCUMENT_FIELDS = frozenset(
    {
        "format",
        "subject_id",
        "key_id",
        "shred_time",
        "records_deleted",
        "records_retained",
        "retained_until",
        "kms_backend",
        "residual_copies_expire_time",
        "ledger_position",
        "signing_key_id",
    }
)
#: What the receipt file adds to the document.
SIGNATURE_FIELDS = frozenset({"signature"})


@dataclass(frozen=True, slots=True)
class ShredReceipt:
    subject_id: str
    key_id: str
    shredded_at: datetime
    records_deleted: int
    kms_backend: str
    residual_risk: str
    residual_copies_expire_at: datetime
    records_retained: int = 0
    retained_until: datetime | None = None
    #: The seq of the erasure ledger's entry naming the destroyed key.
    ledger_position: int = 0
    #: The 64-byte Ed25519 signature of :func:`canonical_bytes`; empty when unsigned.
    signature: bytes = b""
    signing_key_id: str = ""


class ReceiptFields(Protocol):
    """What the document is made of: the server's :class:`ShredReceipt` and the
    client's (``oubli_client.ShredReceipt``) both have it."""

    @property
    def subject_id(self) -> str: ...
    @property
    def key_id(self) -> str: ...
    @property
    def shredded_at(self) -> datetime: ...
    @property
    def records_deleted(self) -> int: ...
    @property
    def records_retained(self) -> int: ...
    @property
    def retained_until(self) -> datetime | None: ...
    @property
    def kms_backend(self) -> str: ...
    @property
    def residual_copies_expire_at(self) -> datetime: ...
    @property
    def ledger_position(self) -> int: ...
    @property
    def signing_key_id(self) -> str: ...


class SignedReceiptFields(ReceiptFields, Protocol):
    @property
    def signature(self) -> bytes: ...


def utc_text(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds, e.g. ``2026-03-10T14:30:00.000000Z`` (a naive
    time is UTC)."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def document(receipt: ReceiptFields) -> dict[str, Any]:
    """The signed document of ``receipt``: ids, counts, times, the ledger position and
    the id of the key that signs it."""
    return {
        "format": FORMAT,
        "subject_id": receipt.subject_id,
        "key_id": receipt.key_id,
        "shred_time": utc_text(receipt.shredded_at),
        "records_deleted": receipt.records_deleted,
        "records_retained": receipt.records_retained,
        "retained_until": (
            None if receipt.retained_until is None else utc_text(receipt.retained_until)
        ),
        "kms_backend": receipt.kms_backend,
        "residual_copies_expire_time": utc_text(receipt.residual_copies_expire_at),
        "ledger_position": receipt.ledger_position,
        "signing_key_id": receipt.signing_key_id,
    }


def canonical_bytes(doc: Mapping[str, Any]) -> bytes:
    """What is signed: :data:`CONTEXT` and the document as compact ASCII JSON, keys
    sorted."""
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return CONTEXT + body.encode("ascii")


def receipt_text(receipt: SignedReceiptFields) -> str:
    """The receipt file: the document and its ``signature`` (base64), keys sorted,
    indented by two, ending in a newline."""
    signed = {
        **document(receipt),
        "signature": base64.b64encode(receipt.signature).decode("ascii"),
    }
    return json.dumps(signed, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


class ReceiptSigner:
    """Signs receipts with the KMS signing key: one KMS call per receipt, or, for a
    batch, one for them all (Transit: one per 400)."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @property
    def key_id(self) -> str:
        return self._key.key_id

    def sign(self, receipt: ShredReceipt) -> ShredReceipt:
        """``receipt`` with its signature and the signing key's id.

        Raises:
            Unavailable: the KMS could not be reached.
            FailedPrecondition: the signing key is missing or refused.
            IntegrityFailure: the KMS answered with no Ed25519 signature.
        """
        named = replace(receipt, signing_key_id=self._key.key_id)
        return self._with_signature(named, self._key.sign_message(_message(named)))

    def sign_many(self, receipts: Sequence[ShredReceipt]) -> list[ShredReceipt]:
        """Each of ``receipts`` signed as :meth:`sign` signs it, in order, with as few
        KMS calls as the backend allows. All or nothing: one receipt that cannot be
        signed fails them all.

        Raises:
            As :meth:`sign`.
        """
        if not receipts:
            return []
        named = [replace(r, signing_key_id=self._key.key_id) for r in receipts]
        signatures = self._key.sign_messages([_message(r) for r in named])
        if len(signatures) != len(named):
            raise IntegrityFailure("the KMS returned a signature count off for the receipts")
        return [self._with_signature(r, s) for r, s in zip(named, signatures, strict=True)]

    @staticmethod
    def _with_signature(named: ShredReceipt, signature: bytes) -> ShredReceipt:
        raw = raw_ed25519_signature(signature)
        if raw is None:
            raise IntegrityFailure("the KMS returned a malformed receipt signature")
        return replace(named, signature=raw)


def _message(receipt: ShredReceipt) -> bytes:
    return canonical_bytes(document(receipt))


class ReceiptInvalid(Exception):
    """A receipt file that does not verify; the message names why, never a value."""


def verify_receipt_text(text: str, public_key: bytes) -> dict[str, Any]:
    """The document of the receipt file ``text`` once it is checked against the raw
    Ed25519 ``public_key``: its format, its fields, its layout and its signature.

    Raises:
        ReceiptInvalid: any check fails (the message says which, without values).
    """
    return verify_receipt_against(text, [public_key])[0]


def verify_receipt_against(text: str, public_keys: Sequence[bytes]) -> tuple[dict[str, Any], int]:
    """As :func:`verify_receipt_text`, the signature checked against each of the raw
    Ed25519 ``public_keys`` (the signing key's versions: a receipt's bare signature does
    not name the version that made it): the document and the index, in
    ``public_keys``, of the first key that verifies it.

    Raises:
        ReceiptInvalid: any check fails, or no key verifies the signature.
    """
    try:
        signed = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError:
        raise ReceiptInvalid("not a receipt: the file is not JSON") from None
    if not isinstance(signed, dict):
        raise ReceiptInvalid("not a receipt: the file is not a JSON object")
    if signed.get("format") != FORMAT:
        raise ReceiptInvalid(f"unknown receipt format (expected {FORMAT})")
    missing = sorted((DOCUMENT_FIELDS | SIGNATURE_FIELDS) - signed.keys())
    if missing:
        raise ReceiptInvalid(f"the receipt lacks {', '.join(missing)}")
    unknown = len(signed.keys() - DOCUMENT_FIELDS - SIGNATURE_FIELDS)
    if unknown:
        raise ReceiptInvalid(f"the receipt has {unknown} field(s) its format does not define")
    signature = _signature(signed["signature"])
    if text not in (_layout(signed), _layout(signed).rstrip("\n")):
        raise ReceiptInvalid(
            "the receipt is not laid out as oubli writes it (keys sorted, indented by two): "
            "it was changed after it was written"
        )
    doc = {name: signed[name] for name in DOCUMENT_FIELDS}
    message = canonical_bytes(doc)
    for index, public_key in enumerate(public_keys):
        if verify_ed25519(public_key, message, signature):
            return doc, index
    by = "this public key" if len(public_keys) == 1 else f"any of {len(public_keys)} public keys"
    raise ReceiptInvalid(
        f"the signature does not match: a field was changed, or the receipt was not signed by {by}"
    )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise ReceiptInvalid("the receipt names a field twice")
        found[name] = value
    return found


def _signature(value: object) -> bytes:
    """The signature's bytes: base64 of 64 bytes, written one way only."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 64 and base64.b64encode(raw).decode("ascii") == value:
            return raw
    raise ReceiptInvalid("the signature is not base64 of a 64-byte Ed25519 signature")


def _layout(signed: Mapping[str, Any]) -> str:
    return json.dumps(signed, sort_keys=True, indent=2, ensure_ascii=True) + "\n"
