"""Key ids are random and never personal data (they show up in KMS audit logs)."""

from __future__ import annotations

import re

from kms.base import KmsError

_KEY_ID = re.compile(r"[a-z0-9_-]{1,64}")


def check_key_id(key_id: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise KmsError("invalid key id: expected [a-z0-9_-]{1,64}")
    return key_id
