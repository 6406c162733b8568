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

Limits: the tag depends on the key and ``bits``. The key is replaced by a rotation
(:mod:`vault.usecases.index_rotation`, ``oubli keys rotate index``) in *generations*:
generation 1 is the service key ``lookup-index``, generation N > 1 ``lookup-index.N``,
and every row names the generation its tag was computed with. While a rotation runs two
generations are live: every write writes rows for each, every lookup queries each; the
rotation recomputes the new generation's tags from the decrypted records, then deletes
the old generation's rows and destroys its key. A database copy taken before then holds
tags that match nothing under the live key, and an index key the KMS no longer has.
Changing ``bits`` means a new tag for every row: restart with the new ``bits`` and run
a forced rotation (records not yet re-indexed are not found until it is done).

The index keys are DEKs of their own, each wrapped by a KMS key and stored in
``service_keys`` (:class:`IndexKeyStore`): one unwrap per live generation at first use
(and one when another replica made a new generation), none per lookup. A write or a
lookup checks in its transaction that it used exactly the live generations, and loads
the keys again otherwise (:meth:`BlindIndex.write`). Index rows go with their record
(foreign key, ON DELETE CASCADE): deleting a record, or the shred deleting all of a
subject's, deletes them in the same statement.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from kms.base import KeyManager, KmsError
from vault.clock import Clock, utc_now
from vault.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    KeyDestroyedError,
    OubliError,
    Unavailable,
    kms_error,
)
from vault.ids import RandomBytes, new_id
from vault.storage.blind_index import INDEX_KEY_NAME as INDEX_KEY_NAME
from vault.storage.blind_index import (
    BlindIndexRepository,
    IndexGenerationsChanged,
)
from vault.storage.blind_index import index_key_generation as index_key_generation
from vault.storage.blind_index import index_key_name as index_key_name
from vault.storage.service_keys import ServiceKey, ServiceKeyRepository

if TYPE_CHECKING:
    from vault.storage import Storage

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

#: Tries of a write or lookup that found the index key generations changed meanwhile
#: (another replica rotated): each loads the keys again first.
INDEX_ATTEMPTS = 5

#: ``reload(known) -> keys``: every live generation's key, from ``service_keys``
#: (``known`` keys are reused, new ones unwrapped through the KMS).
Reload = Callable[[Mapping[int, bytes]], Mapping[int, bytes]]

#: {generation: {kind: tag}}: the rows a record gets.
GenerationTags = dict[int, dict[str, int]]

T = TypeVar("T")


