"""Lookup by e-mail or phone: a blind index over records, never a clear value.

A record's e-mail address or phone number is *normalised* (:func:`normalise_email`,
:func:`normalise_phone`) and stored only as a **tag**: the first ``bits`` bits of
HMAC-SHA256(index key, kind NUL value). A lookup computes the tag of the value sought,
reads the (subject, record) pairs holding it — the *candidates* — and the caller
decrypts each candidate and keeps those whose field really normalises to the value
(:func:`matches`). Tags are deliberately short, so candidates include other people.

Choosing ``bits`` (CipherSweet's blind index planning)
------------------------------------------------------
With ``R`` rows of one kind and a tag of ``L`` bits, each tag value is shared by about
``R / 2**L`` rows: the *coincidences*. CipherSweet's planner (FieldIndexPlanner) wants
``2 <= R / 2**L <= sqrt(R)``:

- at least ~2 rows per tag, so a tag never points at one person: someone who reads the
  database (a backup, a replica) learns at most which rows *may* share a value, and
  cannot confirm a guessed address offline (no index key) nor single out a row;
- at most sqrt(R) rows per tag, so the index still narrows a lookup down to a few
  decryptions instead of a scan.

The planner's maximum is one bit more than the longest tag that still gives more than
2 coincidences (so between 1 and 2 at the maximum itself), its minimum the shortest tag
with at most sqrt(R); :func:`recommended_bits` computes the same. At the expected 10^5
subjects (10^5 rows of each kind) it gives 9..16 bits: the default ``bits=16`` is the
planner's maximum there, with R / 2**16 ≈ 1.5 coincidences per phone tag, and ≈ 3 per
e-mail tag when most subjects also have a recovery e-mail (2 x 10^5 e-mail rows), far
below sqrt(R) ≈ 316 (15 bits would give ≈ 3 and ≈ 6). So a lookup decrypts ~2-4
records. With far fewer subjects 16 bits is more than the planner allows: pass
``bits=recommended_bits(rows)[1]`` for the population expected (and rebuild the index
when it changes by an order of magnitude). Tags are kept per kind (the kind is part of
the HMAC input and of every query), so e-mail and phone rows do not dilute each other.

Limits: the tag depends on the key and ``bits``, so changing either (re-keying the
index on the backup schedule) means recomputing every row from the decrypted records.

The index key is a DEK of its own, wrapped by a KMS key and stored in ``service_keys``
(:class:`IndexKeyStore`): one unwrap at start-up, none per lookup. Index rows go with
their record (foreign key, ON DELETE CASCADE): deleting a record, or the shred deleting
all of a subject's, deletes them in the same statement.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import re
import unicodedata
from collections.abc import Mapping

from kms.base import KeyManager, KmsError
from vault.clock import Clock, utc_now
from vault.errors import (
    AlreadyExists,
    InvalidArgument,
    OubliError,
    kms_error,
)
from vault.ids import RandomBytes, new_id
from vault.storage.blind_index import BlindIndexRepository
from vault.storage.service_keys import ServiceKey, ServiceKeyRepository

EMAIL = "email"
PHONE = "phone"
KINDS = (EMAIL, PHONE)

#: category -> {field -> kind}: which record fields are indexed, and as what.
INDEXED_FIELDS: dict[str, dict[str, str]] = {
    "contact": {"email": EMAIL, "phone": PHONE},
    "credentials": {"recovery_email": EMAIL},
}

DEFAULT_BITS = 16
#: Tags are stored in a signed 32-bit INTEGER column.
MAX_BITS = 31
INDEX_KEY_NAME = "lookup-index"

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_PHONE_INPUT_LENGTH = 64
_PHONE_SEPARATORS = re.compile(r"[\s.\-()]")
_PHONE = re.compile(r"\+?[0-9]{6,15}", re.ASCII)


# --- normalisation -------------------------------------------------------------------


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument("value", "the value must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("value", "the value is not valid UTF-8") from None
    return value


def normalise_email(value: str) -> str:
    """Trim, lowercase, NFC; exactly one "@" with text on both sides, no whitespace
    or control characters, at most 254 characters.

    Raises:
        InvalidArgument: (field ``value``) not an e-mail address; the value is never
            echoed.
    """
    text = unicodedata.normalize("NFC", _text(value).strip().lower())
    local, at, domain = text.partition("@")
    if (
        not at
        or not local
        or not domain
        or "@" in domain
        or any(c.isspace() or unicodedata.category(c) == "Cc" for c in text)
        or len(text) > MAX_EMAIL_LENGTH
    ):
        raise InvalidArgument("value", "not an e-mail address: expected one '@', no spaces")
    return text


def normalise_phone(value: str) -> str:
    """Keep a leading "+" and the digits: spaces, dots, dashes and parentheses go, a
    "00" international prefix becomes "+", and "(0)" after a country code goes (as in
    "+44 (0)20 ..."). The result is ``+?`` and 6 to 15 ASCII digits.

    No country is inferred: a national number ("01 23 45 67 89") and its international
    form ("+33 1 23 45 67 89") normalise differently.

    Raises:
        InvalidArgument: (field ``value``) not a phone number; the value is never
            echoed.
    """
    text = _text(value).strip()
    if len(text) > MAX_PHONE_INPUT_LENGTH:
        raise InvalidArgument("value", "not a phone number: too long")
    if text.startswith(("+", "00")):
        text = text.replace("(0)", "")
    text = _PHONE_SEPARATORS.sub("", text)
    # After the separators go: "0.0033..." is "0033...", so normalising stays idempotent.
    if text.startswith("00"):
        text = "+" + text[2:]
    if not _PHONE.fullmatch(text):
        raise InvalidArgument(
            "value", "not a phone number: expected an optional '+' and 6 to 15 digits"
        )
    return text


_NORMALISERS = {EMAIL: normalise_email, PHONE: normalise_phone}


def _check_kind(kind: str) -> str:
    if kind not in _NORMALISERS:
        raise InvalidArgument("kind", "kind must be 'email' or 'phone'")
    return kind


def normalise(kind: str, value: str) -> str:
    """:func:`normalise_email` or :func:`normalise_phone`, by ``kind``."""
    return _NORMALISERS[_check_kind(kind)](value)


def indexed_values(category: str, fields: Mapping[str, str]) -> dict[str, str]:
    """The values of a record to index: ``{kind: normalised}``.

    Fields of other categories, absent fields and values that do not normalise are
    skipped: an odd phone number never makes a write fail, it is just not findable.
    """
    values: dict[str, str] = {}
    for field, kind in INDEXED_FIELDS.get(category, {}).items():
        raw = fields.get(field)
        if not raw:
            continue
        with contextlib.suppress(InvalidArgument):
            values[kind] = normalise(kind, raw)
    return values


def matches(kind: str, value: str, category: str, fields: Mapping[str, str]) -> bool:
    """Whether a decrypted record really holds ``value`` as ``kind`` (confirms a
    candidate). ``value`` is normalised first; an invalid one raises InvalidArgument."""
    wanted = normalise(kind, value)
    found = indexed_values(category, fields).get(kind)
    return found is not None and hmac.compare_digest(found.encode(), wanted.encode())


def recommended_bits(rows: int) -> tuple[int, int]:
    """(min, max) tag bits for ``rows`` rows of one kind, as CipherSweet's
    FieldIndexPlanner computes them for a single index of unbounded input domain."""
    if rows < 1:
        raise ValueError("an empty population is not useful for estimates")
    sqrt_rows = math.sqrt(rows)
    low: int | None = None
    high: int | None = None
    for bits in range(256, 0, -1):
        coincidences = rows / 2**bits
        if high is None and coincidences > 2:
            high = bits + 1
        if 2 <= coincidences <= sqrt_rows:
            low = bits
    low = 1 if low is None else low
    high = 256 if high is None else high
    return min(low, high), high


# --- the index -------------------------------------------------------------------------


class BlindIndex:
    """Tags of records' e-mail addresses and phone numbers, and lookups by tag.

    Args:
        rows: where the index rows are kept (the Storage).
        index_key: the HMAC key (from :meth:`IndexKeyStore.load_or_create`).
        bits: tag length, 1 to 31 (see the module docstring for how to choose it).
    """

    def __init__(
        self, rows: BlindIndexRepository, index_key: bytes, bits: int = DEFAULT_BITS
    ) -> None:
        if not 1 <= bits <= MAX_BITS:
            raise ValueError(f"bits must be between 1 and {MAX_BITS}")
        if len(index_key) < 16:
            raise ValueError("the index key must be at least 16 bytes")
        self._rows = rows
        self._key = bytes(index_key)
        self.bits = bits

    def __repr__(self) -> str:  # never print the key
        return f"BlindIndex(bits={self.bits})"

    def tag(self, kind: str, normalised: str) -> int:
        """First ``bits`` bits of HMAC-SHA256(index key, kind NUL value), big-endian.

        The value is normalised again (normalisation is idempotent), so a raw value
        gets the same tag as its normalised form; an invalid one raises InvalidArgument.
        """
        value = normalise(kind, normalised)
        message = kind.encode("ascii") + b"\0" + value.encode("utf-8")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return int.from_bytes(digest[:4], "big") >> (32 - self.bits)

    def tags(self, values: Mapping[str, str]) -> dict[str, int]:
        """{kind: tag} of ``values`` ({kind: normalised}): the rows a record gets."""
        return {_check_kind(kind): self.tag(kind, value) for kind, value in values.items()}

    def index(
        self,
        subject_id: str,
        record_id: str,
        values: Mapping[str, str],
        version: int | None = None,
    ) -> bool:
        """Replace the record's rows with tags of ``values`` ({kind: normalised}), in
        one transaction.

        Rows are written only while the record exists (at ``version``, when given) and
        its subject is writable (active or closed), under a share lock on both rows,
        the subject's first (the order every writer locks in): a shred or a delete that
        starts meanwhile waits, then deletes the rows with the record. Returns False
        (and writes nothing) when the record is gone or its subject is being erased, or
        when the record has moved past ``version``: the write that made the newer
        version indexes its own values, so a late call cannot put back a replaced
        value's tags.
        """
        return self._rows.index_record(subject_id, record_id, self.tags(values), version)

    def remove_record(self, subject_id: str, record_id: str) -> int:
        """Delete the record's rows; returns how many there were."""
        return self._rows.remove_index_rows(subject_id, record_id)

    def remove_subject(self, subject_id: str) -> int:
        """Delete every row of the subject (at erasure); returns how many there were."""
        return self._rows.remove_index_rows(subject_id)

    def candidates(self, kind: str, normalised: str) -> list[tuple[str, str]]:
        """(subject_id, record_id) of every record whose ``kind`` has the value's tag.

        True matches and coincidences alike: the caller decrypts each and keeps those
        for which :func:`matches` holds.
        """
        return self._rows.index_candidates(kind, self.tag(kind, normalised))


