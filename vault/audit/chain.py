"""The audit log: who touched which subject, hash-chained and signed (no audit, no access).

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

The chain alone cannot show that its newest entries were cut off, nor that someone
rewrote it and recomputed every hash. A *checkpoint* closes that gap: the head
``(seq, hash)`` signed with an Ed25519 key that lives in the KMS (a Transit ``ed25519``
key, or the local keystore's). The signed message is::

    b"oubli-audit-checkpoint/v1\\n" + str(seq) + b"\\n" + hash

so anyone with the public key (:meth:`AuditLog.public_key`) can check a published
checkpoint offline (:func:`kms.signatures.verify_offline`). Truncation or rewriting
*after* the newest checkpoint is undetectable by design; checkpoint often, and copy
checkpoints outside the database (:meth:`AuditLog.checkpoints_after`): whoever can
write to the database can also delete checkpoint rows, and :meth:`AuditLog.verify`
given the copies (``exported``) catches what that deletion hid.

:meth:`AuditLog.verify` is incremental by default in the server: it checks the newest
checkpoint and the entries after it, since the checkpointed entry's hash vouches for
every entry before it through the links. A full walk from seq 1 (which also finds an
edit before that checkpoint that nobody re-chained) is throttled.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, String, func, insert, select, text, type_coerce
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kms.base import KeyDestroyed, KeyManager, KmsAccessDenied, KmsError, KmsUnavailable
from kms.signatures import signature_key_version
from vault.audit.throttle import Throttle
from vault.clock import Clock
from vault.errors import (
    FailedPrecondition,
    IntegrityFailure,
    InvalidArgument,
    KmsRefused,
    Unavailable,
)
from vault.storage import Storage, sqlite_writer
from vault.storage.groupcommit import GroupCommit
from vault.storage.tables import AuditCheckpointRow, AuditEntryRow

#: ``prev_hash`` of the first entry.
GENESIS_HASH = "0" * 64
#: Recorded in place of anything that is not a plain name (it might be personal data).
INVALID = "~invalid"
CHECKPOINT_CONTEXT = b"oubli-audit-checkpoint/v1\n"
MAX_QUERY_LIMIT = 10_000
#: Checkpoints kept outside the database that one verification compares (the newest
#: one alone vouches for every entry before it; older ones narrow a rewrite down).
MAX_EXPORTED_CHECKPOINTS = 10_000

# Names: catalog names, callers, RPC names, reason codes, request ids. No "@", "+",
# spaces or other characters that e-mail addresses, phone numbers or prose need.
_NAME = re.compile(r"[A-Za-z0-9_.:/-]{0,64}")
_SUBJECT_ID = re.compile(r"[a-z2-7]{26}")
_HEX_HASH = re.compile(r"[0-9a-f]{64}")
_PAGE = 1000
#: The walk reads ``at`` as the database holds it (text on SQLite), see _stored_time.
_RAW_COLUMNS = (
    *(column for column in AuditEntryRow.__table__.c if column.name != "at"),
    type_coerce(AuditEntryRow.__table__.c.at, String).label("at"),
)

T = TypeVar("T")


class AuditChainBroken(IntegrityFailure):
    """The chain since the last checkpoint does not verify: oubli will not sign it."""

    reason = "AUDIT_CHAIN_BROKEN"


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


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :meth:`AuditLog.verify`.

    Attributes:
        ok: nothing was found changed.
        checked: entries verified (up to the first broken one).
        first_broken_seq: the first entry that does not verify, or the checkpoint's seq
            when the checkpoint itself is what fails.
        reason: ``OK`` or a code: ``HASH_MISMATCH`` (entry edited), ``SEQ_GAP`` (entries
            deleted before this one), ``PREV_HASH_MISMATCH`` (link broken: a row was
            replaced, reordered or removed), ``CHECKPOINT_MISMATCH`` (chain rewritten at
            or before the checkpoint), ``CHECKPOINT_ENTRY_MISSING`` (tail truncated),
            ``CHECKPOINT_SIGNATURE_INVALID``, ``CHECKPOINT_KEY_UNTRUSTED`` (signed by
            another key id), ``CHECKPOINT_KEY_MISSING`` (the signing key is gone),
            ``CHECKPOINT_DELETED`` (a checkpoint this AuditLog verified before is gone
            from the database or changed), ``EXPORTED_CHECKPOINT_INVALID`` (an exported
            checkpoint is not signed by the signing key: the copy was altered).
        detail: one sentence for people, with seqs only.
        checkpoint_seq: the newest checkpoint the chain was checked against, if any.
        full: the walk started at seq 1.
        exported_checked: exported checkpoints compared with the chain.
    """

    ok: bool
    checked: int
    first_broken_seq: int | None
    reason: str
    detail: str = ""
    checkpoint_seq: int | None = None
    full: bool = True
    exported_checked: int = 0


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


