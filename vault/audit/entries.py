"""The audit entry format: events as names only, the entry hash, the checkpoint message.

Every access appends one :class:`AuditEvent` — caller, action, pseudonymous subject id,
category and field *names*, purpose, outcome, request id — as an entry of a hash chain.
Entries hold names only, never a value: anything that does not look like a name or an
id is recorded as :data:`INVALID` instead (a caller-typed purpose such as an e-mail
address never reaches the table).

Entry hash (hex SHA-256)::

    hash = sha256(prev_hash + "\\n" + canonical JSON)

``prev_hash`` is the previous entry's hash (64 zeros for seq 1); the canonical JSON is
the object ``{action, at, caller, categories, fields, outcome, purpose, request_id,
seq, subject_id}`` with sorted keys, no whitespace, ASCII only, ``at`` in ISO 8601 UTC
with microseconds (``2026-11-23T16:45:23.061905Z``) and ``subject_id`` null when there is
none. Editing, deleting or reordering rows breaks a hash or a link.

A checkpoint signs the chain head ``(seq, hash)``; the signed message is::

    b"oubli-audit-checkpoint/v1\\n" + str(seq) + b"\\n" + hash
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from kms.signatures import signature_key_version
from vault.storage.audit_log import PendingAuditEntry, StoredAuditEntry, StoredCheckpoint

#: ``prev_hash`` of the first entry.
GENESIS_HASH = "0" * 64
#: Recorded in place of anything that is not a plain name (it might be personal data).
INVALID = "~invalid"
CHECKPOINT_CONTEXT = b"oubli-audit-checkpoint/v1\n"
#: A hex SHA-256, as entry and checkpoint hashes are written.
HEX_HASH = re.compile(r"[0-9a-f]{64}")

# Names: catalog names, callers, RPC names, reason codes, request ids. No "@", "+",
# spaces or other characters that e-mail addresses, phone numbers or prose need.
_NAME = re.compile(r"[A-Za-z0-9_.:/-]{0,64}")
_SUBJECT_ID = re.compile(r"[a-z2-7]{26}")


def _name(value: str) -> str:
    return value if isinstance(value, str) and _NAME.fullmatch(value) else INVALID


def _names(values: Sequence[str]) -> tuple[str, ...]:
    if isinstance(values, str):  # a lone string is a caller bug, not 1-char names
        values = (values,)
    return tuple(_name(v) for v in values)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """What happened, as names only. Values that are not names become :data:`INVALID`.

    Attributes:
        caller: the authenticated caller (e.g. ``billing``).
        action: what was done (e.g. an RPC name, ``GetRecord``).
        subject_id: the pseudonymous subject id, if one was touched.
        categories: catalog category names involved.
        fields: field names read or written (never their values).
        purpose: the declared purpose (a catalog name), or empty.
        outcome: ``OK`` or the error's reason code.
        request_id: the request id, for correlation with the logs.
    """

    caller: str
    action: str
    subject_id: str | None = None
    categories: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    purpose: str = ""
    outcome: str
    request_id: str = ""

    def __post_init__(self) -> None:
        for name in ("caller", "action", "purpose", "outcome", "request_id"):
            object.__setattr__(self, name, _name(getattr(self, name)))
        object.__setattr__(self, "categories", _names(self.categories))
        object.__setattr__(self, "fields", _names(self.fields))
        if self.subject_id is not None and not (
            isinstance(self.subject_id, str) and _SUBJECT_ID.fullmatch(self.subject_id)
        ):
            object.__setattr__(self, "subject_id", INVALID)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One stored link of the chain."""

    seq: int
    at: datetime
    event: AuditEvent
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed chain head. ``signature`` is in the KMS backend's format."""

    seq: int
    hash: str
    signature: bytes
    key_id: str
    at: datetime

    @property
    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.hash)

    @property
    def key_version(self) -> int:
        """The signing key version the signature names (0 if it is malformed)."""
        return signature_key_version(self.signature) or 0


