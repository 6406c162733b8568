"""Ed25519 signatures: the local backends' format, and verification without the KMS.

Local signature byte format (in-memory and local-keystore backends)::

    key_version (1 byte, 1..255) | Ed25519 signature (64 bytes)

Transit signatures are ``vault:v<key version>:<base64 of the 64-byte signature>``.
Every backend signs ``data`` itself (pure Ed25519, no pre-hash), so the raw signature
checks against :meth:`kms.base.KeyManager.public_key` with any Ed25519 library: a
verifier holding the public key needs no access to the KMS.

A rotated signing key has one public key per version. They are published together in
one text file (:func:`public_keys_pem`, read back by :func:`read_public_keys_pem`): one
PEM block (SubjectPublicKeyInfo) per version, oldest first, each preceded by the comment
line ``# oubli signing key <key id> version <N>`` (PEM allows text outside the blocks;
a tool that reads one block reads the first).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

PRIVATE_KEY_LEN = 32
PUBLIC_KEY_LEN = 32
RAW_SIGNATURE_LEN = 64
LOCAL_SIGNATURE_LEN = 1 + RAW_SIGNATURE_LEN

_TRANSIT_SIGNATURE = re.compile(rb"vault:v(\d{1,10}):([A-Za-z0-9+/]+={0,2})")
_PEM_BLOCK = re.compile(
    r"-----BEGIN PUBLIC KEY-----\r?\n[A-Za-z0-9+/=\r\n]*?-----END PUBLIC KEY-----"
)
_PEM_COMMENT = re.compile(r"# oubli signing key ([a-z0-9_-]{1,64}) version ([1-9]\d{0,9})")


def local_sign(private_key: bytes, key_version: int, data: bytes) -> bytes:
    """Sign ``data`` with a raw 32-byte Ed25519 private key, in the local format."""
    if not 1 <= key_version <= 255:
        raise ValueError("key version out of range 1..255")
    signature = Ed25519PrivateKey.from_private_bytes(private_key).sign(data)
    return bytes([key_version]) + signature


def local_signature_version(signature: bytes) -> int | None:
    """The key version a local-format signature names; None if it is malformed."""
    if len(signature) != LOCAL_SIGNATURE_LEN or signature[0] == 0:
        return None
    return signature[0]


def signature_key_version(signature: bytes) -> int | None:
    """The key version a signature of any backend names; None if it is malformed."""
    local = local_signature_version(signature)
    if local is not None:
        return local
    match = _TRANSIT_SIGNATURE.fullmatch(signature)
    return None if match is None else int(match.group(1))


def local_public_key(private_key: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def raw_ed25519_signature(signature: bytes) -> bytes | None:
    """The 64-byte Ed25519 signature inside a signature of any backend, or None."""
    if local_signature_version(signature) is not None:
        return signature[1:]
    match = _TRANSIT_SIGNATURE.fullmatch(signature)
    if match is None:
        return None
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        return None
    return raw if len(raw) == RAW_SIGNATURE_LEN else None


def verify_offline(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Check a signature made by any backend against its raw 32-byte public key."""
    raw = raw_ed25519_signature(signature)
    return raw is not None and verify_ed25519(public_key, data, raw)


def verify_ed25519(public_key: bytes, data: bytes, raw: bytes) -> bool:
    """Check a bare 64-byte Ed25519 signature against a raw 32-byte public key."""
    if len(raw) != RAW_SIGNATURE_LEN or len(public_key) != PUBLIC_KEY_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(raw, data)
    except InvalidSignature:
        return False
    return True


# --- published public keys ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """One public key of a published file: its raw 32 bytes and, when its comment line
    names them, the signing key's id and the version."""

    raw: bytes
    key_id: str | None = None
    version: int | None = None

    def __repr__(self) -> str:
        return f"PublishedKey(key_id={self.key_id!r}, version={self.version})"


class PublicKeyFileError(ValueError):
    """A published public key file that cannot be read; the message says why."""


def public_keys_pem(key_id: str, keys: Mapping[int, bytes]) -> str:
    """The published file of signing key ``key_id``: every version (version -> raw
    32-byte Ed25519 public key) as a PEM block, oldest first, each after its comment line
    ``# oubli signing key <key_id> version <N>``."""
    parts: list[str] = []
    for version in sorted(keys):
        pem = (
            Ed25519PublicKey.from_public_bytes(keys[version])
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )
        parts.append(f"# oubli signing key {key_id} version {version}\n{pem}")
    return "".join(parts)


def read_public_keys_pem(data: bytes) -> list[PublishedKey]:
    """Every Ed25519 public key of a published file, in the file's order: the version
    and key id from the comment line right before a block, when there is one (a file
    of one bare PEM block, as ``oubli keys public`` wrote before rotation, reads as one
    key of unknown version).

    Raises:
        PublicKeyFileError: the file holds no PEM public key, a block does not load, or
            a key is not Ed25519.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise PublicKeyFileError("the file is not a PEM public key") from None
    found: list[PublishedKey] = []
    after = 0
    for block in _PEM_BLOCK.finditer(text):
        before = [line.strip() for line in text[after : block.start()].splitlines()]
        comment = next((line for line in reversed(before) if line), "")
        after = block.end()
        try:
            key = load_pem_public_key(block.group(0).encode("ascii"))
        except (ValueError, TypeError):
            raise PublicKeyFileError("the file is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise PublicKeyFileError("not an Ed25519 key")
        named = _PEM_COMMENT.fullmatch(comment)
        if named is None:
            found.append(PublishedKey(key.public_bytes_raw()))
        else:
            found.append(PublishedKey(key.public_bytes_raw(), named[1], int(named[2])))
    if not found:
        raise PublicKeyFileError("the file is not a PEM public key")
    return found