class _Unreadable(Exception):
    """A stored value that no append could have written (the row was edited)."""


def _entry(row: Any, *, strict: bool = False) -> AuditEntry:
    """An entry from a stored row, taken exactly as it is.

    The name filter of ``AuditEvent.__post_init__`` is bypassed: an edited value must
    change the recomputed hash, not be filtered back into the value that was hashed.
    ``strict`` (verification) raises :class:`_Unreadable` for a value no append writes,
    rather than showing it as :data:`INVALID`, which could equal what was hashed.
    """
    event = object.__new__(AuditEvent)
    values = {
        "caller": row.caller,
        "action": row.action,
        "subject_id": row.subject_id,
        "categories": _stored_names(row.categories, strict),
        "fields": _stored_names(row.fields, strict),
        "purpose": row.purpose,
        "outcome": row.outcome,
        "request_id": row.request_id,
    }
    for name, value in values.items():
        object.__setattr__(event, name, value)
    return AuditEntry(row.seq, _stored_time(row.at), event, row.prev_hash, row.hash)


def _stored_names(value: str, strict: bool) -> tuple[str, ...]:
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        parsed = None
    if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
        return tuple(parsed)
    if strict:
        raise _Unreadable
    return (INVALID,)


def _stored_time(value: object) -> datetime:
    """``at`` as stored: a datetime, or text where the column was read as text (SQLite
    keeps any text an editor writes there; verification must not trip over it)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise _Unreadable from None
    if not isinstance(value, datetime):
        raise _Unreadable
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(row.seq, row.hash, bytes(row.signature), row.key_id, row.at)


@dataclass(slots=True)
class _Walk:
    """Progress of a walk along the chain, and where it broke."""

    checked: int = 0
    last_seq: int = 0
    broken_seq: int | None = None
    reason: str = "OK"
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.broken_seq is not None

    def fail(self, seq: int, reason: str, detail: str) -> None:
        self.broken_seq, self.reason, self.detail = seq, reason, detail


def _recomputed_hash(row: Any) -> str | None:
    """The hash a stored row's columns give (None for a value no append writes)."""
    try:
        entry = _entry(row, strict=True)
    except _Unreadable:
        return None
    return entry_hash(entry.prev_hash, entry.seq, entry.at, entry.event)


def _exported(checkpoints: Sequence[Checkpoint]) -> list[Checkpoint]:
    """Exported checkpoints in seq order, checked for shape (not yet for signature)."""
    if len(checkpoints) > MAX_EXPORTED_CHECKPOINTS:
        raise InvalidArgument(
            "exported", f"at most {MAX_EXPORTED_CHECKPOINTS} exported checkpoints per call"
        )
    by_seq: dict[int, Checkpoint] = {}
    for checkpoint in checkpoints:
        if checkpoint.seq < 1 or not _HEX_HASH.fullmatch(checkpoint.hash):
            raise InvalidArgument(
                "exported", "an exported checkpoint needs a seq >= 1 and a hex SHA-256 hash"
            )
        if by_seq.setdefault(checkpoint.seq, checkpoint).hash != checkpoint.hash:
            raise InvalidArgument("exported", "two exported checkpoints for one seq differ")
    return [by_seq[seq] for seq in sorted(by_seq)]


def _ok_detail(walk: _Walk, newest: Checkpoint | None, full: bool, exported: int) -> str:
    if newest is None:
        detail = (
            f"{walk.checked} entries verified; no signed checkpoint yet, so a truncated "
            "tail would go unnoticed"
        )
    elif full:
        detail = f"{walk.checked} entries verified against the checkpoint at seq {newest.seq}"
    else:
        detail = (
            f"the checkpoint at seq {newest.seq} and the {walk.checked - 1} entries after "
            "it verified (the checkpoint vouches for the entries before it)"
        )
    if exported:
        detail += f"; {exported} exported checkpoints match"
    return detail


# Built once: a statement made per call cost more to compile than to run.
_HEAD = (
    select(AuditEntryRow.seq, AuditEntryRow.hash)
    .order_by(AuditEntryRow.seq.desc())
    .limit(1)
    .with_for_update()
)
_INSERT = insert(AuditEntryRow)


