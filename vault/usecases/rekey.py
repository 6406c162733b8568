"""Re-key: a subject moves to a new KMS key and the old one is destroyed.

Records of the categories dropped are deleted, every other record is re-encrypted under
the new key, in one compare-and-set transaction (Storage.rekey); the old key is then
recorded in the erasure ledger and destroyed: afterwards no copy of the database,
backups included, can yield the dropped records. Withdrawing a consent
(vault.usecases.consent) uses it to destroy the data stored under that consent.

Record-level erasure (:meth:`Rekeying.erase_record`) is the same move with one record
deleted (DeleteRecord) or rewritten at its next version (UpdateRecord) in the
transaction: the deleted or replaced value stays only in ciphertext under the destroyed
key, in database copies taken before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from kms.base import DataKey
from vault.access import caller_scope
from vault.clock import Clock, utc_now
from vault.crypto.key_destruction import destroy_key, destroy_ledger_keys
from vault.crypto.record_crypto import RecordCrypto
from vault.errors import RecordNotFound, Unavailable, VersionConflict
from vault.fault_points import fault_point
from vault.storage import Storage, StoredRecord, SubjectKeyInfo
from vault.storage.erasure_ledger import NewLedgerEntry
from vault.storage.rekey import Rewrite
from vault.usecases.erasure_ledger import RETIRED, ErasureLedger
from vault.usecases.writable import decrypt_current, writable

#: Tries of a re-key that found records written meanwhile; the new key is reused, so a
#: try costs a read and local re-encryption, no KMS call.
REKEY_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class RecordChange:
    """What a record-level erasure does to one record, in the re-key's transaction."""

    record_id: str
    #: The record's new content (UpdateRecord); None deletes the record (DeleteRecord).
    fields: Mapping[str, str] | None = None
    #: UpdateRecord: the version the caller read (else VersionConflict).
    expected_version: int = 0
    #: UpdateRecord: the new origin; empty keeps the record's.
    origin: str = ""
    #: UpdateRecord: blind-index tags of the new content; None for a category not indexed.
    #: {generation: {kind: tag}} under every live index key generation.
    index_tags: Mapping[int, Mapping[str, int]] | None = None
    #: Run on the subject and the record as each try reads them (the caller's checks:
    #: category, consent); raises to refuse: nothing written, a new key made is discarded.
    check: Callable[[SubjectKeyInfo, StoredRecord], None] | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    """One try's changes besides re-encryption: records deleted, one rewritten."""

    dropped: Sequence[str] = ()
    rewrite: tuple[StoredRecord, RecordChange] | None = None


#: What a try does with the subject and records it read: the plan, or an error raised.
_Planner = Callable[[SubjectKeyInfo, Sequence[StoredRecord]], _Plan]


@contextlib.contextmanager
def _unnoted(quiet: bool) -> Iterator[None]:
    """With ``quiet``, re-encrypting the other records under the new key leaves the
    call's audit note (categories, fields) as it was: a record-level erasure is audited
    as the DeleteRecord or UpdateRecord it is, not as a write to every category."""
    if not quiet:
        yield
        return
    with caller_scope.noting(caller_scope.AccessNote()):
        yield