def iso_time(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("naive datetime")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(seq: int, at: datetime, event: AuditEvent) -> str:
    body = {
        "action": event.action,
        "at": iso_time(at),
        "caller": event.caller,
        "categories": list(event.categories),
        "fields": list(event.fields),
        "outcome": event.outcome,
        "purpose": event.purpose,
        "request_id": event.request_id,
        "seq": seq,
        "subject_id": event.subject_id,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_hash(prev_hash: str, seq: int, at: datetime, event: AuditEvent) -> str:
    payload = prev_hash + "\n" + canonical_json(seq, at, event)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def checkpoint_message(seq: int, head_hash: str) -> bytes:
    return CHECKPOINT_CONTEXT + f"{seq}\n{head_hash}".encode("ascii")


# --- to and from the stored columns ----------------------------------------------------


def stored_entry(entry: AuditEntry) -> StoredAuditEntry:
    """The columns ``entry`` is stored as (name lists as JSON text)."""
    event = entry.event
    return StoredAuditEntry(
        seq=entry.seq,
        at=entry.at,
        caller=event.caller,
        action=event.action,
        subject_id=event.subject_id,
        categories=json.dumps(list(event.categories)),
        fields=json.dumps(list(event.fields)),
        purpose=event.purpose,
        outcome=event.outcome,
        request_id=event.request_id,
        prev_hash=entry.prev_hash,
        hash=entry.hash,
    )


def pending_entry(at: datetime, event: AuditEvent) -> PendingAuditEntry:
    """The columns ``event``, recorded at ``at``, waits in until it is sealed."""
    return PendingAuditEntry(
        at=at,
        caller=event.caller,
        action=event.action,
        subject_id=event.subject_id,
        categories=json.dumps(list(event.categories)),
        fields=json.dumps(list(event.fields)),
        purpose=event.purpose,
        outcome=event.outcome,
        request_id=event.request_id,
    )


def read_pending(pending: PendingAuditEntry, sealed_at: datetime) -> tuple[datetime, AuditEvent]:
    """The time and event a pending row holds, to be sealed.

    Lenient, unlike :func:`read_entry`: the row is not hashed yet, so whatever it holds
    goes through the name filter again (an edit that put a value there is recorded as
    :data:`INVALID`), and a time that cannot be read becomes ``sealed_at``. A row no
    append could have written must not stop every later entry from being sealed.
    """
    event = AuditEvent(
        caller=pending.caller,
        action=pending.action,
        subject_id=pending.subject_id,
        categories=_stored_names(pending.categories, strict=False),
        fields=_stored_names(pending.fields, strict=False),
        purpose=pending.purpose,
        outcome=pending.outcome,
        request_id=pending.request_id,
    )
    try:
        at = _stored_time(pending.at)
    except Unreadable:
        at = sealed_at
    return at, event


class Unreadable(Exception):
    """A stored value that no append could have written (the row was edited)."""


def read_entry(stored: StoredAuditEntry, *, strict: bool = False) -> AuditEntry:
    """An entry from its stored columns, taken exactly as they are.

    The name filter of ``AuditEvent.__post_init__`` is bypassed: an edited value must
    change the recomputed hash, not be filtered back into the value that was hashed.
    ``strict`` (verification) raises :class:`Unreadable` for a value no append writes,
    rather than showing it as :data:`INVALID`, which could equal what was hashed.
    """
    event = object.__new__(AuditEvent)
    values = {
        "caller": stored.caller,
        "action": stored.action,
        "subject_id": stored.subject_id,
        "categories": _stored_names(stored.categories, strict),
        "fields": _stored_names(stored.fields, strict),
        "purpose": stored.purpose,
        "outcome": stored.outcome,
        "request_id": stored.request_id,
    }
    for name, value in values.items():
        object.__setattr__(event, name, value)
    return AuditEntry(stored.seq, _stored_time(stored.at), event, stored.prev_hash, stored.hash)


def _stored_names(value: str, strict: bool) -> tuple[str, ...]:
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        parsed = None
    if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
        return tuple(parsed)
    if strict:
        raise Unreadable
    return (INVALID,)


def _stored_time(value: object) -> datetime:
    """``at`` as stored: a datetime, or text where the column was read as text (SQLite
    keeps any text an editor writes there; verification must not trip over it)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise Unreadable from None
    if not isinstance(value, datetime):
        raise Unreadable
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def stored_checkpoint(checkpoint: Checkpoint) -> StoredCheckpoint:
    return StoredCheckpoint(
        checkpoint.seq, checkpoint.hash, checkpoint.signature, checkpoint.key_id, checkpoint.at
    )


def read_checkpoint(stored: StoredCheckpoint) -> Checkpoint:
    return Checkpoint(stored.seq, stored.hash, stored.signature, stored.key_id, stored.at)
