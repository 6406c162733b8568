"""Batch put and get of records across many subjects (batch shred: vault.usecases.erasure).

A billing run touches thousands of customers at once; one call per record would spend
most of its time in round trips. Each batch:

- reads every subject it names in one query and every record in one more (by primary
  key pairs, vault.storage.pair_lookup);
- unwraps the DEKs of cold subjects before any decryption, in groups side by side
  (:meth:`vault.crypto.record_crypto.RecordCrypto.start_warming`): cached subjects cost
  no KMS call, and a get's unwraps run while its records are read;
- notes what each subject's items touched (:meth:`vault.access.caller_scope.AccessNote.item`),
  which the audit trail writes as one entry per subject.

Puts are atomic (one transaction: all records or none); gets succeed or fail item by
item, in request order, like the unary call would for that item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from vault.access import caller_scope
from vault.catalog import Cardinality, Category
from vault.errors import (
    AlreadyExists,
    InvalidArgument,
    KeyDestroyedError,
    OubliError,
    RecordNotFound,
    SubjectNotFound,
    Unavailable,
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
from vault.usecases.service import RecordView, VaultService, record_view
from vault.usecases.writable import rekeyed_since, writable

#: Most items in one batch call (records for put/get, subjects for shred).
MAX_BATCH_ITEMS = 1000


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
    """Batch put and get over a :class:`~vault.usecases.service.VaultService`."""

    def __init__(self, vault: VaultService) -> None:
        self.vault = vault

    # --- put ----------------------------------------------------------------------------

    def create_records(self, items: Sequence[NewRecord]) -> list[RecordView]:
        """Store every record of ``items`` or none; records come back in request order."""
        check_batch("requests", len(items))
        vault = self.vault
        checked: list[_Checked] = []
        singletons: set[tuple[str, str]] = set()
        # A batch names few subjects and categories many times: each is checked once.
        subjects_seen: set[str] = set()
        specs: dict[str, Category] = {}
        index = 0
        try:
            for index, item in enumerate(items):  # noqa: B007 - index names a failure
                if item.subject_id not in subjects_seen:
                    check_id("subject_id", item.subject_id)
                    subjects_seen.add(item.subject_id)
                spec = specs.get(item.category)
                if spec is None:
                    spec = vault.catalog.category(item.category)
                    caller_scope.check(category=spec)
                    specs[item.category] = spec
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
                    authorize_write(spec, writable(info))
                    refuse_if_restricted(info)
                vault.crypto.warm(list(infos.values()))
                now = vault.clock()
                sealers: dict[tuple[str, str, int, str], Any] = {}
                for index, (item, spec, fields, origin, singleton) in enumerate(checked):
                    info = infos[item.subject_id]
                    stored = vault.new_record(
                        info, spec, record_ids[index], fields, origin, now, sealers
                    )
                    rows.append((stored, singleton))
                    views.append(record_view(stored, fields))
            except OubliError as e:
                sid = checked[index].item.subject_id
                if isinstance(e, KeyDestroyedError) and rekeyed_since(vault.storage, infos[sid]):
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
        keys_of: dict[int, tuple[str, str]] = {}
        for index, read in enumerate(reads):
            try:
                check_id("subject_id", read.subject_id)
                check_id("record_id", read.record_id)
                keys_of[index] = (read.subject_id, read.record_id)
            except OubliError as e:
                results[index] = e
        infos = vault.storage.subjects({subject_id for subject_id, _ in keys_of.values()})
        # Check every item on its subject first, so that refused subjects cost no KMS
        # call; the cold DEKs of the others are unwrapped while their records are read.
        note = caller_scope.current_note()
        admitted: list[tuple[int, SubjectKeyInfo]] = []
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
                admitted.append((index, info))
            except OubliError as e:
                results[index] = _failed(note, read, e)
        warmed = vault.crypto.start_warming([info for _, info in admitted])
        try:
            stored = vault.storage.records_by_id([keys_of[index] for index, _ in admitted])
        finally:
            warmed()  # the unwraps end with the call, whatever happened
        allowed: list[tuple[int, SubjectKeyInfo, StoredRecord]] = []
        for index, info in admitted:
            read = reads[index]
            try:
                found = stored.get((read.subject_id, read.record_id))
                if found is None:
                    raise RecordNotFound("record not found", record_id=read.record_id)
                spec = vault.catalog.category(found.category)
                caller_scope.check(category=spec)
                authorize_read(vault.catalog, spec, read.purpose, info)
                allowed.append((index, info, found))
            except OubliError as e:
                results[index] = _failed(note, read, e)
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
