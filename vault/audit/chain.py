"""The audit log: who touched which subject, hash-chained and signed (no audit, no access).

:class:`AuditLog` records entries (:mod:`vault.audit.entries` says what one holds and
how it is hashed), seals them into the hash chain, signs the chain head as checkpoints
with the KMS signing key
(:mod:`vault.audit.signing`), verifies the chain (:mod:`vault.audit.verification`) and
answers queries. Its tables are :mod:`vault.storage.audit_log`'s.

Recording and chaining are two steps, so that replicas scale out: an append is a plain
insert into ``audit_pending`` (durable when it returns, no chain lock: replicas and
worker processes record side by side), and a sealer — a background thread of every
server, and every read of the chain before it reads — moves the pending rows into the
chain in batches under the chain lock, giving them seqs and hashes. Until sealed (a
fraction of a second, :data:`SEAL_INTERVAL_SECONDS`) an entry is recorded but not yet
tamper-evident.

Signing a checkpoint is what makes truncation and wholesale rewriting visible: so that
anyone can check them, copy the checkpoints outside the database
(:meth:`AuditLog.checkpoints_after`) and give the copies to :meth:`AuditLog.verify`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from kms.base import KeyManager
from vault.audit.entries import (
    GENESIS_HASH,
    AuditEntry,
    AuditEvent,
    Checkpoint,
    entry_hash,
    pending_entry,
    read_checkpoint,
    read_entry,
    read_pending,
    stored_checkpoint,
    stored_entry,
)
from vault.audit.signing import SigningKey
from vault.audit.throttle import Throttle
from vault.audit.verification import ChainVerifier, VerifyResult
from vault.clock import Clock
from vault.errors import AuditChainBroken, InvalidArgument
from vault.storage import Storage
from vault.storage.audit_log import PendingAuditEntry, StoredAuditEntry
from vault.storage.groupcommit import GroupCommit

MAX_QUERY_LIMIT = 10_000
#: Pending entries sealed into the chain per transaction.
SEAL_BATCH = 1000
#: How often a server's sealer looks for pending entries.
SEAL_INTERVAL_SECONDS = 0.2


class AuditLog:
    """The tamper-evident audit trail over the ``audit_entries`` table.

    Safe to share between threads; several processes and replicas may append to one
    database at once, without waiting for each other: an append records the entry, and
    sealing (serialized by a database lock) chains what was recorded, so the chain
    never forks and no seq is used twice.

    Args:
        storage: the oubli database.
        kms: holds the checkpoint signing key.
        clock: the time written into entries and checkpoints.
        signing_key_id: the KMS signing key; checkpoints signed by another key id are
            not trusted by :meth:`verify`.
        full_walks: bounds walks from seq 1 in :meth:`verify` (None: unbounded).
    """

    def __init__(
        self,
        storage: Storage,
        kms: KeyManager,
        clock: Clock,
        signing_key_id: str,
        full_walks: Throttle | None = None,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._signing_key = SigningKey(kms, signing_key_id)
        self._verifier = ChainVerifier(storage, self._signing_key, full_walks)
        # Group commit: appends waiting while another thread writes go together in the
        # next transaction (one commit, one fsync for all of them).
        self._group: GroupCommit[AuditEvent, None] = GroupCommit(
            lambda events: self._write(events)  # looked up per batch (tests replace it)
        )
        # One sealer per process at a time (others would only queue on the chain lock).
        self._sealing = threading.Lock()

    @property
    def signing_key_id(self) -> str:
        return self._signing_key.key_id

    @property
    def transactions(self) -> int:
        """Transactions written so far (tests compare it with the entries appended)."""
        return self._group.batches

    # --- appending --------------------------------------------------------------------

    def append(self, event: AuditEvent) -> None:
        """Record ``event``, durably, in one transaction; it joins the chain at the next
        :meth:`seal`.

        Raises:
            Unavailable: the entry could not be written. The caller must then fail the
                operation it was recording (no audit, no access).
        """
        self.append_many([event])

    def append_many(self, events: Sequence[AuditEvent]) -> None:
        """Record ``events`` (a batch call's entries, one per subject): all are written
        or none, and they are committed when this returns; they join the chain, in
        this order, at the next :meth:`seal`.

        Group commit: while one thread writes, the appends of other threads queue up;
        the next writer (the first of them, "leader") writes the whole queue in one
        transaction and wakes the others with the shared outcome. Under concurrent
        calls this turns n commits (n fsyncs) into a few; a lone call writes at once.

        Raises:
            Unavailable: as :meth:`append`.
        """
        self._group.submit(events)

    def stamped(self, events: Sequence[AuditEvent]) -> list[PendingAuditEntry]:
        """``events`` as the rows a change's own transaction records (an audit ride,
        vault.storage.audit_log.AuditRide), stamped now."""
        at = self._now()
        return [pending_entry(at, event) for event in events]

    def _write(self, events: Sequence[AuditEvent]) -> list[None]:
        """Record ``events`` as pending entries, in one transaction."""
        at = self._now()
        self._storage.add_pending_audit_entries([pending_entry(at, event) for event in events])
        return [None] * len(events)

    # --- sealing ----------------------------------------------------------------------

    def seal(self) -> int:
        """Chain every entry recorded so far, oldest first, a batch per transaction;
        how many were sealed. Any replica may seal any replica's entries.

        Raises:
            Unavailable: the database could not be reached (what was sealed stays).
        """
        sealed = 0
        with self._sealing:
            while True:
                count = self._storage.seal_pending_audit_entries(self._chained, SEAL_BATCH)
                sealed += count
                if count < SEAL_BATCH:
                    return sealed

    def seal_if_pending(self) -> int:
        """:meth:`seal`, after a lock-free look for pending entries (the background
        sealer's tick: no chain lock while there is nothing to seal)."""
        if not self._storage.has_pending_audit_entries():
            return 0
        return self.seal()

    def pending(self) -> int:
        """Entries recorded and not yet sealed."""
        return self._storage.pending_audit_entries()

    def _chained(
        self, head: tuple[int, str] | None, pending: Sequence[PendingAuditEntry]
    ) -> list[StoredAuditEntry]:
        """``pending`` as the chain's next entries after ``head``."""
        seq, prev_hash = head or (0, GENESIS_HASH)
        sealed_at = self._now()
        entries: list[StoredAuditEntry] = []
        for row in pending:
            at, event = read_pending(row, sealed_at)
            seq += 1
            digest = entry_hash(prev_hash, seq, at, event)
            entries.append(stored_entry(AuditEntry(seq, at, event, prev_hash, digest)))
            prev_hash = digest
        return entries

    # --- checkpoints ------------------------------------------------------------------

    def ensure_signing_key(self) -> None:
        """Create the checkpoint signing key in the KMS unless it exists.

        Raises:
            Unavailable: the KMS could not be reached.
            KmsRefused: the KMS refused oubli's credentials.
        """
        self._signing_key.ensure()

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
        self.seal()  # sign everything recorded so far
        # The checkpoint first: it can only name an entry that existed before the head
        # is read, so a checkpoint beyond the head means entries were removed.
        newest = self.checkpoints(limit=1)
        previous = newest[0] if newest else None
        head = self._storage.audit_head()
        if head is None and previous is None:
            return None
        head_seq, head_hash = head or (0, GENESIS_HASH)
        if previous is not None and previous.seq == head_seq:
            return previous
        walk = self._verifier.check_since(previous, head_seq)
        if walk.broken_seq is not None:
            raise AuditChainBroken(
                f"audit chain broken at seq {walk.broken_seq}: {walk.reason}; not signed",
                seq=str(walk.broken_seq),
            )
        signature = self._signing_key.sign(head_seq, head_hash)
        checkpoint = Checkpoint(head_seq, head_hash, signature, self.signing_key_id, self._now())
        theirs = self._storage.add_audit_checkpoint(stored_checkpoint(checkpoint))
        if theirs is not None:
            # Another replica signed the same head first: theirs is as good as ours.
            return read_checkpoint(theirs)
        self._verifier.remember(checkpoint)
        return checkpoint

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key checkpoints are signed with.

        Raises:
            FailedPrecondition: the signing key is missing or is not a signing key.
            Unavailable: the KMS could not be reached.
        """
        return self._signing_key.public_key()

    def public_keys(self) -> dict[int, bytes]:
        """Every version of the signing key still held: version -> raw public key.

        Raises:
            FailedPrecondition: the signing key is missing or is not a signing key.
            Unavailable: the KMS could not be reached.
        """
        return self._signing_key.public_keys()

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
        """Entries in seq order matching every filter given, once everything recorded
        so far is sealed.

        ``since`` is inclusive, ``until`` exclusive; ``after_seq`` pages on (pass the
        last seq of the previous page).

        Raises:
            InvalidArgument: ``limit`` outside 1..MAX_QUERY_LIMIT, or a naive datetime.
            Unavailable: the database could not be reached.
        """
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise InvalidArgument("limit", f"limit must be within 1..{MAX_QUERY_LIMIT}")
        for name, bound in (("since", since), ("until", until)):
            if bound is not None and bound.tzinfo is None:
                raise InvalidArgument(name, f"{name} must carry a time zone")
        if after_seq == 0:
            self.seal()  # a first page shows every access recorded before the query
        found = self._storage.find_audit_entries(
            subject_id=subject_id,
            caller=caller,
            since=since,
            until=until,
            after_seq=after_seq,
            limit=limit,
        )
        return [read_entry(stored) for stored in found]

    def checkpoints(self, limit: int = 100) -> list[Checkpoint]:
        """The newest checkpoints, newest first (to publish them outside the database).

        Raises:
            Unavailable: the database could not be reached.
        """
        return [read_checkpoint(c) for c in self._storage.newest_audit_checkpoints(limit)]

    def checkpoints_after(self, after_seq: int = 0, limit: int = 1000) -> list[Checkpoint]:
        """Checkpoints with a seq greater than ``after_seq``, oldest first (to copy them
        outside the database a page at a time).

        Raises:
            InvalidArgument: ``limit`` outside 1..MAX_QUERY_LIMIT.
            Unavailable: the database could not be reached.
        """
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise InvalidArgument("limit", f"limit must be within 1..{MAX_QUERY_LIMIT}")
        stored = self._storage.audit_checkpoints_after(after_seq, limit)
        return [read_checkpoint(c) for c in stored]

    def verify(self, *, full: bool = True, exported: Sequence[Checkpoint] = ()) -> VerifyResult:
        """Seal what was recorded, then check the chain, incrementally or from seq 1,
        and against the checkpoints kept outside the database:
        :meth:`ChainVerifier.verify`."""
        self.seal()
        return self._verifier.verify(full=full, exported=exported)

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now.astimezone(UTC)
