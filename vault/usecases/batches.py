"""Batch operations across many subjects: put, get and shred.

A billing run touches thousands of customers at once and a retention job shreds in
bulk; one call per record would spend most of its time in round trips. Each batch:

- reads every subject it names in one query and every record in one more;
- unwraps the DEKs of cold subjects together before any decryption
  (:meth:`kms.base.KeyManager.unwrap_many`), so cached subjects cost no KMS call and
  cold ones are unwrapped side by side instead of one after the other;
- notes what each subject's items touched (:meth:`vault.access.caller_scope.AccessNote.item`), which
  the audit trail writes as one entry per subject.

Puts are atomic (one transaction: all records or none); gets and shreds succeed or
fail item by item, in request order, like the unary call would for that item.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from kms.base import KmsError
from vault.access import caller_scope
from vault.catalog import Cardinality, Category, RetentionKind
from vault.errors import (
    AlreadyExists,
    InvalidArgument,
    KeyDestroyedError,
    OubliError,
    RecordNotFound,
    SubjectNotFound,
    SubjectShredded,
    Unavailable,
    kms_error,
)
from vault.ids import check_id
from vault.limits import check_fields, check_origin
from vault.storage import StoredRecord, SubjectKeyInfo
from vault.usecases.purpose_check import (
    authorize_read,
    authorize_subject,
    authorize_write,
    refuse_if_restricted,
)
from vault.usecases.service import RecordView, ShredReceipt, VaultService
from vault.vocabulary import SCHEME_SUBJECT, SHREDDING, WRITABLE

#: Most items in one batch call (records for put/get, subjects for shred).
MAX_BATCH_ITEMS = 1000

#: Subjects shredded side by side in one batch (each shred waits mostly on the KMS).
SHRED_WORKERS = 8


@dataclass(frozen=True, slots=True)
class NewRecord:
    subject_id: str
    category: str
    fields: Mapping[str, str]
    origin: str


@dataclass(frozen=True, slots=True)
class RecordRead:
    subject_id: str
    record_id: str
    purpose: str


class _Checked(NamedTuple):
    """A batch put's item once validated: its category, fields, origin and singleton."""

    item: NewRecord
    spec: Category
    fields: dict[str, str]
    origin: str
    singleton: str | None


def check_batch(field: str, size: int) -> None:
    if not 1 <= size <= MAX_BATCH_ITEMS:
        raise InvalidArgument(field, f"a batch holds 1 to {MAX_BATCH_ITEMS} items")


def at_index(error: OubliError, field: str, index: int) -> OubliError:
    """``error`` naming the failing item of an all-or-nothing batch (its index and,
    for an invalid argument, the field; never a value)."""
    if isinstance(error, InvalidArgument):
        return InvalidArgument(f"{field}[{index}].{error.field}", error.message, index=str(index))
    error.metadata = {**error.metadata, "index": str(index)}
    return error


def _failed(
    note: caller_scope.AccessNote | None, read: RecordRead, error: OubliError
) -> OubliError:
    """Record a failed read as its subject's audit outcome (the first failure wins)."""
    if note is not None:
        item = note.item(read.subject_id, read.purpose)
        if item.outcome is None:
            item.outcome = error.reason
    return error


