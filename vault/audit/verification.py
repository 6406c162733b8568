"""Verifying the audit chain: walks along the entries, against the signed checkpoints
stored beside them, and against checkpoints exported out of the database.

The chain alone cannot show that its newest entries were cut off, nor that someone
rewrote it and recomputed every hash. A signed checkpoint closes that gap: anyone with
the public key can check it offline (:func:`kms.signatures.verify_offline`). The signing
key rotates (:mod:`vault.usecases.signing_rotation`): a checkpoint's signature names the
version that made it, the KMS verifies every version it holds, and offline each version's
own public key (``oubli keys public`` publishes them all) checks it. Truncation
or rewriting *after* the newest checkpoint is undetectable by design; checkpoint often,
and copy checkpoints outside the database: whoever can write to the database can also
delete checkpoint rows, and a verification given the copies (``exported``) catches what
that deletion hid.

Verification is incremental by default in the server: it checks the newest checkpoint
and the entries after it, since the checkpointed entry's hash vouches for every entry
before it through the links. A full walk from seq 1 (which also finds an edit before
that checkpoint that nobody re-chained) is throttled.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from vault.audit.entries import (
    GENESIS_HASH,
    HEX_HASH,
    AuditEntry,
    Checkpoint,
    Unreadable,
    entry_hash,
    read_checkpoint,
    read_entry,
)
from vault.audit.signing import SigningKey
from vault.audit.throttle import Throttle
from vault.errors import InvalidArgument
from vault.storage import Storage
from vault.storage.audit_log import PAGE, StoredAuditEntry

#: Checkpoints kept outside the database that one verification compares (the newest
#: one alone vouches for every entry before it; older ones narrow a rewrite down).
MAX_EXPORTED_CHECKPOINTS = 10_000


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :meth:`ChainVerifier.verify`.

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
            ``CHECKPOINT_DELETED`` (a checkpoint this verifier verified before is gone
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


@dataclass(slots=True)
class Walk:
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


def _recomputed_hash(stored: StoredAuditEntry) -> str | None:
    """The hash a stored entry's columns give (None for a value no append writes)."""
    try:
        entry = read_entry(stored, strict=True)
    except Unreadable:
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
        if checkpoint.seq < 1 or not HEX_HASH.fullmatch(checkpoint.hash):
            raise InvalidArgument(
                "exported", "an exported checkpoint needs a seq >= 1 and a hex SHA-256 hash"
            )
        if by_seq.setdefault(checkpoint.seq, checkpoint).hash != checkpoint.hash:
            raise InvalidArgument("exported", "two exported checkpoints for one seq differ")
    return [by_seq[seq] for seq in sorted(by_seq)]


def _ok_detail(walk: Walk, newest: Checkpoint | None, full: bool, exported: int) -> str:
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


