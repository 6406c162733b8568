"""AES-256-GCM envelope for records, bound to the record's place.

Ciphertext byte format (format version 1)::

    offset  size  field
    0       1     format version, 0x01
    1       4     key version of the subject's DEK (unsigned, big endian)
    5       12    nonce (random, 96 bits)
    17      n     AES-256-GCM ciphertext of the plaintext below
    17+n    16    GCM tag

    total: 33 + n bytes, n <= MAX_PLAINTEXT_BYTES

The plaintext is the record's fields as canonical JSON (UTF-8, keys sorted, no
whitespace). The associated data binds the ciphertext to its place: a length-prefixed
encoding of ``"oubli-record/v1"``, tenant, subject id, record id, category, then —
only for records under a retention bucket — key scheme and bucket id, then the key
version. A ciphertext copied to another tenant, subject, record or category — or
relabelled with another key version — fails authentication.

Nonces are random (the caller injects the source). With one DEK per subject, the
NIST limit of 2**32 random-nonce encryptions per key is far beyond any one person's
record count.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.errors import IntegrityFailure
from vault.vocabulary import KeyScheme

FORMAT_VERSION = 1
NONCE_LEN = 12
TAG_LEN = 16
_HEADER = struct.Struct(">BI")
OVERHEAD = _HEADER.size + NONCE_LEN + TAG_LEN
#: Upper bound of a record's canonical JSON. vault.limits caps a record at 256 KiB of
#: UTF-8; JSON escapes a control character as six bytes (\u0000), so the worst case is
#: about 6 x 256 KiB plus punctuation: 2 MiB leaves room for it.
MAX_PLAINTEXT_BYTES = 2 << 20
MAX_CIPHERTEXT_BYTES = OVERHEAD + MAX_PLAINTEXT_BYTES
_AAD_LABEL = "oubli-record/v1"


@dataclass(frozen=True, slots=True)
class RecordPlace:
    """Where a ciphertext belongs; every field goes into the associated data."""

    tenant: str
    subject_id: str
    record_id: str
    category: str
    #: "subject", or for records under a retention bucket "expiry"/"hold" and its id.
    key_scheme: str = KeyScheme.SUBJECT
    bucket_id: str = ""

    def associated_data(self, key_version: int) -> bytes:
        parts: tuple[str, ...] = (
            _AAD_LABEL,
            self.tenant,
            self.subject_id,
            self.record_id,
            self.category,
        )
        if self.key_scheme != KeyScheme.SUBJECT:
            parts += (self.key_scheme, self.bucket_id)
        out = bytearray()
        for part in parts:
            raw = part.encode("utf-8")
            out += struct.pack(">I", len(raw)) + raw
        out += struct.pack(">I", key_version)
        return bytes(out)


def encode_fields(fields: Mapping[str, str]) -> bytes:
    return json.dumps(
        dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def decode_fields(plaintext: bytes) -> dict[str, str]:
    decoded: Any
    try:
        decoded = json.loads(plaintext.decode("utf-8"))
    except ValueError:
        # JSONDecodeError.doc and UnicodeDecodeError.object hold the plaintext: raise
        # outside this block so that no __context__ carries it along.
        decoded = None
    if not isinstance(decoded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in decoded.items()
    ):
        raise IntegrityFailure("decrypted record is not a map of strings")
    return decoded


def key_version_of(blob: bytes) -> int:
    """The DEK key version named in a ciphertext header (checks the format bounds)."""
    if not OVERHEAD <= len(blob) <= MAX_CIPHERTEXT_BYTES:
        raise IntegrityFailure("ciphertext length out of bounds")
    version, key_version = _HEADER.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise IntegrityFailure("unknown ciphertext format version")
    return int(key_version)


class RecordCipher:
    """Seals and opens records with a subject's DEK."""

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._random_bytes = random_bytes

    def seal(
        self, dek: bytes | AESGCM, key_version: int, place: RecordPlace, fields: Mapping[str, str]
    ) -> bytes:
        """``fields`` sealed; ``dek`` may be an ``AESGCM`` already made from the key, to
        reuse it across many records (a batch put's records of one subject)."""
        plaintext = encode_fields(fields)
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise ValueError("record plaintext exceeds MAX_PLAINTEXT_BYTES")
        if not 0 <= key_version < 2**32:
            raise ValueError("key version out of range")
        nonce = self._random_bytes(NONCE_LEN)
        aead = dek if isinstance(dek, AESGCM) else AESGCM(dek)
        sealed = aead.encrypt(nonce, plaintext, place.associated_data(key_version))
        return _HEADER.pack(FORMAT_VERSION, key_version) + nonce + sealed

    def open(self, dek: bytes | AESGCM, place: RecordPlace, blob: bytes) -> dict[str, str]:
        return decode_fields(self.open_plaintext(dek, place, blob))

    @staticmethod
    def open_plaintext(dek: bytes | AESGCM, place: RecordPlace, blob: bytes) -> bytes:
        """The authenticated canonical JSON of the fields, not yet decoded (an export
        writes it as it is, after :func:`decode_fields` checked it). ``dek`` may be an
        ``AESGCM`` already made from the key, to reuse it across many records."""
        key_version = key_version_of(blob)
        nonce = blob[_HEADER.size : _HEADER.size + NONCE_LEN]
        aead = dek if isinstance(dek, AESGCM) else AESGCM(dek)
        try:
            return aead.decrypt(
                nonce, blob[_HEADER.size + NONCE_LEN :], place.associated_data(key_version)
            )
        except InvalidTag:
            raise IntegrityFailure(
                "ciphertext failed authentication: tampered with or not from this place"
            ) from None
