"""RecordCipher: round trips, tamper resistance, place binding, known answers."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.crypto.envelope import (
    MAX_CIPHERTEXT_BYTES,
    MAX_PLAINTEXT_BYTES,
    NONCE_LEN,
    OVERHEAD,
    TAG_LEN,
    RecordCipher,
    RecordPlace,
    associated_data_of_records,
    decode_fields,
    encode_fields,
    field_names_of,
    key_version_of,
)
from vault.errors import IntegrityFailure

VECTORS_FILE = Path(__file__).parent / "data" / "envelope_vectors.json"
HEADER_LEN = 5  # format version (1) + key version (4)

DEK = bytes(range(32))
PLACE = RecordPlace(
    tenant="default",
    subject_id="aaaaaaaaaaaaaaaaaaaaaaaaaa",
    record_id="bbbbbbbbbbbbbbbbbbbbbbbbbb",
    category="contact",
)
FIELDS = {"email": "alice@example.com", "phone": "+33 1 23 45 67 89"}

field_names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
field_values = st.text(alphabet=st.characters(exclude_categories=["Cs"]))
field_maps = st.dictionaries(field_names, field_values, max_size=12)


def fixed_nonce(nonce: bytes) -> Callable[[int], bytes]:
    def random_bytes(n: int) -> bytes:
        assert n == NONCE_LEN
        return nonce

    return random_bytes


def flip(blob: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(blob)
    out[offset] ^= mask
    return bytes(out)


@pytest.fixture
def cipher() -> RecordCipher:
    return RecordCipher()


@pytest.fixture
def sealed(cipher: RecordCipher) -> bytes:
    return cipher.seal(DEK, 1, PLACE, FIELDS)


# --- round trips ------------------------------------------------------------------


def test_round_trip(cipher: RecordCipher) -> None:
    blob = cipher.seal(DEK, 3, PLACE, FIELDS)
    assert cipher.open(DEK, PLACE, blob) == FIELDS
    assert key_version_of(blob) == 3
    assert len(blob) == OVERHEAD + len(encode_fields(FIELDS))
    for value in FIELDS.values():
        assert value.encode() not in blob


def test_nonces_are_fresh(cipher: RecordCipher) -> None:
    first = cipher.seal(DEK, 1, PLACE, FIELDS)
    second = cipher.seal(DEK, 1, PLACE, FIELDS)
    assert first[HEADER_LEN : HEADER_LEN + NONCE_LEN] != second[HEADER_LEN : HEADER_LEN + NONCE_LEN]
    assert first != second


@settings(max_examples=200, deadline=None)
@given(fields=field_maps, key_version=st.integers(min_value=0, max_value=2**32 - 1))
def test_round_trip_property(fields: dict[str, str], key_version: int) -> None:
    cipher = RecordCipher()
    blob = cipher.seal(DEK, key_version, PLACE, fields)
    assert cipher.open(DEK, PLACE, blob) == fields
    assert key_version_of(blob) == key_version


@settings(max_examples=200, deadline=None)
@given(fields=field_maps)
def test_encode_decode_property(fields: dict[str, str]) -> None:
    assert decode_fields(encode_fields(fields)) == fields


@settings(max_examples=100, deadline=None)
@given(fields=field_maps, data=st.data())
def test_encode_fields_is_canonical(fields: dict[str, str], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(list(fields.items())))
    assert encode_fields(dict(shuffled)) == encode_fields(fields)
    assert encode_fields(dict(reversed(list(fields.items())))) == encode_fields(fields)


def test_encode_fields_format() -> None:
    encoded = encode_fields({"b": "2", "a": "é"})
    assert encoded == '{"a":"é","b":"2"}'.encode()


# --- tampering --------------------------------------------------------------------

# Each region of the format, as a function of the blob's length -> offset to flip.
REGIONS: list[Any] = [
    pytest.param(lambda n: 0, id="format-version"),
    pytest.param(lambda n: 1, id="key-version-first"),
    pytest.param(lambda n: 4, id="key-version-last"),
    pytest.param(lambda n: HEADER_LEN, id="nonce-first"),
    pytest.param(lambda n: HEADER_LEN + NONCE_LEN - 1, id="nonce-last"),
    pytest.param(lambda n: HEADER_LEN + NONCE_LEN, id="body-first"),
    pytest.param(lambda n: n - TAG_LEN - 1, id="body-last"),
    pytest.param(lambda n: n - TAG_LEN, id="tag-first"),
    pytest.param(lambda n: n - 1, id="tag-last"),
]


@pytest.mark.parametrize("offset_of", REGIONS)
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipped_byte_fails(
    cipher: RecordCipher, sealed: bytes, offset_of: Callable[[int], int], mask: int
) -> None:
    tampered = flip(sealed, offset_of(len(sealed)), mask)
    assert tampered != sealed
    with pytest.raises(IntegrityFailure) as caught:
        cipher.open(DEK, PLACE, tampered)
    for value in FIELDS.values():
        assert value not in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_flipped_byte_fails(data: st.DataObject) -> None:
    cipher = RecordCipher()
    blob = cipher.seal(DEK, 1, PLACE, FIELDS)
    offset = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(IntegrityFailure):
        cipher.open(DEK, PLACE, flip(blob, offset, mask))


def test_truncated_or_extended_blob_fails(cipher: RecordCipher, sealed: bytes) -> None:
    for blob in (sealed[:-1], sealed + b"\x00", sealed[: OVERHEAD + 1]):
        with pytest.raises(IntegrityFailure):
            cipher.open(DEK, PLACE, blob)


def test_wrong_dek_fails(cipher: RecordCipher, sealed: bytes) -> None:
    with pytest.raises(IntegrityFailure):
        cipher.open(bytes(32), PLACE, sealed)


@pytest.mark.parametrize(
    "moved",
    [
        pytest.param({"tenant": "other"}, id="tenant"),
        pytest.param({"subject_id": "cccccccccccccccccccccccccc"}, id="subject"),
        pytest.param({"record_id": "dddddddddddddddddddddddddd"}, id="record"),
        pytest.param({"category": "identity"}, id="category"),
    ],
)
def test_ciphertext_is_bound_to_its_place(
    cipher: RecordCipher, sealed: bytes, moved: dict[str, str]
) -> None:
    elsewhere = dataclasses.replace(PLACE, **moved)
    with pytest.raises(IntegrityFailure):
        cipher.open(DEK, elsewhere, sealed)
    assert cipher.open(DEK, PLACE, sealed) == FIELDS


BUCKET_PLACE = dataclasses.replace(
    PLACE, key_scheme="expiry", bucket_id="eeeeeeeeeeeeeeeeeeeeeeeeee"
)


@pytest.mark.parametrize(
    ("sealed_at", "opened_at"),
    [
        pytest.param(
            BUCKET_PLACE,
            dataclasses.replace(BUCKET_PLACE, bucket_id="ffffffffffffffffffffffffff"),
            id="another-bucket",
        ),
        pytest.param(
            BUCKET_PLACE, dataclasses.replace(BUCKET_PLACE, key_scheme="hold"), id="hold-scheme"
        ),
        pytest.param(BUCKET_PLACE, PLACE, id="bucket-to-subject-scheme"),
        pytest.param(PLACE, BUCKET_PLACE, id="subject-to-bucket-scheme"),
        pytest.param(
            dataclasses.replace(BUCKET_PLACE, key_scheme="hold"),
            BUCKET_PLACE,
            id="hold-to-expiry-scheme",
        ),
    ],
)
def test_ciphertext_is_bound_to_its_key_scheme_and_bucket(
    cipher: RecordCipher, sealed_at: RecordPlace, opened_at: RecordPlace
) -> None:
    """A record under a retention bucket names its scheme and bucket in the associated
    data: moved to another bucket, or relabelled as under another scheme, it fails."""
    blob = cipher.seal(DEK, 1, sealed_at, FIELDS)
    assert sealed_at.associated_data(1) != opened_at.associated_data(1)
    with pytest.raises(IntegrityFailure):
        cipher.open(DEK, opened_at, blob)
    assert cipher.open(DEK, sealed_at, blob) == FIELDS


def test_place_parts_cannot_be_shifted(cipher: RecordCipher) -> None:
    # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    place = RecordPlace("ab", "c", "r", "x")
    shifted = RecordPlace("a", "bc", "r", "x")
    assert place.associated_data(1) != shifted.associated_data(1)
    blob = cipher.seal(DEK, 1, place, FIELDS)
    with pytest.raises(IntegrityFailure):
        cipher.open(DEK, shifted, blob)


def test_key_version_relabel_fails(cipher: RecordCipher) -> None:
    blob = cipher.seal(DEK, 1, PLACE, FIELDS)
    relabelled = blob[:1] + struct.pack(">I", 2) + blob[HEADER_LEN:]
    assert key_version_of(relabelled) == 2
    with pytest.raises(IntegrityFailure):
        cipher.open(DEK, PLACE, relabelled)


@pytest.mark.parametrize(
    "length", [0, 1, HEADER_LEN, OVERHEAD - 1, MAX_CIPHERTEXT_BYTES + 1, MAX_CIPHERTEXT_BYTES + 64]
)
def test_blob_length_out_of_bounds_fails(cipher: RecordCipher, length: int) -> None:
    blob = (b"\x01\x00\x00\x00\x01" + os.urandom(length))[:length]
    with pytest.raises(IntegrityFailure):
        key_version_of(blob)
    with pytest.raises(IntegrityFailure):
        cipher.open(DEK, PLACE, blob)


@pytest.mark.parametrize("length", [OVERHEAD, MAX_CIPHERTEXT_BYTES])
def test_blob_length_at_the_bounds_is_parsed_then_rejected(
    cipher: RecordCipher, length: int
) -> None:
    blob = b"\x01\x00\x00\x00\x01" + bytes(length - HEADER_LEN)
    assert key_version_of(blob) == 1
    with pytest.raises(IntegrityFailure):
        cipher.open(DEK, PLACE, blob)


def _seal_raw(plaintext: bytes, key_version: int = 1) -> bytes:
    nonce = bytes(NONCE_LEN)
    body = AESGCM(DEK).encrypt(nonce, plaintext, PLACE.associated_data(key_version))
    return struct.pack(">BI", 1, key_version) + nonce + body


@pytest.mark.parametrize(
    "plaintext",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'["a", "b"]', id="list"),
        pytest.param(b'{"a": 1}', id="non-string-value"),
        pytest.param(b'"secret value"', id="bare-string"),
    ],
)
def test_authentic_but_malformed_plaintext_fails_cleanly(
    cipher: RecordCipher, plaintext: bytes
) -> None:
    with pytest.raises(IntegrityFailure) as caught:
        cipher.open(DEK, PLACE, _seal_raw(plaintext))
    # Neither the error nor anything chained to it may carry the plaintext.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert "secret value" not in str(caught.value)


def test_seal_rejects_out_of_range_key_version(cipher: RecordCipher) -> None:
    for key_version in (-1, 2**32):
        with pytest.raises(ValueError):
            cipher.seal(DEK, key_version, PLACE, FIELDS)


def test_seal_rejects_oversized_record(cipher: RecordCipher) -> None:
    with pytest.raises(ValueError):
        cipher.seal(DEK, 1, PLACE, {"note": "x" * MAX_PLAINTEXT_BYTES})


def test_largest_record_round_trips(cipher: RecordCipher) -> None:
    filler = MAX_PLAINTEXT_BYTES - len(encode_fields({"note": ""}))
    fields = {"note": "x" * filler}
    blob = cipher.seal(DEK, 1, PLACE, fields)
    assert len(blob) == MAX_CIPHERTEXT_BYTES
    assert cipher.open(DEK, PLACE, blob) == fields


# --- known answers ----------------------------------------------------------------


def _load_vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"]
    return vectors


VECTORS = _load_vectors()


def test_vector_file_is_not_empty() -> None:
    assert len(VECTORS) >= 3


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_known_answer(vector: dict[str, Any]) -> None:
    dek = bytes.fromhex(vector["dek"])
    nonce = bytes.fromhex(vector["nonce"])
    place = RecordPlace(**vector["place"])
    expected = bytes.fromhex(vector["ciphertext"])
    cipher = RecordCipher(random_bytes=fixed_nonce(nonce))

    blob = cipher.seal(dek, vector["key_version"], place, vector["fields"])

    assert blob.hex() == vector["ciphertext"]
    assert cipher.open(dek, place, expected) == vector["fields"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_known_answer_layout(vector: dict[str, Any]) -> None:
    blob = bytes.fromhex(vector["ciphertext"])
    plaintext = encode_fields(vector["fields"])

    assert blob[0] == 0x01
    assert blob[1:5] == vector["key_version"].to_bytes(4, "big")
    assert blob[5:17] == bytes.fromhex(vector["nonce"])
    assert len(blob) == 1 + 4 + 12 + len(plaintext) + 16


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_known_answer_matches_the_documented_format(vector: dict[str, Any]) -> None:
    """Rebuild the ciphertext from the docstring's description alone."""
    place = vector["place"]
    aad = b""
    for part in (
        "oubli-record/v1",
        place["tenant"],
        place["subject_id"],
        place["record_id"],
        place["category"],
    ):
        raw = part.encode("utf-8")
        aad += len(raw).to_bytes(4, "big") + raw
    aad += vector["key_version"].to_bytes(4, "big")
    plaintext = json.dumps(
        vector["fields"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    nonce = bytes.fromhex(vector["nonce"])

    body = AESGCM(bytes.fromhex(vector["dek"])).encrypt(nonce, plaintext, aad)

    assert bytes.fromhex(vector["ciphertext"]) == (
        b"\x01" + vector["key_version"].to_bytes(4, "big") + nonce + body
    )


# --- the export's fast paths (RecordCrypto.open_page) -------------------------------

#: Values that look like JSON keys, escapes, quotes, non-ASCII and control characters.
TRICKY = st.sampled_from(
    ['"email":"x"', '\\"phone\\":', 'a"b', "\\", "\u00e9t\u00e9 \u2603", "\n\t\x00", '":"', "}{"]
)


@given(
    st.dictionaries(field_names, st.one_of(field_values, TRICKY), min_size=1, max_size=12),
    st.lists(field_names, max_size=6),
)
def test_field_names_of_agrees_with_decoding(fields: dict[str, str], extra: list[str]) -> None:
    plaintext = encode_fields(fields)
    assert field_names_of(plaintext, {*fields, *extra}) == set(fields)


@given(st.dictionaries(field_names, st.one_of(field_values, TRICKY), min_size=1, max_size=12))
def test_field_names_of_gives_up_on_names_it_was_not_given(fields: dict[str, str]) -> None:
    plaintext = encode_fields(fields)
    missing = sorted(fields)[0]
    assert field_names_of(plaintext, set(fields) - {missing}) is None  # then: decode


def test_field_names_of_gives_up_on_what_is_not_canonical_json() -> None:
    assert field_names_of(b"[]", {"email"}) is None
    assert field_names_of(b'{"email": "x"}', {"email"}) is None  # not canonical: spaces


@given(
    st.text(min_size=1, max_size=30),
    st.sampled_from(["subject", "expiry", "hold"]),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_associated_data_of_records_is_the_places(
    record_id: str, scheme: str, key_version: int
) -> None:
    place = dataclasses.replace(
        PLACE, record_id=record_id, key_scheme=scheme, bucket_id="" if scheme == "subject" else "b"
    )
    make = associated_data_of_records(
        place.tenant, place.subject_id, place.category, scheme, place.bucket_id, key_version
    )
    assert make(record_id) == place.associated_data(key_version)
