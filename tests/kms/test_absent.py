"""The KeyManager of a process without a KMS refuses every call."""

from __future__ import annotations

import pytest

from kms.absent import AbsentKeyManager
from kms.base import KmsError


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("create_key", ("k",)),
        ("generate_data_key", ("k",)),
        ("unwrap", ("k", b"x")),
        ("destroy_key", ("k",)),
        ("key_exists", ("k",)),
        ("create_signing_key", ("k",)),
        ("sign", ("k", b"x")),
        ("verify", ("k", b"x", b"y")),
        ("public_key", ("k",)),
        ("rotate_key", ("k",)),
        ("rewrap", ("k", b"x")),
        ("key_versions", ("k",)),
        ("set_min_decryption_version", ("k", 1)),
        ("trim_key", ("k", 1)),
        ("public_keys", ("k",)),
    ],
)
def test_every_call_is_refused(method: str, args: tuple[object, ...]) -> None:
    with pytest.raises(KmsError):
        getattr(AbsentKeyManager(), method)(*args)