class Rekeying:
    """Move subjects to new keys; destroy the keys they left."""

    def __init__(
        self,
        storage: Storage,
        crypto: RecordCrypto,
        *,
        ledger: ErasureLedger,
        clock: Clock = utc_now,
    ) -> None:
        self.storage = storage
        self.crypto = crypto
        self.ledger = ledger
        self.clock = clock

    def rekey(
        self,
        subject_id: str,
        drop_categories: Sequence[str] = (),
        *,
        withdrawn_consent: str | None = None,
    ) -> int:
        """Move a subject to a new KMS key and destroy the old one.

        Records of ``drop_categories`` are deleted, every other record is re-encrypted
        under the new key. ``withdrawn_consent`` leaves the subject's consents in the
        same transaction. Returns how many records were dropped.
        """

        def plan(info: SubjectKeyInfo, records: Sequence[StoredRecord]) -> _Plan:
            return _Plan(dropped=[r.record_id for r in records if r.category in drop_categories])

        plan_done, _ = self._move(subject_id, plan, withdrawn_consent=withdrawn_consent)
        return len(plan_done.dropped)

    def erase_record(self, subject_id: str, change: RecordChange) -> StoredRecord | None:
        """Delete a record (``change.fields`` None) or rewrite it at its next version,
        in the transaction that moves the subject to a new key; then destroy the old
        key: no database copy, backups included, yields the old value any more.

        Returns the rewritten record (None for a delete). Writes racing the move are
        kept: the move reads again (same new key) until its compare-and-set finds
        nothing changed since its read.

        Raises:
            RecordNotFound: the record is not there (or was deleted meanwhile).
            VersionConflict: UpdateRecord's ``expected_version`` is not the record's
                version as read (nothing written, no key made or destroyed).
            SubjectShredded: the subject is not writable (as the normal call).
        """

        def plan(info: SubjectKeyInfo, records: Sequence[StoredRecord]) -> _Plan:
            current = next((r for r in records if r.record_id == change.record_id), None)
            if current is None:
                raise RecordNotFound("record not found", record_id=change.record_id)
            if change.check is not None:
                change.check(info, current)
            if change.fields is None:
                return _Plan(dropped=[current.record_id])
            if current.version != change.expected_version:
                raise VersionConflict(
                    "record was changed since it was read", current_version=str(current.version)
                )
            return _Plan(rewrite=(current, change))

        _, rewritten = self._move(subject_id, plan, quiet=True)
        return rewritten[0].record if rewritten else None

    def destroy_retired_keys(self, subject_id: str) -> None:
        """Destroy (again) every key the ledger lists for this subject; idempotent."""
        destroy_ledger_keys(self.storage, self.crypto, subject_id)

    # --- the move -------------------------------------------------------------------

    def _move(
        self,
        subject_id: str,
        planner: _Planner,
        *,
        withdrawn_consent: str | None = None,
        quiet: bool = False,
    ) -> tuple[_Plan, list[Rewrite]]:
        """Read, plan, re-encrypt and compare-and-set until nothing changed between the
        read and the write (a new key made once, reused by every try); then the old key
        goes to the erasure ledger and is destroyed. ``quiet``: see :func:`_unnoted`."""
        new_key: tuple[str, DataKey] | None = None
        try:
            for _ in range(REKEY_ATTEMPTS):
                # Subject and records read together: every record is under info's key.
                info, records = self.storage.subject_with_records(subject_id)
                writable(info)
                plan = planner(info, records)  # a refusal: no key made yet (or discarded)
                if new_key is None:
                    new_key = self.crypto.new_subject_key()
                    self.crypto.cache.put(new_key[0], new_key[1].key_version, new_key[1].plaintext)
                key_id, data_key = new_key
                new_info = replace(
                    info,
                    key_id=key_id,
                    wrapped_dek=data_key.wrapped,
                    key_version=data_key.key_version,
                )
                now = self.clock()
                rewritten = self._rewrite(new_info, plan, now)
                skipped = {*plan.dropped, *(r.record.record_id for r in rewritten)}
                with _unnoted(quiet):
                    kept = self._reseal(info, new_info, records, skipped)
                if kept is not None and self.storage.rekey(
                    subject_id,
                    info.key_id,
                    key_id,
                    data_key.wrapped,
                    data_key.key_version,
                    kept,
                    plan.dropped,
                    now,
                    withdrawn_consent=withdrawn_consent,
                    rewritten=rewritten,
                ):
                    new_key = None  # in use now: not to be discarded
                    break
            else:
                raise Unavailable("the subject kept changing during re-keying; retry")
        finally:
            if new_key is not None:  # never committed: leave no orphan key
                self.crypto.cache.evict(new_key[0])
                self.crypto.discard_key(new_key[0])
        # In the key ledger already (the re-key's transaction): a retry, reconcile or the
        # restore fence destroys it if what follows fails. Recorded in the erasure ledger
        # before it is destroyed; the database's ledger position follows once it is.
        fault_point("rekey.committed")
        [seq] = self.ledger.append([NewLedgerEntry(RETIRED, info.key_id, subject_id)])
        fault_point("rekey.ledger_appended")
        destroy_key(self.crypto, info.key_id)
        fault_point("rekey.key_destroyed")
        self.storage.raise_ledger_position(seq)
        return plan, rewritten

    def _rewrite(self, new_info: SubjectKeyInfo, plan: _Plan, now: datetime) -> list[Rewrite]:
        """The plan's rewritten record, sealed under ``new_info``'s key at its next
        version (same scheme and bucket: a rectification does not move a record's
        retention); noted for the audit entry as UpdateRecord's seal is."""
        if plan.rewrite is None:
            return []
        current, change = plan.rewrite
        assert change.fields is not None
        ciphertext = self.crypto.seal(
            new_info,
            current.record_id,
            current.category,
            change.fields,
            current.key_scheme,
            current.bucket_id,
        )
        updated = replace(
            current,
            version=current.version + 1,
            ciphertext=ciphertext,
            origin=change.origin or current.origin,
            updated_at=now,
        )
        return [Rewrite(updated, current, change.index_tags)]

    def _reseal(
        self,
        info: SubjectKeyInfo,
        new_info: SubjectKeyInfo,
        records: Sequence[StoredRecord],
        skipped: Collection[str],
    ) -> list[StoredRecord] | None:
        """The records not ``skipped`` (dropped or rewritten), sealed under
        ``new_info``'s key, each keeping the version, scheme and bucket it was read with
        (Storage.rekey writes nothing if any changed meanwhile); None when another re-key
        destroyed ``info``'s key since."""
        kept: list[StoredRecord] = []
        for r in records:
            if r.record_id in skipped:
                continue
            fields = decrypt_current(self.storage, self.crypto, info, r)
            if fields is None:
                return None
            ciphertext = self.crypto.seal(
                new_info, r.record_id, r.category, fields, r.key_scheme, r.bucket_id
            )
            kept.append(replace(r, ciphertext=ciphertext))
        return kept
