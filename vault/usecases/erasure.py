"""Erasure: a subject is shredded by destroying its key, keeping only what the law requires.

One path for ShredSubject, BatchShredSubjects, the retention job and the restore fence:
shredding one subject is a batch of one. For the subjects of a call:

1. mark every writable one ``shredding`` (one transaction, committed: every replica
   refuses them from then on), then read them again — a re-key that committed just
   before the mark moved a subject to a new key, and that is the key to destroy;
2. re-encrypt the records of legal-hold categories (invoices) under the hold bucket of
   their deadline (closure, or now, plus the hold period);
3. append every key about to be destroyed to the erasure ledger (one durable commit for
   the call, outside the data database: :mod:`vault.usecases.erasure_ledger`);
4. destroy each subject's KMS key (several side by side; idempotent);
5. finish them all in one transaction (:meth:`Storage.finish_shreds`): delete every
   other record, drop the wrapped DEK, mark the subject ``held`` (legal records remain)
   or ``shredded``, write the receipt, the key ledger and the database's ledger
   position.

Each subject succeeds or fails alone. A crash or outage after step 1 leaves the subject
refused; calling again, the retention job or the restore fence at the next start
completes the remaining steps. An erased subject's shred returns its receipt. Each
receipt carries its key's position in the erasure ledger and, for the API, is signed
with the KMS signing key (:mod:`vault.usecases.receipts`). After a KMS restore,
:meth:`Erasure.reconcile` destroys again every key the key ledger lists.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TypeVar

from vault.access import caller_scope
from vault.catalog import Catalog
from vault.clock import Clock, utc_now
from vault.crypto.bucket_keys import add_months
from vault.crypto.key_destruction import destroy_key, destroy_ledger_keys
from vault.crypto.record_crypto import RecordCrypto
from vault.errors import (
    IntegrityFailure,
    InvalidArgument,
    KeyDestroyedError,
    OubliError,
    SubjectNotFound,
    Unavailable,
)
from vault.fault_points import fault_point
from vault.ids import check_id
from vault.storage import Receipt, Storage, StoredRecord, SubjectKeyInfo
from vault.storage.erasure_ledger import NewLedgerEntry
from vault.usecases.batches import check_batch
from vault.usecases.erasure_ledger import SUBJECT, ErasureLedger
from vault.usecases.receipts import ReceiptSigner, ShredReceipt
from vault.usecases.service import REWRITE_ATTEMPTS
from vault.vocabulary import WRITABLE, BucketKind, KeyScheme, SubjectState

#: What a shred receipt says about copies oubli cannot reach by itself.
RESIDUAL_RISK = {
    "vault-transit": (
        "The Transit key was deleted from Vault. Vault snapshots taken before the shred "
        "still hold it until they expire (backup retention: {days} days, last copy gone by "
        "residual_copies_expire_time); restoring one must be followed by `oubli reconcile`, "
        "which destroys again every key in the shred ledger, before serving traffic."
    ),
    "local-keystore": (
        "The key was removed from the local keystore file with secure_delete and a WAL "
        "checkpoint. Backups of the keystore file taken before the shred still hold it until "
        "they expire (backup retention: {days} days, last copy gone by "
        "residual_copies_expire_time); restoring one must be followed by `oubli reconcile`."
    ),
}
RESIDUAL_RISK_OTHER = "The key was destroyed in the {backend} KMS, which keeps no backups."

#: Subjects whose keys are destroyed side by side (each waits mostly on the KMS).
SHRED_WORKERS = 8

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
#: A subject's hold after its erasure: the hold bucket kept longest, and its destroy_at.
_Hold = tuple[str, datetime]


class Erasure:
    """Shred subjects (one or many), and destroy again the ledger's keys after a KMS
    restore."""

    def __init__(
        self,
        storage: Storage,
        crypto: RecordCrypto,
        catalog: Catalog,
        *,
        ledger: ErasureLedger,
        clock: Clock = utc_now,
        kms_backup_retention: timedelta = timedelta(days=7),
        workers: int = SHRED_WORKERS,
    ) -> None:
        self.storage = storage
        self.crypto = crypto
        self.catalog = catalog
        self.ledger = ledger
        self.clock = clock
        self._kms_backup_retention = kms_backup_retention
        self._workers = workers

    def shred(self, subject_id: str, signer: ReceiptSigner | None = None) -> ShredReceipt:
        """Erase one subject (ShredSubject): the batch path with one item, whose error
        is raised. With ``signer``, the receipt is signed."""
        [result] = self._signed(self._shred([subject_id]), signer)
        if isinstance(result, OubliError):
            raise result
        return result

    def shred_many(
        self, subject_ids: Sequence[str], signer: ReceiptSigner | None = None
    ) -> list[ShredReceipt | OubliError]:
        """Erase each subject (BatchShredSubjects, the retention job): per subject, in
        request order, its receipt or its error. One failure stops nothing; each
        subject's audit entry names its failure. With ``signer``, the receipts are
        signed together (one KMS call for them all; Transit: one per 400); if they
        cannot be signed, each subject is erased all the same, has the signing error as
        its result, and a retry returns its receipt signed."""
        check_batch("subject_ids", len(subject_ids))
        if len(set(subject_ids)) != len(subject_ids):
            raise InvalidArgument("subject_ids", "a subject id appears twice")
        results = self._signed(self._shred(subject_ids), signer)
        note = caller_scope.current_note()
        if note is not None:
            for subject_id, result in zip(subject_ids, results, strict=True):
                item = note.item(subject_id)
                if isinstance(result, OubliError) and item.outcome is None:
                    item.outcome = result.reason
        return results

    def reconcile(self) -> int:
        """Destroy again every key in the key ledger; returns how many were checked.

        Run after restoring a KMS backup (Vault snapshot, keystore file copy) and before
        serving traffic: the restore brought back keys destroyed since the backup was
        taken. Destroying is idempotent, so running it twice is harmless.
        """
        return destroy_ledger_keys(self.storage, self.crypto)

    # --- the path -------------------------------------------------------------------

    def _shred(self, subject_ids: Sequence[str]) -> list[ShredReceipt | OubliError]:
        results: dict[str, ShredReceipt | OubliError] = {}
        valid: list[str] = []
        for subject_id in subject_ids:
            try:
                valid.append(check_id("subject_id", subject_id))
            except OubliError as e:
                results[subject_id] = e
        infos = self.storage.subjects(valid) if valid else {}
        for subject_id in valid:
            if subject_id not in infos:
                results[subject_id] = SubjectNotFound("subject not found", subject_id=subject_id)
        marked = [sid for sid, info in infos.items() if info.state in WRITABLE]
        held: set[str] = set()
        if marked:
            self.storage.mark_shredding(marked, self.clock())
            fault_point("erasure.marked")
            # Marked first, checked for legal records after: a record written between
            # the two would otherwise escape its legal hold (a shredding subject takes
            # none). Read again: the key to destroy cannot change from here on.
            held = self.storage.subjects_with_records(
                marked, list(self.catalog.legal_hold_categories), KeyScheme.SUBJECT
            )
            infos.update(self.storage.subjects(marked))
        erased = [
            sid
            for sid, info in infos.items()
            if info.state in (SubjectState.HELD, SubjectState.SHREDDED)
        ]
        results.update(self._existing_receipts(erased))
        pending = [info for sid, info in infos.items() if sid not in results]
        # A subject marked by an earlier, interrupted call may have legal records left
        # to hold, or held already.
        may_hold = held | (infos.keys() - set(marked))

        def hold(info: SubjectKeyInfo) -> _Hold | None:
            if info.subject_id not in may_hold:
                return None
            self._hold_legal_records(info)
            return self._last_hold(info.subject_id)

        ready: list[tuple[SubjectKeyInfo, _Hold | None]] = []
        for info, outcome in zip(pending, self._side_by_side(hold, pending), strict=True):
            if isinstance(outcome, OubliError):
                results[info.subject_id] = outcome  # stays shredding (refused): retry
            else:
                ready.append((info, outcome))
        seqs = self._record_in_ledger([info for info, _ in ready], results)
        fault_point("erasure.ledger_appended")

        def erase_key(info: SubjectKeyInfo) -> None:
            destroy_key(self.crypto, info.key_id)
            fault_point("erasure.key_destroyed")

        recorded = [(info, last) for info, last in ready if info.subject_id in seqs]
        destroyed: dict[str, _Hold | None] = {}
        for (info, held_in), outcome in zip(
            recorded, self._side_by_side(erase_key, [info for info, _ in recorded]), strict=True
        ):
            if isinstance(outcome, OubliError):
                results[info.subject_id] = outcome  # stays shredding (refused): retry
            else:
                destroyed[info.subject_id] = held_in
        if destroyed:
            fault_point("erasure.keys_destroyed")
            self._finish(destroyed, results, {sid: seqs[sid] for sid in destroyed})
        return [results[subject_id] for subject_id in subject_ids]

    def _record_in_ledger(
        self, infos: Sequence[SubjectKeyInfo], results: dict[str, ShredReceipt | OubliError]
    ) -> dict[str, int]:
        """Append the keys about to be destroyed to the erasure ledger (one commit);
        per subject, its entry's seq. If the ledger cannot be written, no key is
        destroyed: the subjects stay refused, and a retry completes them."""
        if not infos:
            return {}
        entries = [NewLedgerEntry(SUBJECT, info.key_id, info.subject_id) for info in infos]
        try:
            seqs = self.ledger.append(entries)
        except OubliError as e:
            results.update(dict.fromkeys((info.subject_id for info in infos), e))
            return {}
        return {info.subject_id: seq for info, seq in zip(infos, seqs, strict=True)}

    def _finish(
        self,
        destroyed: dict[str, _Hold | None],
        results: dict[str, ShredReceipt | OubliError],
        seqs: dict[str, int],
    ) -> None:
        holds = {sid: hold for sid, hold in destroyed.items() if hold is not None}
        try:
            receipts = self.storage.finish_shreds(
                list(destroyed),
                self.crypto.kms.backend_name,
                self.clock(),
                holds,
                ledger_seq=max(seqs.values()),
            )
        except OubliError as e:  # all stay shredding (refused); a retry completes them
            results.update(dict.fromkeys(destroyed, e))
            return
        for subject_id in destroyed:
            receipt = receipts.get(subject_id)
            results[subject_id] = (
                self._receipt_view(receipt, seqs[subject_id])
                if receipt is not None
                else SubjectNotFound("subject not found", subject_id=subject_id)
            )

    def _existing_receipts(
        self, subject_ids: Sequence[str]
    ) -> dict[str, ShredReceipt | OubliError]:
        """The receipts of subjects erased already, with their keys' ledger positions.
        A key the ledger lacks (erased before the ledger existed, or the ledger was
        restored) is appended to it now, as the restore fence would."""
        results: dict[str, ShredReceipt | OubliError] = {}
        found: list[Receipt] = []
        for subject_id in subject_ids:
            try:
                existing = self.storage.receipt(subject_id)
            except OubliError as e:
                results[subject_id] = e
                continue
            if existing is None:  # pragma: no cover - finish_shreds writes both at once
                results[subject_id] = IntegrityFailure("erased subject without a receipt")
            else:
                found.append(existing)
        if not found:
            return results
        entries = [NewLedgerEntry(SUBJECT, r.key_id, r.subject_id) for r in found]
        try:
            seqs = self.ledger.append(entries)
        except OubliError as e:
            results.update(dict.fromkeys((r.subject_id for r in found), e))
            return results
        for receipt, seq in zip(found, seqs, strict=True):
            results[receipt.subject_id] = self._receipt_view(receipt, seq)
        return results

    def _signed(
        self, results: list[ShredReceipt | OubliError], signer: ReceiptSigner | None
    ) -> list[ShredReceipt | OubliError]:
        """``results`` with every receipt signed by ``signer``, all in one batch; if the
        batch cannot be signed, each receipt is replaced by the error."""
        if signer is None:
            return results
        receipts = [r for r in results if isinstance(r, ShredReceipt)]
        signed: list[ShredReceipt | OubliError]
        try:
            signed = list(signer.sign_many(receipts))
        except OubliError as e:
            signed = [e] * len(receipts)
        each = iter(signed)
        return [next(each) if isinstance(r, ShredReceipt) else r for r in results]

    def _side_by_side(
        self, task: Callable[[_Item], _Result], items: Sequence[_Item]
    ) -> list[_Result | OubliError]:
        """``task`` for each item, several at a time; an item's domain error is its
        result. Each task runs in a copy of this call's context: the caller's rule,
        access note and KMS deadline follow it onto the pool thread."""

        def run(item: _Item) -> _Result | OubliError:
            try:
                return task(item)
            except OubliError as e:
                return e

        if len(items) <= 1:
            return [run(item) for item in items]
        workers = min(self._workers, len(items))
        with ThreadPoolExecutor(workers, thread_name_prefix="oubli-shred") as pool:
            futures = [pool.submit(contextvars.copy_context().run, run, item) for item in items]
            return [future.result() for future in futures]

    # --- legal hold -----------------------------------------------------------------

    def _hold_legal_records(self, info: SubjectKeyInfo) -> None:
        """Re-encrypt the subject's records of legal-hold categories under the hold
        bucket of their deadline (closure, or now, plus the category's months)."""
        legal = self.catalog.legal_hold_categories
        pending = self.storage.records(
            info.subject_id, categories=list(legal), scheme=KeyScheme.SUBJECT
        )
        if not pending:
            return
        closure = info.closed_at or self.clock()
        for _ in range(REWRITE_ATTEMPTS):
            moved: list[StoredRecord] = []
            for stored in pending:
                rule = legal[stored.category].retention
                bucket = self.crypto.buckets.for_deadline(
                    BucketKind.HOLD, stored.category, add_months(closure, rule.months)
                )
                if bucket is None:
                    continue  # the hold period is already over: it goes with the rest
                try:
                    fields = self.crypto.decrypt(info, stored)
                except KeyDestroyedError:
                    # The subject's key is gone already (e.g. this database was restored
                    # from before an earlier erasure): nothing can be held, nothing is left.
                    return
                ciphertext = self.crypto.seal(
                    info,
                    stored.record_id,
                    stored.category,
                    fields,
                    KeyScheme.HOLD,
                    bucket.bucket_id,
                )
                moved.append(
                    replace(
                        stored,
                        ciphertext=ciphertext,
                        key_scheme=KeyScheme.HOLD,
                        bucket_id=bucket.bucket_id,
                        retain_until=bucket.destroy_at,
                    )
                )
            # A compare-and-set on each version: a write that committed after the records
            # were listed (it passed its state check before the subject was marked) is
            # what must be held, so the records are read again.
            if self.storage.move_records(moved):
                return
            pending = self.storage.records(
                info.subject_id, categories=list(legal), scheme=KeyScheme.SUBJECT
            )
        raise Unavailable("the subject's records kept changing during erasure; retry")

    def _last_hold(self, subject_id: str) -> _Hold | None:
        """The live hold bucket of the subject's held records that is destroyed last."""
        held = self.storage.records(subject_id, scheme=KeyScheme.HOLD)
        buckets = [b for b in (self.crypto.buckets.get(r.bucket_id or "") for r in held) if b]
        last = max(buckets, key=lambda b: b.destroy_at, default=None)
        return None if last is None else (last.bucket_id, last.destroy_at)

    # --- receipts -------------------------------------------------------------------

    def _receipt_view(self, receipt: Receipt, ledger_position: int) -> ShredReceipt:
        """The receipt as the API shows it, with what remains outside oubli's reach (KMS
        backups) and when its last copy is gone, and the key's erasure ledger entry."""
        days = self._kms_backup_retention.days
        template = RESIDUAL_RISK.get(receipt.kms_backend, RESIDUAL_RISK_OTHER)
        return ShredReceipt(
            receipt.subject_id,
            receipt.key_id,
            receipt.shredded_at,
            receipt.records_deleted,
            receipt.kms_backend,
            template.format(days=days, backend=receipt.kms_backend),
            receipt.shredded_at + self._kms_backup_retention,
            receipt.records_retained,
            receipt.retained_until,
            ledger_position,
        )