class AuditLog:
    """The tamper-evident audit trail over the ``audit_entries`` table.

    Safe to share between threads; several processes and replicas may append to one
    database at once: appends are serialized by a database lock, so the chain never
    forks and no seq is used twice.

    Args:
        engine_or_storage: the oubli database (an Engine, or the Storage over it).
        kms: holds the checkpoint signing key.
        clock: the time written into entries and checkpoints.
        signing_key_id: the KMS signing key; checkpoints signed by another key id are
            not trusted by :meth:`verify`.
        full_walks: bounds walks from seq 1 in :meth:`verify` (None: unbounded).
    """

    def __init__(
        self,
        engine_or_storage: Engine | Storage,
        kms: KeyManager,
        clock: Clock,
        signing_key_id: str,
        full_walks: Throttle | None = None,
    ) -> None:
        self._engine = (
            engine_or_storage.engine
            if isinstance(engine_or_storage, Storage)
            else engine_or_storage
        )
        self._kms = kms
        self._clock = clock
        self.signing_key_id = signing_key_id
        # Group commit: appends waiting while another thread writes go together in the
        # next transaction (one lock, one commit, one fsync for all of them).
        self._group: GroupCommit[AuditEvent, AuditEntry] = GroupCommit(
            lambda events: self._write(events)  # looked up per batch (tests replace it)
        )
        self._full_walks = full_walks
        # The newest checkpoint this process verified (its signature, and the chain up
        # to it). Kept in memory, out of reach of whoever writes to the database: if
        # its row disappears or its entry changes, checkpoints were deleted to hide a
        # rewrite. Lost on restart; the exported copies cover that.
        self._verified: Checkpoint | None = None
        self._verified_lock = threading.Lock()

    @property
    def transactions(self) -> int:
        """Transactions written so far (tests compare it with the entries appended)."""
        return self._group.batches

    # --- writing ----------------------------------------------------------------------

    def append(self, event: AuditEvent) -> AuditEntry:
        """Append ``event`` as the next entry of the chain, in one transaction.

        Raises:
            Unavailable: the entry could not be written. The caller must then fail the
                operation it was recording (no audit, no access).
        """
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        """Append ``events`` as consecutive entries (a batch call's entries, one per
        subject): all are written or none, and they are committed when this returns.

        Group commit: while one thread writes, the appends of other threads queue up;
        the next writer (the first of them, "leader") writes the whole queue in one
        transaction and wakes the others with their entries or the shared error. Under
        concurrent calls this turns n commits (n fsyncs) into a few; a lone call writes
        at once, as before.

        Raises:
            Unavailable: as :meth:`append`.
        """
        return self._group.submit(events)

    def _write(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        """Write ``events`` as the next entries of the chain, in one transaction."""
        entries: list[AuditEntry] = []
        with sqlite_writer(self._engine), self._database("audit log write failed") as connection:
            self._lock_chain(connection)
            head = connection.execute(_HEAD).first()
            seq, prev_hash = (0, GENESIS_HASH) if head is None else (head.seq, head.hash)
            # Read under the lock, so that times never go backwards along one
            # replica's appends.
            at = self._now()
            rows = []
            for event in events:
                seq += 1
                digest = entry_hash(prev_hash, seq, at, event)
                entries.append(AuditEntry(seq, at, event, prev_hash, digest))
                rows.append(
                    {
                        "seq": seq,
                        "at": at,
                        "caller": event.caller,
                        "action": event.action,
                        "subject_id": event.subject_id,
                        "categories": json.dumps(list(event.categories)),
                        "fields": json.dumps(list(event.fields)),
                        "purpose": event.purpose,
                        "outcome": event.outcome,
                        "request_id": event.request_id,
                        "prev_hash": prev_hash,
                        "hash": digest,
                    }
                )
                prev_hash = digest
            if rows:
                connection.execute(_INSERT, rows)
            connection.commit()
        return entries

    @staticmethod
    def _lock_chain(connection: Connection) -> None:
        """Serialize appenders until commit; readers are not blocked.

        PostgreSQL: ``SELECT ... FOR UPDATE`` on the head row alone is not enough — it
        locks nothing while the table is empty, and under READ COMMITTED a waiter gets
        the *old* head row once the lock is released (ORDER BY ... LIMIT is not
        re-evaluated), so two appends would both take seq n+1. A table lock in SHARE ROW
        EXCLUSIVE mode conflicts with itself and with writes, not with SELECT.

        SQLite: a deferred transaction would read the head under a shared lock and fail
        with SQLITE_BUSY when two readers both try to write; BEGIN IMMEDIATE takes the
        write lock first (and waits for it, busy_timeout).
        """
        dialect = connection.dialect.name
        if dialect == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif dialect == "postgresql":
            connection.execute(text("LOCK TABLE audit_entries IN SHARE ROW EXCLUSIVE MODE"))

    def ensure_signing_key(self) -> None:
        """Create the checkpoint signing key in the KMS unless it exists.

        Raises:
            Unavailable: the KMS could not be reached.
            KmsRefused: the KMS refused oubli's credentials.
        """
        if self._kms_call(lambda: self._kms.key_exists(self.signing_key_id)):
            return
        try:
            self._kms_call(lambda: self._kms.create_signing_key(self.signing_key_id))
        except FailedPrecondition:
            # Another replica created it meanwhile; anything else is still an error.
            if not self._kms_call(lambda: self._kms.key_exists(self.signing_key_id)):
                raise

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current chain head and store the signature; None if the log is empty.

        The entries since the previous checkpoint are verified first (and that
        checkpoint's signature): oubli never signs a chain it cannot vouch for. When
        the head is already signed, its checkpoint is returned as it is.

        Raises:
            AuditChainBroken: the chain since the previous checkpoint does not verify.
            FailedPrecondition: the signing key is missing (AUDIT_SIGNING_KEY_MISSING:
                call :meth:`ensure_signing_key`) or is not a signing key.
            Unavailable: the database or the KMS could not be reached.
            KmsRefused: the KMS refused oubli's credentials.
        """
        # The checkpoint first: it can only name an entry that existed before the head
        # is read, so a checkpoint beyond the head means entries were removed.
        previous = self._newest_checkpoint()
        head = self._head()
        if head is None and previous is None:
            return None
        head_seq, head_hash = head or (0, GENESIS_HASH)
        if previous is not None and previous.seq == head_seq:
            return previous
        walk = self._check_since(previous, head_seq)
        if walk.broken_seq is not None:
            raise AuditChainBroken(
                f"audit chain broken at seq {walk.broken_seq}: {walk.reason}; not signed",
                seq=str(walk.broken_seq),
            )
        message = checkpoint_message(head_seq, head_hash)
        signature = self._kms_call(lambda: self._kms.sign(self.signing_key_id, message))
        checkpoint = Checkpoint(head_seq, head_hash, signature, self.signing_key_id, self._now())
        try:
            with self._database("audit checkpoint write failed") as connection:
                connection.execute(
                    insert(AuditCheckpointRow).values(
                        seq=checkpoint.seq,
                        hash=checkpoint.hash,
                        signature=checkpoint.signature,
                        key_id=checkpoint.key_id,
                        at=checkpoint.at,
                    )
                )
                connection.commit()
        except Unavailable as e:
            if not isinstance(e.__cause__, IntegrityError):
                raise
            # Another replica signed the same head first: theirs is as good as ours.
            existing = self._checkpoint_at(head_seq)
            if existing is None:
                raise
            return existing
        self._remember(checkpoint)
        return checkpoint

    def _check_since(self, previous: Checkpoint | None, head_seq: int) -> _Walk:
        """Verify the entries the previous checkpoint does not cover yet."""
        # Signing a chain whose checkpoints were deleted would bless the rewrite.
        known = self._check_remembered()
        if known.broken_seq is not None:
            return known
        if previous is None:
            return self._walk(after_seq=0, prev_hash=GENESIS_HASH, up_to=head_seq)
        walk = _Walk()
        if previous.seq > head_seq:
            walk.fail(previous.seq, "CHECKPOINT_ENTRY_MISSING", "")
            return walk
        valid = previous.key_id == self.signing_key_id and self._kms_call(
            lambda: self._kms.verify(previous.key_id, previous.message, previous.signature)
        )
        if not valid:
            walk.fail(previous.seq, "CHECKPOINT_SIGNATURE_INVALID", "")
            return walk
        # Start at the checkpointed entry itself: its hash is recomputed, and compared
        # with the checkpoint's, which vouches for everything before it.
        return self._walk(after_seq=previous.seq - 1, prev_hash=None, up_to=head_seq)

    # --- reading ----------------------------------------------------------------------

    def query(
        self,
        subject_id: str | None = None,
        caller: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
        *,
        after_seq: int = 0,
    ) -> list[AuditEntry]:
        """Entries in seq order matching every filter given.

        ``since`` is inclusive, ``until`` exclusive; ``after_seq`` pages on (pass the
        last seq of the previous page).

        Raises:
            InvalidArgument: ``limit`` outside 1..MAX_QUERY_LIMIT, or a naive datetime.
            Unavailable: the database could not be reached.
        """
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise InvalidArgument("limit", f"limit must be within 1..{MAX_QUERY_LIMIT}")
        statement = (
            select(AuditEntryRow)
            .where(AuditEntryRow.seq > after_seq)
            .order_by(AuditEntryRow.seq)
            .limit(limit)
        )
        if subject_id is not None:
            statement = statement.where(AuditEntryRow.subject_id == subject_id)
        if caller is not None:
            statement = statement.where(AuditEntryRow.caller == caller)
        for name, bound in (("since", since), ("until", until)):
            if bound is not None and bound.tzinfo is None:
                raise InvalidArgument(name, f"{name} must carry a time zone")
        if since is not None:
            statement = statement.where(AuditEntryRow.at >= since)
        if until is not None:
            statement = statement.where(AuditEntryRow.at < until)
        with self._database("audit log read failed") as connection:
            return [_entry(row) for row in connection.execute(statement)]

    def checkpoints(self, limit: int = 100) -> list[Checkpoint]:
        """The newest checkpoints, newest first (to publish them outside the database).

        Raises:
            Unavailable: the database could not be reached.
        """
        statement = select(AuditCheckpointRow).order_by(AuditCheckpointRow.seq.desc())
        with self._database("audit log read failed") as connection:
            return [_checkpoint(row) for row in connection.execute(statement.limit(limit))]

    def checkpoints_after(self, after_seq: int = 0, limit: int = 1000) -> list[Checkpoint]:
        """Checkpoints with a seq greater than ``after_seq``, oldest first (to copy them
        outside the database a page at a time).

        Raises:
            InvalidArgument: ``limit`` outside 1..MAX_QUERY_LIMIT.
            Unavailable: the database could not be reached.
        """
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise InvalidArgument("limit", f"limit must be within 1..{MAX_QUERY_LIMIT}")
        statement = (
            select(AuditCheckpointRow)
            .where(AuditCheckpointRow.seq > after_seq)
            .order_by(AuditCheckpointRow.seq)
            .limit(limit)
        )
        with self._database("audit log read failed") as connection:
            return [_checkpoint(row) for row in connection.execute(statement)]

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key checkpoints are signed with.

        Raises:
            FailedPrecondition: the signing key is missing or is not a signing key.
            Unavailable: the KMS could not be reached.
        """
        return self._kms_call(lambda: self._kms.public_key(self.signing_key_id))

    def verify(self, *, full: bool = True, exported: Sequence[Checkpoint] = ()) -> VerifyResult:
        """Check the chain from the newest signed checkpoint on (``full=False``), or all
        of it, and against the checkpoints kept outside the database.

        Incremental: the newest checkpoint's signature is checked (one KMS call), the
        entry at its seq must hash to the checkpoint's hash, and only the entries after
        it are walked. That entry's hash vouches for every entry before it through the
        links, so a rewrite before the checkpoint that someone re-chained is caught; an
        edit there that nobody re-chained is found by a full walk only. Without any
        checkpoint the walk starts at seq 1, as a full one.

        Full: every entry from seq 1 is walked, every stored checkpoint must match the
        entry at its seq, and the newest checkpoint's entry must exist and its
        signature verify (older checkpoints add nothing once the newest, which covers
        them, is genuine). A walk from seq 1 goes through the ``full_walks`` throttle.

        Either way, also:

        - the newest checkpoint this AuditLog verified before (in memory) must still be
          in the database, and its entry still hash to it (``CHECKPOINT_DELETED``,
          ``CHECKPOINT_MISMATCH``, ``CHECKPOINT_ENTRY_MISSING``);
        - every checkpoint of ``exported`` (copies kept outside the database) must
          name an entry that still hashes to it; the newest one, and the first that
          fails, must be signed by the signing key (``EXPORTED_CHECKPOINT_INVALID``).

        The result names the lowest seq any of these found broken.

        Raises:
            InvalidArgument: more than MAX_EXPORTED_CHECKPOINTS exported checkpoints,
                or one with a seq below 1, a malformed hash, or two for one seq.
            RateLimited: a walk from seq 1 ran too recently (``full_walks``).
            Unavailable: the database or the KMS could not be reached (nothing was
                concluded).
            KmsRefused: the KMS refused oubli's credentials.
            FailedPrecondition: ``signing_key_id`` names a key that is not a signing key.
        """
        copies = _exported(exported)
        # Read before the walk: entries it names existed then, and entries are never
        # removed, so the walk must reach it (appends meanwhile only add to the walk).
        newest = self._newest_checkpoint()
        newest_seq = None if newest is None else newest.seq
        from_start = full or newest is None
        throttle: AbstractContextManager[None] = (
            self._full_walks.run() if from_start and self._full_walks else nullcontext()
        )
        with throttle:
            walk = (
                self._walk_from_start(newest) if newest is None or full else self._walk_from(newest)
            )
        exported_walk = self._check_exported(copies)
        findings = [w for w in (walk, exported_walk, self._check_remembered()) if w.failed]
        if findings:
            first = min(findings, key=lambda w: w.broken_seq or 0)  # ties: first listed
            return VerifyResult(
                False,
                walk.checked,
                first.broken_seq,
                first.reason,
                first.detail,
                newest_seq,
                from_start,
                exported_walk.checked,
            )
        if newest is not None:
            self._remember(newest)
        return VerifyResult(
            True,
            walk.checked,
            None,
            "OK",
            _ok_detail(walk, newest, from_start, exported_walk.checked),
            newest_seq,
            from_start,
            exported_walk.checked,
        )

    def _walk_from_start(self, newest: Checkpoint | None) -> _Walk:
        walk = self._walk(after_seq=0, prev_hash=GENESIS_HASH)
        if walk.broken_seq is None and newest is not None and newest.seq > walk.last_seq:
            first_lost = self._first_checkpoint_after(walk.last_seq)
            walk.fail(
                first_lost,
                "CHECKPOINT_ENTRY_MISSING",
                f"a checkpoint signed seq {first_lost} but the chain ends at seq "
                f"{walk.last_seq}: entries from seq {walk.last_seq + 1} on were removed",
            )
        if walk.broken_seq is None and newest is not None:
            self._check_newest(newest, walk)
        return walk

    def _walk_from(self, newest: Checkpoint) -> _Walk:
        """Walk from the checkpointed entry on: ``_walk`` recomputes its hash and compares
        it with the checkpoint's, then follows the links after it."""
        walk = self._walk(after_seq=newest.seq - 1, prev_hash=None)
        if walk.last_seq < newest.seq and (walk.broken_seq is None or walk.reason == "SEQ_GAP"):
            walk = _Walk(last_seq=newest.seq - 1)
            walk.fail(
                newest.seq,
                "CHECKPOINT_ENTRY_MISSING",
                f"the checkpoint at seq {newest.seq} names an entry the chain no longer "
                "has: entries were removed",
            )
        if walk.broken_seq is None:
            self._check_newest(newest, walk)
        return walk

    def _check_newest(self, newest: Checkpoint, walk: _Walk) -> None:
        problem = self._signature_problem(newest)
        if problem == "CHECKPOINT_KEY_UNTRUSTED":
            walk.fail(
                newest.seq,
                problem,
                f"the checkpoint at seq {newest.seq} names another signing key",
            )
        elif problem == "CHECKPOINT_KEY_MISSING":
            walk.fail(
                newest.seq,
                problem,
                "the signing key is gone from the KMS: the checkpoint cannot be checked",
            )
        elif problem is not None:
            walk.fail(
                newest.seq,
                problem,
                f"the signature of the checkpoint at seq {newest.seq} does not verify",
            )

    def _signature_problem(self, checkpoint: Checkpoint) -> str | None:
        """None if ``checkpoint`` is signed by the signing key, else a reason code."""
        if checkpoint.key_id != self.signing_key_id:
            return "CHECKPOINT_KEY_UNTRUSTED"
        try:
            valid = self._kms.verify(checkpoint.key_id, checkpoint.message, checkpoint.signature)
        except KeyDestroyed:
            return "CHECKPOINT_KEY_MISSING"
        except KmsError as e:
            raise self._kms_error(e) from e
        return None if valid else "CHECKPOINT_SIGNATURE_INVALID"

    def _check_remembered(self) -> _Walk:
        """The newest checkpoint this process verified must still stand in the database."""
        walk = _Walk()
        with self._verified_lock:
            known = self._verified
        if known is None:
            return walk
        row = self._entry_rows([known.seq]).get(known.seq)
        stored = self._checkpoint_at(known.seq)
        if row is None:
            walk.fail(
                known.seq,
                "CHECKPOINT_ENTRY_MISSING",
                f"the entry at seq {known.seq}, signed by a checkpoint this server "
                "verified, is gone: entries were removed",
            )
        elif _recomputed_hash(row) != known.hash:
            walk.fail(
                known.seq,
                "CHECKPOINT_MISMATCH",
                f"seq {known.seq} no longer matches the checkpoint this server verified: "
                f"the chain was rewritten at or before seq {known.seq}",
            )
        elif stored is None or (stored.hash, stored.signature) != (known.hash, known.signature):
            walk.fail(
                known.seq,
                "CHECKPOINT_DELETED",
                f"the checkpoint at seq {known.seq} that this server verified is gone from "
                "the database or changed: checkpoints were deleted",
            )
        return walk

    def _remember(self, checkpoint: Checkpoint) -> None:
        with self._verified_lock:
            if self._verified is None or checkpoint.seq > self._verified.seq:
                self._verified = checkpoint

    def _check_exported(self, exported: Sequence[Checkpoint]) -> _Walk:
        """Each exported checkpoint must name an entry that still hashes to it.

        Signatures are checked where they decide: the first checkpoint that fails (is
        the chain broken, or the copy altered?) and, when all match, the newest one
        (a copy altered together with the database would otherwise pass).
        """
        walk = _Walk()
        if not exported:
            return walk
        rows = self._entry_rows(c.seq for c in exported)
        matched = 0  # the last exported seq that still matches
        for copy in exported:
            row = rows.get(copy.seq)
            if row is not None and _recomputed_hash(row) == copy.hash:
                matched = copy.seq
                walk.checked += 1
                continue
            if self._copy_is_forged(copy, walk):
                return walk
            if row is None:
                head = self._head()
                walk.fail(
                    copy.seq,
                    "CHECKPOINT_ENTRY_MISSING",
                    f"the exported checkpoint at seq {copy.seq} names an entry the chain no "
                    f"longer has (it ends at seq {0 if head is None else head[0]}): "
                    "entries were removed",
                )
            else:
                walk.fail(
                    copy.seq,
                    "CHECKPOINT_MISMATCH",
                    f"seq {copy.seq} differs from its exported checkpoint: the chain was "
                    f"rewritten between seq {matched + 1} and seq {copy.seq}",
                )
            return walk
        self._copy_is_forged(exported[-1], walk)
        return walk

    def _copy_is_forged(self, copy: Checkpoint, walk: _Walk) -> bool:
        problem = self._signature_problem(copy)
        if problem is None:
            return False
        if problem == "CHECKPOINT_KEY_MISSING":
            walk.fail(
                copy.seq,
                problem,
                "the signing key is gone from the KMS: exported checkpoints cannot be checked",
            )
        else:
            walk.fail(
                copy.seq,
                "EXPORTED_CHECKPOINT_INVALID",
                f"the exported checkpoint at seq {copy.seq} is not signed by the audit "
                "signing key: the exported copy was altered",
            )
        return True

    def _entry_rows(self, seqs: Iterable[int]) -> dict[int, Any]:
        """The stored rows at ``seqs``, as the walk reads them."""
        wanted = sorted(set(seqs))
        rows: dict[int, Any] = {}
        with self._database("audit log read failed") as connection:
            for start in range(0, len(wanted), _PAGE):
                chunk = wanted[start : start + _PAGE]
                statement = select(*_RAW_COLUMNS).where(AuditEntryRow.seq.in_(chunk))
                rows.update((row.seq, row) for row in connection.execute(statement))
        return rows

    def _walk(self, *, after_seq: int, prev_hash: str | None, up_to: int | None = None) -> _Walk:
        """Check the entries after ``after_seq`` in seq order, a page at a time, and each
        against the checkpoint at its seq if there is one.

        ``prev_hash`` None: the first entry's stored link is taken as it is (a walk that
        starts at a checkpoint, which vouches for that entry's hash instead).
        """
        walk = _Walk(last_seq=after_seq)
        expected_prev = prev_hash
        while True:
            statement = (
                select(*_RAW_COLUMNS)
                .where(AuditEntryRow.seq > walk.last_seq)
                .order_by(AuditEntryRow.seq)
                .limit(_PAGE)
            )
            if up_to is not None:
                statement = statement.where(AuditEntryRow.seq <= up_to)
            with self._database("audit log read failed") as connection:
                page = connection.execute(statement).all()
                signed: dict[int, str] = {}
                if page:
                    signed_rows = connection.execute(
                        select(AuditCheckpointRow.seq, AuditCheckpointRow.hash).where(
                            AuditCheckpointRow.seq.between(page[0].seq, page[-1].seq)
                        )
                    )
                    signed = {row.seq: row.hash for row in signed_rows}
            for row in page:
                entry = self._check_entry(walk, row, expected_prev, signed.get(row.seq))
                if entry is None:
                    return walk
                expected_prev = entry.hash
            if len(page) < _PAGE:
                return walk

    @staticmethod
    def _check_entry(
        walk: _Walk, row: Any, expected_prev: str | None, signed_hash: str | None
    ) -> AuditEntry | None:
        """The entry of ``row`` if it verifies; None (and ``walk`` says why) if not."""
        seq = row.seq
        if seq != walk.last_seq + 1:
            walk.fail(
                seq,
                "SEQ_GAP",
                f"entries {walk.last_seq + 1}..{seq - 1} are missing before seq {seq}",
            )
            return None
        if expected_prev is not None and row.prev_hash != expected_prev:
            walk.fail(seq, "PREV_HASH_MISMATCH", f"seq {seq} does not link to the entry before it")
            return None
        try:
            entry = _entry(row, strict=True)
        except _Unreadable:
            entry = None
        if (
            entry is None
            or not _HEX_HASH.fullmatch(entry.hash or "")
            or entry.hash != entry_hash(entry.prev_hash, seq, entry.at, entry.event)
        ):
            walk.fail(seq, "HASH_MISMATCH", f"seq {seq} was changed after it was written")
            return None
        if signed_hash is not None and signed_hash != entry.hash:
            walk.fail(
                seq,
                "CHECKPOINT_MISMATCH",
                f"seq {seq} differs from its signed checkpoint: the chain was rewritten "
                f"at or before seq {seq}",
            )
            return None
        walk.checked += 1
        walk.last_seq = seq
        return entry

    # --- plumbing ---------------------------------------------------------------------

    def _head(self) -> tuple[int, str] | None:
        with self._database("audit log read failed") as connection:
            row = connection.execute(
                select(AuditEntryRow.seq, AuditEntryRow.hash)
                .order_by(AuditEntryRow.seq.desc())
                .limit(1)
            ).first()
        return None if row is None else (row.seq, row.hash)

    def _newest_checkpoint(self) -> Checkpoint | None:
        with self._database("audit log read failed") as connection:
            row = connection.execute(
                select(AuditCheckpointRow).order_by(AuditCheckpointRow.seq.desc()).limit(1)
            ).first()
        return None if row is None else _checkpoint(row)

    def _first_checkpoint_after(self, seq: int) -> int:
        with self._database("audit log read failed") as connection:
            found = connection.execute(
                select(func.min(AuditCheckpointRow.seq)).where(AuditCheckpointRow.seq > seq)
            ).scalar()
        return seq + 1 if found is None else int(found)

    def _checkpoint_at(self, seq: int) -> Checkpoint | None:
        with self._database("audit log read failed") as connection:
            row = connection.execute(
                select(AuditCheckpointRow).where(AuditCheckpointRow.seq == seq)
            ).first()
        return None if row is None else _checkpoint(row)

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    @contextmanager
    def _database(self, what: str) -> Iterator[Connection]:
        """A connection whose failures become Unavailable (rolled back on the way out)."""
        try:
            with self._engine.connect() as connection:
                yield connection
        except SQLAlchemyError as e:
            raise Unavailable(f"{what}: {type(e).__name__}") from e

    def _kms_call(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except KmsError as e:
            raise self._kms_error(e) from e

    @staticmethod
    def _kms_error(error: KmsError) -> Exception:
        if isinstance(error, KmsUnavailable):
            return Unavailable("key management service unavailable; safe to retry")
        if isinstance(error, KmsAccessDenied):
            return KmsRefused("the key management service refused oubli's credentials")
        if isinstance(error, KeyDestroyed):
            return FailedPrecondition(
                "AUDIT_SIGNING_KEY_MISSING", "the audit signing key does not exist"
            )
        return FailedPrecondition(
            "AUDIT_SIGNING_KEY_REFUSED", "the KMS refused the audit signing key"
        )
