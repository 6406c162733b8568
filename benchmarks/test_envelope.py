"""Envelope cost per 1 KiB record against bare AES-256-GCM (the baseline, same run).

The ratio shows what oubli adds on top of the cipher itself: canonical JSON of the
fields, the associated data naming the record's place, and the header.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.crypto.envelope import RecordCipher, RecordPlace, encode_fields

DEK = os.urandom(32)
FIELDS = {"message": "x" * 1000, "channel": "email"}
PLACE = RecordPlace("default", "a" * 26, "b" * 26, "support")
PLAINTEXT = encode_fields(FIELDS)


@pytest.mark.benchmark(group="seal-1KiB")
def test_baseline_bare_aesgcm_encrypt(benchmark) -> None:  # type: ignore[no-untyped-def]
    aead = AESGCM(DEK)
    out = benchmark(lambda: aead.encrypt(os.urandom(12), PLAINTEXT, b""))
    assert len(out) == len(PLAINTEXT) + 16


@pytest.mark.benchmark(group="seal-1KiB")
def test_record_cipher_seal(benchmark) -> None:  # type: ignore[no-untyped-def]
    cipher = RecordCipher()
    out = benchmark(lambda: cipher.seal(DEK, 1, PLACE, FIELDS))
    assert len(out) == len(PLAINTEXT) + 33


@pytest.mark.benchmark(group="open-1KiB")
def test_baseline_bare_aesgcm_decrypt(benchmark) -> None:  # type: ignore[no-untyped-def]
    aead = AESGCM(DEK)
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, PLAINTEXT, b"")
    assert benchmark(lambda: aead.decrypt(nonce, sealed, b"")) == PLAINTEXT


@pytest.mark.benchmark(group="open-1KiB")
def test_record_cipher_open(benchmark) -> None:  # type: ignore[no-untyped-def]
    cipher = RecordCipher()
    sealed = cipher.seal(DEK, 1, PLACE, FIELDS)
    assert benchmark(lambda: cipher.open(DEK, PLACE, sealed)) == FIELDS
