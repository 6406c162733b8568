"""Opaque identifiers: 128 random bits as 26 lowercase base32 characters.

Subject, record and key ids are random, never derived from personal data: key ids
appear in clear in KMS audit logs and request paths.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable

from vault.errors import InvalidArgument

ID_LENGTH = 26
_ID = re.compile(r"[a-z2-7]{26}")

RandomBytes = Callable[[int], bytes]


def new_id(random_bytes: RandomBytes = os.urandom) -> str:
    return base64.b32encode(random_bytes(16)).decode("ascii").rstrip("=").lower()


def check_id(field: str, value: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidArgument(field, f"{field} is malformed: expected 26 characters [a-z2-7]")
    return value
