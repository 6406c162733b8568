"""Documented input limits (docs/api.md repeats them); every one is enforced here."""

from __future__ import annotations

import re
from collections.abc import Mapping

from vault.errors import InvalidArgument

MAX_FIELDS_PER_RECORD = 64
MAX_FIELD_VALUE_BYTES = 64 * 1024
MAX_RECORD_BYTES = 256 * 1024
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
CATEGORY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: Who supplied a record: a short label such as "customer" or "billing", never PII.
ORIGIN = re.compile(r"[a-z][a-z0-9._-]{0,63}")


def check_fields(fields: Mapping[str, str], allowed: frozenset[str]) -> dict[str, str]:
    """Validate a record's fields. Errors name fields, never echo values."""
    if not fields:
        raise InvalidArgument("fields", "a record needs at least one field")
    if len(fields) > MAX_FIELDS_PER_RECORD:
        raise InvalidArgument(
            "fields", f"too many fields: at most {MAX_FIELDS_PER_RECORD} per record"
        )
    total = 0
    for name, value in fields.items():
        if not FIELD_NAME.fullmatch(name):
            # The name itself could be anything a caller typed: do not echo it.
            raise InvalidArgument("fields", "field name malformed: expected [a-z][a-z0-9_]{0,63}")
        if name not in allowed:
            # Unknown names are caller input, not catalog names: never echoed either.
            raise InvalidArgument("fields", "a field name is not in the category's field list")
        size = len(value.encode("utf-8", errors="surrogatepass"))
        if size == 0:
            raise InvalidArgument(f"fields.{name}", f"field {name} is empty")
        if size > MAX_FIELD_VALUE_BYTES:
            raise InvalidArgument(
                f"fields.{name}",
                f"field {name} is too large: at most {MAX_FIELD_VALUE_BYTES} bytes",
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"fields.{name}", f"field {name} is not valid UTF-8") from None
        total += size + len(name)
    if total > MAX_RECORD_BYTES:
        raise InvalidArgument("fields", f"record too large: at most {MAX_RECORD_BYTES} bytes")
    return dict(fields)


def check_origin(origin: str) -> str:
    if not ORIGIN.fullmatch(origin):
        raise InvalidArgument("origin", "origin malformed: expected [a-z][a-z0-9._-]{0,63}")
    return origin


def check_page_size(page_size: int) -> int:
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"page_size must be between 0 and {MAX_PAGE_SIZE}")
    return page_size or DEFAULT_PAGE_SIZE
