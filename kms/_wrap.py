"""Local DEK wrapping shared by the in-memory and local-keystore backends.

Wrapped DEK byte format (version 1)::

    0x01 | key_version (4 bytes, big endian) | nonce (12 bytes) | AES-256-GCM(DEK) + tag (48 bytes)

The associated data is ``b"oubli-dek/v1\\0" + key_id``, so a wrapped DEK moved to
another key id fails to unwrap even if the same key bytes were reused.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.base import KmsError

FORMAT_VERSION = 1
_HEADER = struct.Struct(">BI")
NONCE_LEN = 12
DEK_LEN = 32
WRAPPED_LEN = _HEADER.size + NONCE_LEN + DEK_LEN + 16


def _aad(key_id: str) -> bytes:
    return b"oubli-dek/v1\0" + key_id.encode("ascii")


def wrap_dek(
    key_id: str, kek: bytes, key_version: int, dek: bytes, random_bytes: Callable[[int], bytes]
) -> bytes:
    nonce = random_bytes(NONCE_LEN)
    sealed = AESGCM(kek).encrypt(nonce, dek, _aad(key_id))
    return _HEADER.pack(FORMAT_VERSION, key_version) + nonce + sealed


def wrapped_key_version(key_id: str, wrapped: bytes) -> int:
    if len(wrapped) != WRAPPED_LEN or wrapped[0] != FORMAT_VERSION:
        raise KmsError("wrapped data key has an invalid format", key_id=key_id)
    return int(_HEADER.unpack_from(wrapped)[1])


def unwrap_dek(key_id: str, kek: bytes, wrapped: bytes) -> bytes:
    wrapped_key_version(key_id, wrapped)
    nonce = wrapped[_HEADER.size : _HEADER.size + NONCE_LEN]
    try:
        return AESGCM(kek).decrypt(nonce, wrapped[_HEADER.size + NONCE_LEN :], _aad(key_id))
    except InvalidTag:
        raise KmsError("wrapped data key does not belong to this key", key_id=key_id) from None