def _check_entry(
    walk: Walk, stored: StoredAuditEntry, expected_prev: str | None, signed_hash: str | None
) -> AuditEntry | None:
    """The entry of ``stored`` if it verifies; None (and ``walk`` says why) if not."""
    seq = stored.seq
    if seq != walk.last_seq + 1:
        walk.fail(
            seq,
            "SEQ_GAP",
            f"entries {walk.last_seq + 1}..{seq - 1} are missing before seq {seq}",
        )
        return None
    if expected_prev is not None and stored.prev_hash != expected_prev:
        walk.fail(seq, "PREV_HASH_MISMATCH", f"seq {seq} does not link to the entry before it")
        return None
    try:
        entry: AuditEntry | None = read_entry(stored, strict=True)
    except Unreadable:
        entry = None
    if (
        entry is None
        or not HEX_HASH.fullmatch(entry.hash or "")
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


class ChainVerifier:
    """Checks the chain in ``storage`` against its checkpoints signed by ``signing_key``.

    Remembers, in memory, the newest checkpoint it verified (its signature, and the
    chain up to it): out of reach of whoever writes to the database, so if its row
    disappears or its entry changes, checkpoints were deleted to hide a rewrite. Lost
    on restart; the exported copies cover that. Safe to share between threads.

    Args:
        storage: the oubli database.
        signing_key: the key checkpoints must be signed with.
        full_walks: bounds walks from seq 1 (None: unbounded).
    """

    def __init__(
        self, storage: Storage, signing_key: SigningKey, full_walks: Throttle | None = None
    ) -> None:
        self._storage = storage
        self._signing_key = signing_key
        self._full_walks = full_walks
        self._verified: Checkpoint | None = None
        self._verified_lock = threading.Lock()

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

        - the newest checkpoint this verifier verified before (in memory) must still be
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
            FailedPrecondition: the signing key is not a signing key.
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
        findings = [w for w in (walk, exported_walk, self.check_remembered()) if w.failed]
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
            self.remember(newest)
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

    def check_since(self, previous: Checkpoint | None, head_seq: int) -> Walk:
        """Verify the entries up to ``head_seq`` that the ``previous`` checkpoint does
        not cover yet (before signing a new one).

        Raises:
            FailedPrecondition: the signing key is missing (AUDIT_SIGNING_KEY_MISSING)
                or is not a signing key.
        """
        # Signing a chain whose checkpoints were deleted would bless the rewrite.
        known = self.check_remembered()
        if known.failed:
            return known
        if previous is None:
            return self._walk(after_seq=0, prev_hash=GENESIS_HASH, up_to=head_seq)
        walk = Walk()
        if previous.seq > head_seq:
            walk.fail(previous.seq, "CHECKPOINT_ENTRY_MISSING", "")
            return walk
        if not self._signing_key.signed(previous):
            walk.fail(previous.seq, "CHECKPOINT_SIGNATURE_INVALID", "")
            return walk
        # Start at the checkpointed entry itself: its hash is recomputed, and compared
        # with the checkpoint's, which vouches for everything before it.
        return self._walk(after_seq=previous.seq - 1, prev_hash=None, up_to=head_seq)

    def check_remembered(self) -> Walk:
        """The newest checkpoint this verifier verified must still stand in the database."""
        walk = Walk()
        with self._verified_lock:
            known = self._verified
        if known is None:
            return walk
        stored = self._storage.raw_audit_entries([known.seq]).get(known.seq)
        checkpoint = self._storage.audit_checkpoint_at(known.seq)
        if stored is None:
            walk.fail(
                known.seq,
                "CHECKPOINT_ENTRY_MISSING",
                f"the entry at seq {known.seq}, signed by a checkpoint this server "
                "verified, is gone: entries were removed",
            )
        elif _recomputed_hash(stored) != known.hash:
            walk.fail(
                known.seq,
                "CHECKPOINT_MISMATCH",
                f"seq {known.seq} no longer matches the checkpoint this server verified: "
                f"the chain was rewritten at or before seq {known.seq}",
            )
        elif checkpoint is None or (checkpoint.hash, checkpoint.signature) != (
            known.hash,
            known.signature,
        ):
            walk.fail(
                known.seq,
                "CHECKPOINT_DELETED",
                f"the checkpoint at seq {known.seq} that this server verified is gone from "
                "the database or changed: checkpoints were deleted",
            )
        return walk

    def remember(self, checkpoint: Checkpoint) -> None:
        """``checkpoint`` was verified (or signed) here: it must stay in the database."""
        with self._verified_lock:
            if self._verified is None or checkpoint.seq > self._verified.seq:
                self._verified = checkpoint

    def _newest_checkpoint(self) -> Checkpoint | None:
        newest = self._storage.newest_audit_checkpoints(1)
        return read_checkpoint(newest[0]) if newest else None

    def _walk_from_start(self, newest: Checkpoint | None) -> Walk:
        walk = self._walk(after_seq=0, prev_hash=GENESIS_HASH)
        if not walk.failed and newest is not None and newest.seq > walk.last_seq:
            found = self._storage.first_audit_checkpoint_after(walk.last_seq)
            first_lost = walk.last_seq + 1 if found is None else found
            walk.fail(
                first_lost,
                "CHECKPOINT_ENTRY_MISSING",
                f"a checkpoint signed seq {first_lost} but the chain ends at seq "
                f"{walk.last_seq}: entries from seq {walk.last_seq + 1} on were removed",
            )
        if not walk.failed and newest is not None:
            self._check_newest(newest, walk)
        return walk

    def _walk_from(self, newest: Checkpoint) -> Walk:
        """Walk from the checkpointed entry on: ``_walk`` recomputes its hash and compares
        it with the checkpoint's, then follows the links after it."""
        walk = self._walk(after_seq=newest.seq - 1, prev_hash=None)
        if walk.last_seq < newest.seq and (not walk.failed or walk.reason == "SEQ_GAP"):
            walk = Walk(last_seq=newest.seq - 1)
            walk.fail(
                newest.seq,
                "CHECKPOINT_ENTRY_MISSING",
                f"the checkpoint at seq {newest.seq} names an entry the chain no longer "
                "has: entries were removed",
            )
        if not walk.failed:
            self._check_newest(newest, walk)
        return walk

    def _check_newest(self, newest: Checkpoint, walk: Walk) -> None:
        problem = self._signing_key.problem(newest)
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

    def _check_exported(self, exported: Sequence[Checkpoint]) -> Walk:
        """Each exported checkpoint must name an entry that still hashes to it.

        Signatures are checked where they decide: the first checkpoint that fails (is
        the chain broken, or the copy altered?) and, when all match, the newest one
        (a copy altered together with the database would otherwise pass).
        """
        walk = Walk()
        if not exported:
            return walk
        stored = self._storage.raw_audit_entries(c.seq for c in exported)
        matched = 0  # the last exported seq that still matches
        for copy in exported:
            entry = stored.get(copy.seq)
            if entry is not None and _recomputed_hash(entry) == copy.hash:
                matched = copy.seq
                walk.checked += 1
                continue
            if self._copy_is_forged(copy, walk):
                return walk
            if entry is None:
                head = self._storage.audit_head()
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

    def _copy_is_forged(self, copy: Checkpoint, walk: Walk) -> bool:
        problem = self._signing_key.problem(copy)
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

    def _walk(self, *, after_seq: int, prev_hash: str | None, up_to: int | None = None) -> Walk:
        """Check the entries after ``after_seq`` in seq order, a page at a time, and each
        against the checkpoint at its seq if there is one.

        ``prev_hash`` None: the first entry's stored link is taken as it is (a walk that
        starts at a checkpoint, which vouches for that entry's hash instead).
        """
        walk = Walk(last_seq=after_seq)
        expected_prev = prev_hash
        while True:
            page, signed = self._storage.raw_audit_page(after_seq=walk.last_seq, up_to=up_to)
            for stored in page:
                entry = _check_entry(walk, stored, expected_prev, signed.get(stored.seq))
                if entry is None:
                    return walk
                expected_prev = entry.hash
            if len(page) < PAGE:
                return walk