# --- the index key -----------------------------------------------------------------------


class IndexKeyStore:
    """oubli's own DEKs (the lookup index key), each wrapped by a KMS key of its own
    and stored by name in ``service_keys``.

    :meth:`load_or_create` makes the KMS key and the DEK on first use and unwraps the
    stored DEK on later starts: one KMS call at start-up, none afterwards (the caller
    keeps the key in memory, e.g. in a :class:`BlindIndex`). Two replicas starting at
    once on an empty database both try to create it; the name is the primary key, so
    one insert wins, the other destroys its own KMS key and unwraps the winner's.
    """

    def __init__(
        self,
        keys: ServiceKeyRepository,
        *,
        clock: Clock = utc_now,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._keys = keys
        self._clock = clock
        self._random_bytes = random_bytes

    def load_or_create(self, kms: KeyManager, name: str = INDEX_KEY_NAME) -> bytes:
        """The plaintext DEK named ``name``, created (KMS key + data key) on first use.

        Raises:
            Unavailable: the KMS or the database is unreachable (safe to retry).
            KeyDestroyedError: the KMS key was destroyed: the stored DEK is lost.
            KmsRefused, IntegrityFailure: the KMS refused oubli or the wrapped DEK.
        """
        stored = self._keys.service_key(name)
        if stored is not None:
            return self._unwrap(kms, stored)
        key_id = new_id(self._random_bytes)
        try:
            kms.create_key(key_id)
            data_key = kms.generate_data_key(key_id)
        except KmsError as e:
            self._discard(kms, key_id)
            raise kms_error(e) from e
        try:
            self._keys.add_service_key(
                ServiceKey(name, key_id, data_key.wrapped, data_key.key_version, self._clock())
            )
        except AlreadyExists:
            # Another replica created it first: ours protects nothing, use theirs.
            self._discard(kms, key_id)
            stored = self._keys.service_key(name)
            if stored is None:  # pragma: no cover - the insert failed on this very row
                raise
            return self._unwrap(kms, stored)
        except OubliError:
            self._discard(kms, key_id)  # no row points at it: leave no orphan key
            raise
        return data_key.plaintext

    @staticmethod
    def _unwrap(kms: KeyManager, key: ServiceKey) -> bytes:
        try:
            return kms.unwrap(key.key_id, key.wrapped_dek)
        except KmsError as e:
            raise kms_error(e) from e

    @staticmethod
    def _discard(kms: KeyManager, key_id: str) -> None:
        with contextlib.suppress(KmsError):  # best effort: an unused key protects nothing
            kms.destroy_key(key_id)
