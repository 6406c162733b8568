"""Ed25519 signatures: the local backends' format, and verification without the KMS.

Local signature byte format (in-memory and local-keystore backends)::

    key_version (1 byte, 1..255) | Ed25519 signature (64 bytes)

Transit signatures are ``vault:v<key version>:<base64 of the 64-byte signature>``.
Every backend signs ``data`` itself (pure Ed25519, no pre-hash), so the raw signature
checks against :meth:`kms.base.KeyManager.public_key` with any Ed25519 library: a
verifier holding the public key needs no access to the KMS.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_KEY_LEN = 32
PUBLIC_KEY_LEN = 32
RAW_SIGNATURE_LEN = 64
LOCAL_SIGNATURE_LEN = 1 + RAW_SIGNATURE_LEN

_TRANSIT_SIGNATURE = re.compile(rb"vault:v(\d{1,10}):([A-Za-z0-9+/]+={0,2})")


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
