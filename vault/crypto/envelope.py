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
from collections.abc import Callable, Collection, Mapping
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


def _length_prefixed(part: str) -> bytes:
    raw = part.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def associated_data_of_records(
    tenant: str, subject_id: str, category: str, key_scheme: str, bucket_id: str, key_version: int
) -> Callable[[str], bytes]:
    """:meth:`RecordPlace.associated_data` for many records of one subject, category,
    scheme and key version: the parts they share are encoded once, each record adds its
    id (exports open hundreds of thousands of records)."""
    head = b"".join(_length_prefixed(p) for p in (_AAD_LABEL, tenant, subject_id))
    tail = _length_prefixed(category)
    if key_scheme != KeyScheme.SUBJECT:
        tail += _length_prefixed(key_scheme) + _length_prefixed(bucket_id)
    tail += struct.pack(">I", key_version)
    length = struct.Struct(">I").pack

    def associated_data(record_id: str) -> bytes:
        raw = record_id.encode("utf-8")
        return head + length(len(raw)) + raw + tail

    return associated_data


def field_names_of(plaintext: bytes, candidates: Collection[str]) -> set[str] | None:
    """The field names of a record's canonical JSON (:func:`encode_fields`), found
    without parsing it: None when they cannot be told that way (then decode it).

    In canonical JSON of a map of strings every quote inside a value is escaped (``\\"``)
    and a value's closing quote is never followed by a colon, so ``"name":`` (a name of
    ``[a-z][a-z0-9_]*``) occurs only where ``name`` is a key, and an unescaped ``":"``
    once per key: ``":"`` counted less ``\\":"`` (an escaped quote inside a value) is
    the number of keys. The names are the ``candidates`` found, provided they are as
    many as the keys: a name outside ``candidates`` (a field since removed from the
    catalog) makes the counts differ.
    """
    if not (plaintext.startswith(b'{"') and plaintext.endswith(b'"}')):
        return None
    found = {name for name in candidates if b'"' + name.encode("ascii") + b'":' in plaintext}
    keys = plaintext.count(b'":"') - plaintext.count(b'\\":"')
    return found if len(found) == keys else None


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
        """The authenticated canonical JSON of the fields, not yet decoded. ``dek`` may
        be an ``AESGCM`` already made from the key, to reuse it across many records."""
        return open_sealed(
            dek if isinstance(dek, AESGCM) else AESGCM(dek),
            place.associated_data(key_version_of(blob)),
            blob,
        )


def open_sealed(aead: AESGCM, associated_data: bytes, blob: bytes) -> bytes:
    """The authenticated plaintext of ``blob`` (its header checked by the caller,
    :func:`key_version_of`), with the place's ``associated_data``."""
    nonce = blob[_HEADER.size : _HEADER.size + NONCE_LEN]
    try:
        return aead.decrypt(nonce, blob[_HEADER.size + NONCE_LEN :], associated_data)
    except InvalidTag:
        raise IntegrityFailure(
            "ciphertext failed authentication: tampered with or not from this place"
        ) from None
