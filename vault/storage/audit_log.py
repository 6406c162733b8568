"""The audit chain's tables: ``audit_pending`` (entries recorded, not yet chained),
``audit_entries`` (the hash chain) and ``audit_checkpoints`` (signed chain heads).

The repository stores and reads columns; what they mean — the entry hash, the links,
the signatures — is computed and checked in :mod:`vault.audit`. Database failures are
translated once (:func:`vault.storage.engine.translate_db_errors`) and worded for the
audit trail: ``Unavailable("audit log write failed: <exception class>")`` and the like,
whatever the failure, a unique key included: no audit, no access.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, String, delete, exists, func, insert, select, text, type_coerce

from vault.errors import AlreadyExists, Unavailable
from vault.storage.base import Repository
from vault.storage.engine import sqlite_writer
from vault.storage.tables import AuditCheckpointRow, AuditEntryRow, AuditPendingRow

#: Entries (or seqs) read per statement by the walks.
PAGE = 1000


@dataclass(frozen=True, slots=True)
class StoredAuditEntry:
    """The columns of one ``audit_entries`` row, as stored.

    ``categories`` and ``fields`` are the JSON text of the name lists. ``at`` is a
    datetime, or, in the raw reads verification makes, whatever the database holds
    (text on SQLite, which keeps any text an editor writes there).
    """

    seq: int
    at: datetime | str
    caller: str
    action: str
    subject_id: str | None
    categories: str
    fields: str
    purpose: str
    outcome: str
    request_id: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class PendingAuditEntry:
    """The columns of one ``audit_pending`` row: an entry without its place in the chain
    (``id`` is None until it is stored)."""

    at: datetime
    caller: str
    action: str
    subject_id: str | None
    categories: str
    fields: str
    purpose: str
    outcome: str
    request_id: str
    id: int | None = None


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """The columns of one ``audit_checkpoints`` row."""

    seq: int
    hash: str
    signature: bytes
    key_id: str
    at: datetime


_ENTRIES = AuditEntryRow.__table__.c
_PENDING = AuditPendingRow.__table__.c
_PENDING_NAMES = tuple(f.name for f in fields(PendingAuditEntry) if f.name != "id")
_PENDING_COLUMNS = tuple(_PENDING[name] for name in _PENDING_NAMES)
_CHECKPOINTS = AuditCheckpointRow.__table__.c
_ENTRY_NAMES = tuple(f.name for f in fields(StoredAuditEntry))
_ENTRY_COLUMNS = tuple(_ENTRIES[name] for name in _ENTRY_NAMES)
#: As the columns, but ``at`` as the database holds it (no datetime conversion).
_RAW_ENTRY_COLUMNS = tuple(
    type_coerce(column, String).label("at") if column.name == "at" else column
    for column in _ENTRY_COLUMNS
)
_CHECKPOINT_COLUMNS = tuple(_CHECKPOINTS[f.name] for f in fields(StoredCheckpoint))

# Built once: a statement made per call cost more to compile than to run.
_LOCKED_HEAD = (
    select(_ENTRIES.seq, _ENTRIES.hash).order_by(_ENTRIES.seq.desc()).limit(1).with_for_update()
)
_HEAD = select(_ENTRIES.seq, _ENTRIES.hash).order_by(_ENTRIES.seq.desc()).limit(1)
_INSERT_ENTRIES = insert(AuditEntryRow)
_INSERT_PENDING = insert(AuditPendingRow)
_ANY_PENDING = select(exists().select_from(AuditPendingRow))


def _entry(row: Any) -> StoredAuditEntry:
    return StoredAuditEntry(*row)


def _checkpoint(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(row.seq, row.hash, bytes(row.signature), row.key_id, row.at)


@contextmanager
def _audit_failure(what: str) -> Iterator[None]:
    """Translated database failures as ``Unavailable("<what>: <exception class>")``
    (the class of the SQLAlchemy error the translation names as its cause)."""
    try:
        yield
    except (Unavailable, AlreadyExists) as e:
        raise Unavailable(f"{what}: {type(e.__cause__).__name__}") from e.__cause__


class AuditRide:
    """The audit entry of one change, written in the change's own transaction.

    The interceptor opens a ride for an RPC whose change is one database transaction
    (vault.api.rpcs.AUDITED_IN_TRANSACTION); the repository that writes the change
    calls :func:`write_rides` inside its transaction, so the change and its entry
    commit together or not at all (no audit, no change), in one commit.
    ``entries()`` is called at write time, when the call has noted what it touched.
    """

    __slots__ = ("_entries", "written")

    def __init__(self, entries: Callable[[], Sequence[PendingAuditEntry]]) -> None:
        self._entries = entries
        #: Set once the transaction holding the entries has committed.
        self.written = False

    def entries(self) -> Sequence[PendingAuditEntry]:
        return self._entries()


_RIDE: ContextVar[AuditRide | None] = ContextVar("oubli_audit_ride", default=None)


@contextmanager
def riding(ride: AuditRide | None) -> Iterator[None]:
    """Makes ``ride`` the current call's (None: the call's changes carry no entry)."""
    token = _RIDE.set(ride)
    try:
        yield
    finally:
        _RIDE.reset(token)


def current_ride() -> AuditRide | None:
    """The ride of the call running in this context, if any."""
    return _RIDE.get()


def write_rides(connection: Connection, rides: Iterable[AuditRide | None]) -> list[AuditRide]:
    """Insert the entries of ``rides`` not yet written into ``audit_pending``, in the
    transaction of ``connection``; the rides to mark with :func:`committed` once it has
    committed. A failure fails the transaction, the change with it."""
    taken = [ride for ride in dict.fromkeys(rides) if ride is not None and not ride.written]
    rows = [
        {name: getattr(entry, name) for name in _PENDING_NAMES}
        for ride in taken
        for entry in ride.entries()
    ]
    if rows:
        connection.execute(_INSERT_PENDING, rows)
    return taken


def committed(rides: Iterable[AuditRide]) -> None:
    """Mark ``rides`` written: their transaction committed."""
    for ride in rides:
        ride.written = True


def _lock_chain(connection: Connection) -> None:
    """Serialize sealers until commit; readers and appenders are not blocked.

    PostgreSQL: ``SELECT ... FOR UPDATE`` on the head row alone is not enough — it
    locks nothing while the table is empty, and under READ COMMITTED a waiter gets the
    *old* head row once the lock is released (ORDER BY ... LIMIT is not re-evaluated),
    so two appends would both take seq n+1. A table lock in SHARE ROW EXCLUSIVE mode
    conflicts with itself and with writes, not with SELECT.

    SQLite: a deferred transaction would read the head under a shared lock and fail
    with SQLITE_BUSY when two readers both try to write; BEGIN IMMEDIATE takes the
    write lock first (and waits for it, busy_timeout).
    """
    dialect = connection.dialect.name
    if dialect == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.execute(text("LOCK TABLE audit_entries IN SHARE ROW EXCLUSIVE MODE"))


class AuditLogRepository(Repository):
    """The audit chain's entries and checkpoints."""

    # --- entries ----------------------------------------------------------------------

    def add_pending_audit_entries(self, entries: Sequence[PendingAuditEntry]) -> None:
        """Record ``entries`` in one transaction, to be sealed into the chain later.

        No chain lock: appenders in other threads, processes and replicas insert side
        by side. Once this returns the entries are durable ("no audit, no access"
        holds from here); :meth:`seal_pending_audit_entries` gives them their seqs.

        Raises:
            Unavailable: "audit log write failed: <exception class>"; nothing was written.
        """
        if not entries:
            return
        with _audit_failure("audit log write failed"), self._write_connection() as connection:
            connection.execute(
                _INSERT_PENDING,
                [{name: getattr(e, name) for name in _PENDING_NAMES} for e in entries],
            )

    def has_pending_audit_entries(self) -> bool:
        """Whether any recorded entry waits to be sealed (no lock taken)."""
        with _audit_failure("audit log read failed"), self._connection() as connection:
            return bool(connection.execute(_ANY_PENDING).scalar())

    def pending_audit_entries(self) -> int:
        """How many recorded entries wait to be sealed."""
        with _audit_failure("audit log read failed"), self._connection() as connection:
            return int(
                connection.execute(select(func.count()).select_from(AuditPendingRow)).scalar_one()
            )

    def seal_pending_audit_entries(
        self,
        chained: Callable[
            [tuple[int, str] | None, Sequence[PendingAuditEntry]], Sequence[StoredAuditEntry]
        ],
        limit: int = PAGE,
    ) -> int:
        """Move the oldest ``limit`` pending entries into the chain, in one transaction
        under the chain lock: ``chained(head, pending)`` gives their chain entries.

        ``head`` is the newest entry's ``(seq, hash)`` (None while the chain is empty),
        read once the lock is held: no other sealer can take the seqs after it until
        this commits, in this process, another, or another replica. Only the rows read
        here are removed from ``audit_pending`` (by id: a row another appender commits
        meanwhile waits for the next seal, whatever its id). Returns how many were
        sealed.

        Raises:
            Unavailable: "audit log seal failed: <exception class>"; nothing was moved.
        """
        with (
            _audit_failure("audit log seal failed"),
            sqlite_writer(self.engine),
            self._connection() as connection,
        ):
            _lock_chain(connection)
            rows = connection.execute(
                select(_PENDING.id, *_PENDING_COLUMNS).order_by(_PENDING.id).limit(limit)
            ).all()
            if not rows:
                return 0
            pending = [
                PendingAuditEntry(
                    id=row.id, **{name: getattr(row, name) for name in _PENDING_NAMES}
                )
                for row in rows
            ]
            head = connection.execute(_LOCKED_HEAD).first()
            entries = chained(None if head is None else (head.seq, head.hash), pending)
            connection.execute(
                _INSERT_ENTRIES,
                [{name: getattr(e, name) for name in _ENTRY_NAMES} for e in entries],
            )
            connection.execute(
                delete(AuditPendingRow).where(_PENDING.id.in_([p.id for p in pending]))
            )
        return len(pending)

    def audit_head(self) -> tuple[int, str] | None:
        """The newest entry's ``(seq, hash)``; None while the chain is empty."""
        with _audit_failure("audit log read failed"), self._connection() as connection:
            row = connection.execute(_HEAD).first()
        return None if row is None else (row.seq, row.hash)

    def find_audit_entries(
        self,
        *,
        subject_id: str | None,
        caller: str | None,
        since: datetime | None,
        until: datetime | None,
        after_seq: int,
        limit: int,
    ) -> list[StoredAuditEntry]:
        """Entries after ``after_seq`` in seq order matching every filter given
        (``since`` inclusive, ``until`` exclusive), at most ``limit``."""
        statement = (
            select(*_ENTRY_COLUMNS)
            .where(_ENTRIES.seq > after_seq)
            .order_by(_ENTRIES.seq)
            .limit(limit)
        )
        if subject_id is not None:
            statement = statement.where(_ENTRIES.subject_id == subject_id)
        if caller is not None:
            statement = statement.where(_ENTRIES.caller == caller)
        if since is not None:
            statement = statement.where(_ENTRIES.at >= since)
        if until is not None:
            statement = statement.where(_ENTRIES.at < until)
        with _audit_failure("audit log read failed"), self._connection() as connection:
            return [_entry(row) for row in connection.execute(statement)]

    def raw_audit_entries(self, seqs: Iterable[int]) -> dict[int, StoredAuditEntry]:
        """The entries at ``seqs`` (those that exist) by seq, ``at`` as stored."""
        wanted = sorted(set(seqs))
        found: dict[int, StoredAuditEntry] = {}
        with _audit_failure("audit log read failed"), self._connection() as connection:
            for start in range(0, len(wanted), PAGE):
                chunk = wanted[start : start + PAGE]
                statement = select(*_RAW_ENTRY_COLUMNS).where(_ENTRIES.seq.in_(chunk))
                found.update((row.seq, _entry(row)) for row in connection.execute(statement))
        return found

    def raw_audit_page(
        self, *, after_seq: int, up_to: int | None
    ) -> tuple[list[StoredAuditEntry], dict[int, str]]:
        """The next :data:`PAGE` entries after ``after_seq`` (up to seq ``up_to``, if
        given) in seq order, ``at`` as stored, and the hashes the checkpoints in their
        seq range signed, by seq."""
        statement = (
            select(*_RAW_ENTRY_COLUMNS)
            .where(_ENTRIES.seq > after_seq)
            .order_by(_ENTRIES.seq)
            .limit(PAGE)
        )
        if up_to is not None:
            statement = statement.where(_ENTRIES.seq <= up_to)
        with _audit_failure("audit log read failed"), self._connection() as connection:
            page = [_entry(row) for row in connection.execute(statement)]
            signed: dict[int, str] = {}
            if page:
                signed_rows = connection.execute(
                    select(_CHECKPOINTS.seq, _CHECKPOINTS.hash).where(
                        _CHECKPOINTS.seq.between(page[0].seq, page[-1].seq)
                    )
                )
                signed = {row.seq: row.hash for row in signed_rows}
        return page, signed

    # --- checkpoints ------------------------------------------------------------------

    def add_audit_checkpoint(self, checkpoint: StoredCheckpoint) -> StoredCheckpoint | None:
        """Store ``checkpoint``, unless another writer stored one at its seq first:
        None if stored, else theirs.

        Raises:
            Unavailable: "audit checkpoint write failed: <exception class>".
        """
        with _audit_failure("audit checkpoint write failed"):
            try:
                with self._connection() as connection:
                    connection.execute(
                        insert(AuditCheckpointRow).values(
                            seq=checkpoint.seq,
                            hash=checkpoint.hash,
                            signature=checkpoint.signature,
                            key_id=checkpoint.key_id,
                            at=checkpoint.at,
                        )
                    )
            except AlreadyExists:
                theirs = self.audit_checkpoint_at(checkpoint.seq)
                if theirs is None:
                    raise  # not the seq: the row was refused for another reason
                return theirs
        return None

    def audit_checkpoint_at(self, seq: int) -> StoredCheckpoint | None:
        with _audit_failure("audit log read failed"), self._connection() as connection:
            row = connection.execute(
                select(*_CHECKPOINT_COLUMNS).where(_CHECKPOINTS.seq == seq)
            ).first()
        return None if row is None else _checkpoint(row)

    def newest_audit_checkpoints(self, limit: int) -> list[StoredCheckpoint]:
        """The newest ``limit`` checkpoints, newest first."""
        statement = select(*_CHECKPOINT_COLUMNS).order_by(_CHECKPOINTS.seq.desc()).limit(limit)
        with _audit_failure("audit log read failed"), self._connection() as connection:
            return [_checkpoint(row) for row in connection.execute(statement)]

    def audit_checkpoints_after(self, after_seq: int, limit: int) -> list[StoredCheckpoint]:
        """Checkpoints with a seq greater than ``after_seq``, oldest first, at most
        ``limit``."""
        statement = (
            select(*_CHECKPOINT_COLUMNS)
            .where(_CHECKPOINTS.seq > after_seq)
            .order_by(_CHECKPOINTS.seq)
            .limit(limit)
        )
        with _audit_failure("audit log read failed"), self._connection() as connection:
            return [_checkpoint(row) for row in connection.execute(statement)]

    def first_audit_checkpoint_after(self, seq: int) -> int | None:
        """The lowest checkpointed seq greater than ``seq``, if any."""
        with _audit_failure("audit log read failed"), self._connection() as connection:
            found = connection.execute(
                select(func.min(_CHECKPOINTS.seq)).where(_CHECKPOINTS.seq > seq)
            ).scalar()
        return None if found is None else int(found)