class BulkOps:
    """Batch put, get and shred over a :class:`~vault.usecases.service.VaultService`."""

    def __init__(self, vault: VaultService, *, shred_workers: int = SHRED_WORKERS) -> None:
        self.vault = vault
        self._shred_workers = shred_workers

    # --- keys ---------------------------------------------------------------------------

    def warm_keys(self, infos: Sequence[SubjectKeyInfo]) -> None:
        """Unwrap the DEKs of the cold subjects among ``infos`` in one KMS batch.

        Failures are left for the item that needs the key: it tries again alone and
        gets the error the unary call would have got.
        """
        cache = self.vault.cache
        cold: dict[str, SubjectKeyInfo] = {}
        for info in infos:
            if info.wrapped_dek is not None and cache.get(info.key_id, info.key_version) is None:
                cold[info.key_id] = info
        if not cold:
            return
        try:
            results = self.vault.kms.unwrap_many(
                [(i.key_id, i.wrapped_dek or b"") for i in cold.values()]
            )
        except KmsError:  # the KMS is down: each item reports it
            return
        for info, result in zip(cold.values(), results, strict=True):
            if isinstance(result, bytes):
                cache.put(info.key_id, info.key_version, result)

    # --- put ----------------------------------------------------------------------------

    def create_records(self, items: Sequence[NewRecord]) -> list[RecordView]:
        """Store every record of ``items`` or none; records come back in request order."""
        check_batch("requests", len(items))
        vault = self.vault
        checked: list[_Checked] = []
        singletons: set[tuple[str, str]] = set()
        index = 0
        try:
            for index, item in enumerate(items):  # noqa: B007 - index names a failure
                check_id("subject_id", item.subject_id)
                spec = vault.catalog.category(item.category)
                caller_scope.check(category=spec)
                fields = check_fields(item.fields, spec.fields)
                origin = check_origin(item.origin)
                singleton = item.category if spec.cardinality is Cardinality.ONE else None
                if singleton is not None:
                    if (item.subject_id, singleton) in singletons:
                        raise AlreadyExists(
                            f"category {item.category} holds one record per subject",
                            category=item.category,
                        )
                    singletons.add((item.subject_id, singleton))
                checked.append(_Checked(item, spec, fields, origin, singleton))
        except OubliError as e:
            raise at_index(e, "requests", index) from None
        # Every item's subject and (checked) names are noted before anything runs: if
        # the batch fails half-way, each subject's audit entry still says what it was.
        note = caller_scope.current_note()
        if note is not None:
            for c in checked:
                share = note.item(c.item.subject_id)
                share.categories.add(c.item.category)
                share.fields.update(c.fields)
        existing = vault.storage.existing_singletons(singletons)
        for index, (item, _, _, _, singleton) in enumerate(checked):
            if singleton is not None and (item.subject_id, singleton) in existing:
                error = AlreadyExists(
                    f"category {item.category} holds one record per subject; update it",
                    category=item.category,
                )
                raise at_index(error, "requests", index)
        record_ids = [vault.new_id() for _ in items]
        subject_ids = {item.subject_id for item in items}
        for _ in range(3):  # a concurrent re-key changes a subject's key: seal again
            infos = vault.storage.subjects(subject_ids)
            rows: list[tuple[StoredRecord, str | None]] = []
            views: list[RecordView] = []
            try:
                for index, (item, spec, _, _, _) in enumerate(checked):  # noqa: B007 - as above
                    info = infos.get(item.subject_id)
                    if info is None:
                        raise SubjectNotFound("subject not found", subject_id=item.subject_id)
                    if info.state not in WRITABLE or info.wrapped_dek is None:
                        raise SubjectShredded("the subject was erased", subject_id=info.subject_id)
                    authorize_write(spec, info)
                    refuse_if_restricted(info)
                self.warm_keys(list(infos.values()))
                now = vault.clock()
                for index, (item, spec, fields, origin, singleton) in enumerate(checked):
                    info = infos[item.subject_id]
                    scheme, bucket_id, retain_until = vault.placement(spec, now)
                    record_id = record_ids[index]
                    ciphertext = vault.seal(
                        info, record_id, item.category, fields, scheme, bucket_id
                    )
                    rows.append(
                        (
                            StoredRecord(
                                item.subject_id,
                                record_id,
                                item.category,
                                1,
                                ciphertext,
                                origin,
                                now,
                                now,
                                scheme,
                                bucket_id,
                                retain_until,
                            ),
                            singleton,
                        )
                    )
                    views.append(
                        RecordView(
                            item.subject_id,
                            record_id,
                            item.category,
                            fields,
                            1,
                            origin,
                            now,
                            now,
                            retain_until,
                        )
                    )
            except OubliError as e:
                sid = checked[index].item.subject_id
                if isinstance(e, KeyDestroyedError) and vault.rekeyed_since(infos[sid]):
                    continue  # a re-key destroyed the key just read: seal again
                failed = at_index(e, "requests", index)
                if note is not None:  # that subject's entry names the item's reason
                    note.item(checked[index].item.subject_id).outcome = failed.reason
                raise failed from None
            try:
                stale = vault.storage.insert_records(
                    rows, {sid: infos[sid].key_id for sid in subject_ids}
                )
            except AlreadyExists:
                raise AlreadyExists(
                    "a category that holds one record per subject already has one; update it"
                ) from None
            if not stale:
                for view in views:
                    vault.index(
                        view.subject_id, view.record_id, view.category, view.fields, view.version
                    )
                return views
        raise Unavailable("subjects' keys kept changing; retry")

    # --- get ----------------------------------------------------------------------------

    def get_records(self, reads: Sequence[RecordRead]) -> list[RecordView | OubliError]:
        """Each read's record, or the error the unary GetRecord would have raised."""
        check_batch("requests", len(reads))
        vault = self.vault
        results: list[RecordView | OubliError | None] = [None] * len(reads)
        keys: list[tuple[str, str]] = []
        for index, read in enumerate(reads):
            try:
                check_id("subject_id", read.subject_id)
                check_id("record_id", read.record_id)
                keys.append((read.subject_id, read.record_id))
            except OubliError as e:
                results[index] = e
        infos = vault.storage.subjects({subject_id for subject_id, _ in keys})
        stored = vault.storage.records_by_id(keys)
        # Check every item first, so that refused items cost no KMS call.
        note = caller_scope.current_note()
        allowed: list[tuple[int, SubjectKeyInfo, StoredRecord]] = []
        for index, read in enumerate(reads):
            if results[index] is not None:
                continue
            try:
                purpose = vault.catalog.purpose(read.purpose)  # known before anything names it
                info = infos.get(read.subject_id)
                if info is None:
                    raise SubjectNotFound("subject not found", subject_id=read.subject_id)
                caller_scope.check(purpose=purpose)
                authorize_subject(vault.catalog, read.purpose, info)
                found = stored.get((read.subject_id, read.record_id))
                if found is None:
                    raise RecordNotFound("record not found", record_id=read.record_id)
                spec = vault.catalog.category(found.category)
                caller_scope.check(category=spec)
                authorize_read(vault.catalog, spec, read.purpose, info)
                allowed.append((index, info, found))
            except OubliError as e:
                results[index] = _failed(note, read, e)
        self.warm_keys([info for _, info, _ in allowed])
        for index, info, found in allowed:
            read = reads[index]
            try:
                view = vault.open_record(info, found)
            except OubliError as e:
                results[index] = _failed(note, read, e)
                continue
            results[index] = view
            if note is not None:  # this subject's audit entry: what its items read
                item = note.item(read.subject_id, read.purpose)
                item.categories.add(view.category)
                item.fields.update(view.fields)
        done = [r for r in results if r is not None]
        assert len(done) == len(reads)  # every item got its record or its error
        return done

    # --- shred --------------------------------------------------------------------------

    def shred_subjects(self, subject_ids: Sequence[str]) -> list[ShredReceipt | OubliError]:
        """Shred each subject as ShredSubject would; per subject, in request order, its
        receipt or its error. One failure stops nothing.

        The common case goes in three steps for the whole batch: mark every writable
        subject ``shredding`` (one transaction: from then on every replica refuses
        them), destroy their keys (the KMS calls, 8 at a time), then delete their
        records and write receipts and key ledger (one transaction). Subjects with
        records a law requires to keep, or already erased, take the unary path (which
        also completes an interrupted shred); so does a subject whose key could not be
        destroyed — it stays ``shredding``, refused, until a retry completes it.
        """
        check_batch("subject_ids", len(subject_ids))
        if len(set(subject_ids)) != len(subject_ids):
            raise InvalidArgument("subject_ids", "a subject id appears twice")
        vault = self.vault
        note = caller_scope.current_note()
        results: dict[str, ShredReceipt | OubliError] = {}
        valid: list[str] = []
        for subject_id in subject_ids:
            try:
                valid.append(check_id("subject_id", subject_id))
            except OubliError as e:
                results[subject_id] = e
        infos = vault.storage.subjects(valid)
        for subject_id in valid:
            if subject_id not in infos:
                results[subject_id] = SubjectNotFound("subject not found", subject_id=subject_id)
        # Marked first, checked for held records after: a record written between the
        # two would otherwise escape its legal hold (a shredding subject takes none).
        marked = [sid for sid, info in infos.items() if info.state in WRITABLE]
        vault.storage.mark_shredding_many(marked, vault.clock())
        legal = [
            name
            for name, spec in vault.catalog.categories.items()
            if spec.retention.kind is RetentionKind.LEGAL_HOLD
        ]
        held = vault.storage.subjects_with_records(marked, legal, SCHEME_SUBJECT)
        # Read again: a re-key that committed just before the mark moved a subject to a
        # new key, and that is the key to destroy. From here on keys cannot change.
        infos.update(vault.storage.subjects(marked))
        fast = [sid for sid in marked if sid not in held and infos[sid].state == SHREDDING]
        slow = [sid for sid in infos if sid not in fast]
        destroyed = self._destroy_keys([infos[sid] for sid in fast], results)
        if destroyed:
            try:
                receipts = vault.storage.finish_shreds(
                    destroyed, vault.kms.backend_name, vault.clock()
                )
                for sid, receipt in receipts.items():
                    results[sid] = vault.receipt_view(receipt)
            except OubliError as e:  # all stay shredding (refused); a retry completes them
                results.update(dict.fromkeys(destroyed, e))
        self._shred_each(slow, results)
        for subject_id, result in results.items():
            if note is not None:
                item = note.item(subject_id)
                if isinstance(result, OubliError) and item.outcome is None:
                    item.outcome = result.reason
        return [results[subject_id] for subject_id in subject_ids]

    def _destroy_keys(
        self, infos: Sequence[SubjectKeyInfo], results: dict[str, ShredReceipt | OubliError]
    ) -> list[str]:
        """Destroy the subjects' keys, several at a time; the subjects whose key is gone."""
        vault = self.vault

        def destroy(info: SubjectKeyInfo) -> KmsError | None:
            vault.cache.evict(info.key_id)
            try:
                vault.kms.destroy_key(info.key_id)
            except KmsError as e:
                return e
            return None

        if not infos:
            return []
        workers = max(1, min(self._shred_workers, len(infos)))
        with ThreadPoolExecutor(workers, thread_name_prefix="oubli-shred") as pool:
            errors = list(pool.map(destroy, infos))
        done = []
        for info, error in zip(infos, errors, strict=True):
            if error is None:
                done.append(info.subject_id)
            else:
                results[info.subject_id] = kms_error(error)
        return done

    def _shred_each(
        self, subject_ids: Sequence[str], results: dict[str, ShredReceipt | OubliError]
    ) -> None:
        """The unary shred for each subject, several at a time."""

        def shred(subject_id: str) -> ShredReceipt | OubliError:
            try:
                return self.vault.shred_subject(subject_id)
            except OubliError as e:
                return e

        if not subject_ids:
            return
        workers = max(1, min(self._shred_workers, len(subject_ids)))
        with ThreadPoolExecutor(workers, thread_name_prefix="oubli-shred") as pool:
            # Each task runs in a copy of this call's context: the caller's rule and
            # access note follow it onto the pool thread.
            futures = [
                pool.submit(contextvars.copy_context().run, shred, subject_id)
                for subject_id in subject_ids
            ]
            for subject_id, future in zip(subject_ids, futures, strict=True):
                results[subject_id] = future.result()
