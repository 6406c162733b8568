"""Rotation of the blind-index key: tags recomputed under a new key, the old key destroyed.

The index key (vault.crypto.blind_index) lives in generations: generation 1 is the
service key ``lookup-index``, generation N > 1 ``lookup-index.N``; each blind-index row
names its generation. A rotation, run in passes (:meth:`IndexKeyRotation.rotate`):

1. makes generation N+1 (a KMS key and a DEK, a ``service_keys`` row; two replicas
   racing make one, as IndexKeyStore.load_or_create does). From then on every write,
   on every replica, writes rows for both generations (a replica that does not know
   N+1 yet finds out in its write's transaction and loads it), and lookups query both;
2. re-indexes the *backlog*: records of the indexed categories (of writable subjects)
   that have rows of another generation and none of N+1, in (subject, record) order a
   page at a time. Each is decrypted and indexed as a writer would, only while it is
   still at the version read. The backlog is the progress: a pass stopped by ``limit``
   (or a crash) leaves the records it did out of it, so the next pass resumes where
   the work is, with no cursor to keep;
3. once the backlog is empty, retires the older generations in one transaction (their
   ``service_keys`` rows, every row of theirs, their KMS keys into the key ledger; the
   transaction checks again that no record lacks N+1's rows), then records their keys
   in the erasure ledger and destroys them. A crash in between leaves the key in the
   key ledger (and perhaps the erasure ledger): the restore fence destroys it.

A database copy taken before step 3 holds tags of the old generation only: they match
nothing under the live key, and the key that made them is gone from the KMS.

A pass is due when the newest generation's key is older than the cryptoperiod (its
``rotated_at``, set when the generation is made: the HMAC key is the DEK, which nothing
else replaces; the key-age metric reads the same column), when forced, or when a
rotation is under way (more than one live generation): it then resumes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from kms.base import KmsError
from vault.crypto.blind_index import INDEXED_FIELDS, BlindIndex, IndexKeyStore, indexed_values
from vault.crypto.key_destruction import destroy_key
from vault.errors import IntegrityFailure, InvalidArgument, KeyDestroyedError, kms_error
from vault.fault_points import fault_point
from vault.storage import StoredRecord
from vault.storage.blind_index import index_key_name
from vault.storage.erasure_ledger import NewLedgerEntry
from vault.storage.service_keys import ServiceKey
from vault.usecases.erasure_ledger import RETIRED
from vault.usecases.key_rotation import RotationKind, RotationReport
from vault.usecases.service import VaultService
from vault.vocabulary import WRITABLE

#: The categories whose records have index rows.
INDEXED_CATEGORIES = tuple(sorted(INDEXED_FIELDS))

#: Sweeps of the backlog in one pass: a record skipped in a sweep (written, re-keyed or
#: erased meanwhile) is tried again by the next, while sweeps still make progress.
MAX_SWEEPS = 3


class IndexKeyRotation:
    """Passes of the blind-index key rotation over ``vault``'s storage, KMS, ledger and
    blind index (``vault.lookup_index()``, which thus knows the new key at once)."""

    def __init__(self, vault: VaultService) -> None:
        self.vault = vault
        self.storage = vault.storage
        self.crypto = vault.crypto
        self.ledger = vault.ledger
        self.clock = vault.clock
        self._keys = IndexKeyStore(vault.storage, clock=vault.clock)

    def rotate(
        self,
        *,
        dry_run: bool,
        force: bool,
        cryptoperiod: timedelta,
        batch_size: int = 500,
        limit: int | None = None,
    ) -> RotationReport:
        """One pass (see the module docstring); idempotent, resumable.

        ``limit`` bounds the records re-indexed (tried) by this pass, ``batch_size`` the
        records read at once. The report counts one key: ``due`` 1 when a rotation is
        due or under way, ``rotated`` 1 when this pass retired the old generation,
        ``remaining`` 1 while a rotation is under way after it, ``failed`` 1 when the
        pass went through the whole backlog and some records could still not be
        re-indexed (a later pass tries them again); ``records`` the records re-indexed,
        ``kms_calls`` the KMS round trips of the KMS client during the pass (a serving
        process's other calls meanwhile included). A dry run reads only: no KMS call,
        nothing written; it reports what a pass would do.

        Raises:
            InvalidArgument: ``batch_size`` < 1 or ``limit`` < 0.
            Unavailable: the KMS or the database is unreachable (what the pass did so
                far stays done; run it again).
        """
        if batch_size < 1:
            raise InvalidArgument("batch_size", "batch_size must be at least 1")
        if limit is not None and limit < 0:
            raise InvalidArgument("limit", "limit must not be negative")
        calls = self.crypto.kms.calls
        live = self._keys.index_keys()
        if not live:  # nothing was ever indexed: the first key is made on first use
            return RotationReport(RotationKind.INDEX, dry_run)
        lost = {} if dry_run else self._lost(live)
        if lost:
            # A database copy restored from before a retirement: its generations' keys
            # are destroyed, its tags match nothing. Forget them and index everything
            # again under a new generation above them (a name never used before).
            self.storage.drop_index_generations(
                {generation: live[generation].key_id for generation in lost}
            )
            live = {g: key for g, key in live.items() if g not in lost}
            if not live:
                self._keys.load_or_create(self.crypto.kms, index_key_name(max(lost) + 1))
                live = self._keys.index_keys()
        newest = max(live)
        under_way = len(live) > 1 or bool(lost)
        age = self.clock() - (live[newest].rotated_at or live[newest].created_at)
        if not (force or under_way or age >= cryptoperiod):
            return RotationReport(RotationKind.INDEX, dry_run)
        target = newest if under_way else newest + 1
        if dry_run:
            backlog = self.storage.index_backlog_count(target, INDEXED_CATEGORIES)
            records = backlog if limit is None else min(backlog, limit)
            return RotationReport(
                RotationKind.INDEX,
                True,
                due=1,
                records=records,
                remaining=int(records < backlog),
            )
        if not under_way:
            self._keys.load_or_create(self.crypto.kms, index_key_name(target))
        index = self.vault.lookup_index()
        index.refresh()  # this process's writers know the new generation from now on
        records, exhausted = self._backfill(index, target, batch_size, limit)
        rotated, remaining, failed = 0, 1, 0
        if not exhausted:
            if self.storage.index_backlog_count(target, INDEXED_CATEGORIES):
                failed = 1
            else:
                rotated, remaining = self._retire(index, target)
                rotated = max(rotated, int(bool(lost) and not remaining))
        return RotationReport(
            RotationKind.INDEX,
            False,
            due=1,
            rotated=rotated,
            failed=failed,
            remaining=remaining,
            records=records,
            kms_calls=self.crypto.kms.calls - calls,
        )

    # --- steps ----------------------------------------------------------------------

    def _lost(self, live: dict[int, ServiceKey]) -> set[int]:
        """The live generations whose KMS key no longer exists (one check each)."""
        try:
            return {
                generation
                for generation, key in live.items()
                if not self.crypto.kms.key_exists(key.key_id)
            }
        except KmsError as e:
            raise kms_error(e) from e

    def _backfill(
        self, index: BlindIndex, target: int, batch_size: int, limit: int | None
    ) -> tuple[int, bool]:
        """Re-index the backlog of ``target``: (records re-indexed, whether ``limit``
        stopped the pass)."""
        reindexed = tried = 0
        for _ in range(MAX_SWEEPS):
            after = ("", "")
            done = skipped = 0
            while True:
                if limit is not None and tried >= limit:
                    return reindexed + done, True
                size = batch_size if limit is None else min(batch_size, limit - tried)
                page = self.storage.index_backlog(
                    target, INDEXED_CATEGORIES, after=after, limit=size
                )
                if not page:
                    break
                after = (page[-1].subject_id, page[-1].record_id)
                tried += len(page)
                count = self._reindex(index, page)
                done += count
                skipped += len(page) - count
            reindexed += done
            if not skipped or not done:
                break  # nothing left to retry, or retrying made no progress
        return reindexed, False

    def _reindex(self, index: BlindIndex, page: Sequence[StoredRecord]) -> int:
        """Index a page of records under every live generation; how many were.

        A record whose subject is no longer writable, whose key changed since it was
        read (a re-key) or that was written meanwhile is skipped (the writer indexed it;
        otherwise the next sweep or pass finds it again).
        """
        infos = self.storage.subjects({record.subject_id for record in page})
        self.crypto.warm([info for info in infos.values() if info.state in WRITABLE])
        done = 0
        for record in page:
            info = infos.get(record.subject_id)
            if info is None or info.state not in WRITABLE:
                continue
            try:
                fields = self.crypto.decrypt(info, record)
            except (KeyDestroyedError, IntegrityFailure):
                continue
            values = indexed_values(record.category, fields)
            if index.index(record.subject_id, record.record_id, values, record.version):
                done += 1
        return done

    def _retire(self, index: BlindIndex, target: int) -> tuple[int, int]:
        """Retire every live generation older than ``target``: (rotated, remaining)."""
        live = self._keys.index_keys()
        old = {generation: key.key_id for generation, key in live.items() if generation < target}
        if target not in live:  # a newer rotation overtook this pass: the next one resumes
            return 0, 1
        if not old:
            return 0, 0  # another replica finished it
        if not self.storage.retire_index_generations(old, target, INDEXED_CATEGORIES, self.clock()):
            # A record written by a replica that did not know ``target`` yet (the next
            # pass re-indexes it), or another replica retired them first.
            still = any(generation < target for generation in self._keys.index_keys())
            return 0, int(still)
        # In the key ledger already (the retirement's transaction): the restore fence
        # destroys them if what follows fails. Recorded in the erasure ledger before
        # they are destroyed; the database's ledger position follows.
        fault_point("index_rotation.committed")
        seqs = self.ledger.append(
            [NewLedgerEntry(RETIRED, key_id) for key_id in sorted(old.values())]
        )
        fault_point("index_rotation.ledger_appended")
        for key_id in sorted(old.values()):
            destroy_key(self.crypto, key_id)
        self.storage.raise_ledger_position(max(seqs))
        index.refresh()  # the retired keys leave this process's memory
        return 1, 0