class BlindIndex:
    """Tags of records' e-mail addresses and phone numbers, and lookups by tag.

    Args:
        rows: where the index rows are kept (the Storage).
        index_key: the HMAC key, or the keys of every live generation ({generation:
            key}; one key alone is generation 1).
        bits: tag length, 1 to 31 (see the module docstring for how to choose it).
        reload: loads the live generations' keys again when a write or a lookup finds
            that another replica rotated the index key (:meth:`load` wires it to
            :class:`IndexKeyStore`); without it such a write fails.
    """

    def __init__(
        self,
        rows: BlindIndexRepository,
        index_key: bytes | Mapping[int, bytes],
        bits: int = DEFAULT_BITS,
        *,
        reload: Reload | None = None,
    ) -> None:
        if not 1 <= bits <= MAX_BITS:
            raise ValueError(f"bits must be between 1 and {MAX_BITS}")
        self._rows = rows
        self._reload = reload
        self._keys = _checked_keys({1: index_key} if isinstance(index_key, bytes) else index_key)
        self.bits = bits

    @classmethod
    def load(
        cls,
        storage: Storage,
        kms: KeyManager,
        bits: int = DEFAULT_BITS,
        *,
        clock: Clock = utc_now,
    ) -> BlindIndex:
        """The index with every live generation's key (created on first use: one KMS
        unwrap per generation, none per write or lookup), reloading them through
        ``kms`` when another replica rotates the index key."""
        store = IndexKeyStore(storage, clock=clock)
        return cls(
            storage,
            store.load_generations(kms),
            bits,
            reload=lambda known: store.load_generations(kms, known),
        )

    def __repr__(self) -> str:  # never print the keys
        return f"BlindIndex(bits={self.bits}, generations={self.generations})"

    @property
    def generations(self) -> tuple[int, ...]:
        """The generations this index knows, oldest first."""
        return tuple(sorted(self._keys))

    def refresh(self) -> None:
        """Load the live generations' keys again (after this process rotated)."""
        self._reloaded(self._keys)

    def _reloaded(self, known: Mapping[int, bytes]) -> None:
        if self._reload is None:
            raise FailedPrecondition(
                "INDEX_KEY_ROTATED",
                "the blind-index key was rotated and this index cannot load the new key",
            )
        # The KMS call runs outside any lock (a hung KMS must not queue writers); a
        # concurrent reload is as good as this one.
        self._keys = _checked_keys(self._reload(known))

    def tag(self, kind: str, normalised: str, generation: int | None = None) -> int:
        """First ``bits`` bits of HMAC-SHA256(index key, kind NUL value), big-endian,
        under the key of ``generation`` (default: the newest this index knows).

        The value is normalised again (normalisation is idempotent), so a raw value
        gets the same tag as its normalised form; an invalid one raises InvalidArgument.
        """
        keys = self._keys
        key = keys[max(keys) if generation is None else generation]
        return self._tag(key, kind, normalise(kind, normalised))

    def _tag(self, key: bytes, kind: str, value: str) -> int:
        message = kind.encode("ascii") + b"\0" + value.encode("utf-8")
        digest = hmac.new(key, message, hashlib.sha256).digest()
        return int.from_bytes(digest[:4], "big") >> (32 - self.bits)

    def tags(self, values: Mapping[str, str], generation: int | None = None) -> dict[str, int]:
        """{kind: tag} of ``values`` ({kind: normalised}) under one generation's key
        (default: the newest)."""
        return {
            _check_kind(kind): self.tag(kind, value, generation) for kind, value in values.items()
        }

    def _generation_tags(
        self, keys: Mapping[int, bytes], values: Mapping[str, str]
    ) -> GenerationTags:
        normalised = {_check_kind(kind): normalise(kind, value) for kind, value in values.items()}
        return {
            generation: {kind: self._tag(key, kind, value) for kind, value in normalised.items()}
            for generation, key in keys.items()
        }

    def write(self, values: Mapping[str, str], write: Callable[[GenerationTags], T]) -> T:
        """``write(tags)`` with the tags of ``values`` ({kind: normalised}) under every
        generation this index knows; when ``write`` finds the live generations changed
        (IndexGenerationsChanged: another replica rotated, and nothing was written), the
        keys are loaded again and ``write`` called again with new tags.

        Raises:
            Unavailable: the generations kept changing (retry), or the KMS could not
                unwrap a new key.
        """
        for _ in range(INDEX_ATTEMPTS):
            keys = self._keys
            try:
                return write(self._generation_tags(keys, values))
            except IndexGenerationsChanged:
                self._reloaded(keys)
        raise Unavailable("the blind-index key kept changing; retry")

    def index(
        self,
        subject_id: str,
        record_id: str,
        values: Mapping[str, str],
        version: int | None = None,
    ) -> bool:
        """Replace the record's rows with tags of ``values`` ({kind: normalised}) under
        every live generation's key, in one transaction.

        Rows are written only while the record exists (at ``version``, when given) and
        its subject is writable (active or closed), under a share lock on both rows,
        the subject's first (the order every writer locks in): a shred or a delete that
        starts meanwhile waits, then deletes the rows with the record. Returns False
        (and writes nothing) when the record is gone or its subject is being erased, or
        when the record has moved past ``version``: the write that made the newer
        version indexes its own values, so a late call cannot put back a replaced
        value's tags. The live generations are checked in the same transaction
        (:meth:`write`).
        """
        return self.write(
            values,
            lambda tags: self._rows.index_record(subject_id, record_id, tags, version),
        )

    def remove_record(self, subject_id: str, record_id: str) -> int:
        """Delete the record's rows; returns how many there were."""
        return self._rows.remove_index_rows(subject_id, record_id)

    def remove_subject(self, subject_id: str) -> int:
        """Delete every row of the subject (at erasure); returns how many there were."""
        return self._rows.remove_index_rows(subject_id)

    def candidates(self, kind: str, normalised: str) -> list[tuple[str, str]]:
        """(subject_id, record_id) of every record whose ``kind`` has the value's tag,
        under any live generation (during a rotation a record may have rows of the
        newest generation only, or of the older one only).

        True matches and coincidences alike: the caller decrypts each and keeps those
        for which :func:`matches` holds.
        """
        kind = _check_kind(kind)
        value = normalise(kind, normalised)
        for _ in range(INDEX_ATTEMPTS):
            keys = self._keys
            tags = {generation: self._tag(key, kind, value) for generation, key in keys.items()}
            try:
                return self._rows.index_candidates(kind, tags)
            except IndexGenerationsChanged:
                self._reloaded(keys)
        raise Unavailable("the blind-index key kept changing; retry")


def _checked_keys(keys: Mapping[int, bytes]) -> dict[int, bytes]:
    if not keys:
        raise ValueError("the index needs at least one key")
    for generation, key in keys.items():
        if generation < 1:
            raise ValueError("index key generations start at 1")
        if len(key) < 16:
            raise ValueError("the index key must be at least 16 bytes")
    return {generation: bytes(key) for generation, key in keys.items()}


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

    def index_keys(self) -> dict[int, ServiceKey]:
        """The live index key generations' rows, {generation: row} (empty before the
        first key is made)."""
        found: dict[int, ServiceKey] = {}
        for key in self._keys.service_keys(INDEX_KEY_NAME):
            generation = index_key_generation(key.name)
            if generation is not None:
                found[generation] = key
        return found

    def load_generations(
        self, kms: KeyManager, known: Mapping[int, bytes] | None = None
    ) -> dict[int, bytes]:
        """Every live generation's key, {generation: key}: generation 1 created on
        first use (:meth:`load_or_create`); the keys in ``known`` reused (a generation's
        name is never reused), the others unwrapped (one KMS call each).

        Raises:
            Unavailable: the KMS or the database is unreachable, or generations kept
                being retired while they were unwrapped (safe to retry).
            KeyDestroyedError, KmsRefused, IntegrityFailure: as :meth:`load_or_create`.
        """
        known = known or {}
        for _ in range(INDEX_ATTEMPTS):
            stored = self.index_keys()
            if not stored:
                return {1: self.load_or_create(kms)}
            try:
                return {
                    generation: known[generation] if generation in known else self._unwrap(kms, key)
                    for generation, key in sorted(stored.items())
                }
            except KeyDestroyedError:
                # A rotation retired a generation between the read and its unwrap (its
                # row goes before its key): read the live ones again.
                if set(self.index_keys()) == set(stored):
                    raise
        raise Unavailable("the blind-index key kept changing; retry")

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
