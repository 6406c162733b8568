"""The vault's domain: subjects and their records, account closure, retention events.

Plain Python, no gRPC: the servicers in vault.api only convert messages. Every
operation reads the subject's state from the database first, so a subject shredded
through any replica is refused by all of them at once; records are sealed and opened by
vault.crypto.record_crypto. Reads state a purpose, checked against the catalog and the
subject's objections, consents and restriction (vault.usecases.purpose_check). Erasure
is vault.usecases.erasure, re-keying vault.usecases.rekey.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import NamedTuple

from vault.access import caller_scope
from vault.catalog import Cardinality, Catalog, Category, RetentionKind
from vault.clock import Clock, utc_now
from vault.crypto.blind_index import (
    DEFAULT_BITS,
    INDEXED_FIELDS,
    BlindIndex,
    GenerationTags,
    indexed_values,
)
from vault.crypto.bucket_keys import add_months
from vault.crypto.record_crypto import RecordCrypto
from vault.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    KeyDestroyedError,
    OubliError,
    RecordNotFound,
    Unavailable,
    VersionConflict,
)
from vault.ids import RandomBytes, check_id, new_id
from vault.limits import check_fields, check_origin, check_page_size
from vault.storage import BucketInfo, Storage, StoredRecord, SubjectKeyInfo
from vault.usecases.erasure_ledger import ErasureLedger
from vault.usecases.purpose_check import (
    authorize_read,
    authorize_subject,
    authorize_write,
    readable_categories,
    refuse_if_restricted,
)
from vault.usecases.rekey import RecordChange, Rekeying
from vault.usecases.writable import decrypt_current, rekeyed_since, writable
from vault.vocabulary import BucketKind, KeyScheme, SubjectState

#: Tries of a rewrite (UpdateRecord, RecordEvent) whose compare-and-set found the
#: subject's key changed by a re-key: each seals again under the key read anew.
REWRITE_ATTEMPTS = 3


class _Sealer(NamedTuple):
    """How a batch's records of one subject and category are sealed (VaultService.new_record)."""

    seal: Callable[[str, str, Mapping[str, str]], bytes]
    scheme: KeyScheme
    bucket_id: str | None
    retain_until: datetime | None


@dataclass(frozen=True, slots=True)
class SubjectView:
    subject_id: str
    state: SubjectState
    created_at: datetime
    updated_at: datetime
    record_count: int
    restricted: bool = False
    objections: tuple[str, ...] = ()
    consents: tuple[str, ...] = ()
    closed_at: datetime | None = None
    scheduled_shred_at: datetime | None = None
    hold_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecordView:
    subject_id: str
    record_id: str
    category: str
    fields: dict[str, str]
    version: int
    origin: str
    created_at: datetime
    updated_at: datetime
    retain_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecordPage:
    records: list[RecordView]
    next_page_token: str


def record_view(stored: StoredRecord, fields: Mapping[str, str]) -> RecordView:
    """A stored record's metadata with its (decrypted or just written) fields."""
    return RecordView(
        stored.subject_id,
        stored.record_id,
        stored.category,
        dict(fields),
        stored.version,
        stored.origin,
        stored.created_at,
        stored.updated_at,
        stored.retain_until,
    )


def subject_view(info: SubjectKeyInfo, record_count: int) -> SubjectView:
    return SubjectView(
        info.subject_id,
        info.state,
        info.created_at,
        info.updated_at,
        record_count,
        info.restricted,
        tuple(sorted(info.objections)),
        tuple(sorted(info.consents)),
        info.closed_at,
        info.scheduled_shred_at,
        info.hold_until,
    )


class VaultService:
    """Create, read, rectify, delete, export and retain personal data."""

    def __init__(
        self,
        storage: Storage,
        crypto: RecordCrypto,
        catalog: Catalog,
        *,
        ledger: ErasureLedger,
        tenant: str = "default",
        clock: Clock = utc_now,
        random_bytes: RandomBytes = os.urandom,
        lookup_bits: int = DEFAULT_BITS,
    ) -> None:
        self.storage = storage
        self.crypto = crypto
        self.catalog = catalog
        #: Where every destroyed key is recorded before it is destroyed (erasure,
        #: re-key, retention), outside this database.
        self.ledger = ledger
        self.tenant = tenant
        self.clock = clock
        self._random_bytes = random_bytes
        self._lookup_bits = lookup_bits
        self._lookup: BlindIndex | None = None
        self._lookup_lock = threading.Lock()
        #: Record-level erasure: DeleteRecord and UpdateRecord that erase everywhere.
        self.rekeying = Rekeying(storage, crypto, ledger=ledger, clock=clock)

    def lookup_index(self) -> BlindIndex:
        """The blind index (e-mail, phone), its key unwrapped once and kept in memory."""
        found = self._lookup
        if found is not None:
            return found
        # The KMS call runs outside the lock: with a hung KMS, writers must each meet
        # the KMS guard's deadline, not queue one after another behind this lock.
        # Concurrent first loads are safe (load_or_create settles races between replicas).
        # It reloads its keys itself when another replica rotates the index key.
        index = BlindIndex.load(self.storage, self.crypto.kms, self._lookup_bits, clock=self.clock)
        with self._lookup_lock:
            if self._lookup is None:
                self._lookup = index
            return self._lookup

    def new_id(self) -> str:
        """A new random id (records, subjects), from the injected randomness."""
        return new_id(self._random_bytes)

    def index(
        self,
        subject_id: str,
        record_id: str,
        category: str,
        fields: Mapping[str, str],
        version: int,
    ) -> None:
        """Index the values a new record stored as ``version`` (rewrites index in their
        own transaction, Storage.update_record); a no-op once a newer version is stored,
        so a late call cannot put back a replaced value's tags."""
        if category in INDEXED_FIELDS:
            self.lookup_index().index(
                subject_id, record_id, indexed_values(category, fields), version
            )

    # --- subjects -------------------------------------------------------------------

    def create_subject(self) -> SubjectView:
        now = self.clock()
        subject_id = new_id(self._random_bytes)
        # The KMS key id is random and unrelated to the subject id.
        key_id, data_key = self.crypto.new_subject_key()
        info = SubjectKeyInfo(
            subject_id,
            self.tenant,
            SubjectState.ACTIVE,
            key_id,
            data_key.wrapped,
            data_key.key_version,
            now,
            now,
        )
        # Noted first: the audit entry written with the subject's row names it.
        caller_scope.note_subject(subject_id)
        try:
            self.storage.insert_subject(info)
        except OubliError:
            self.crypto.discard_key(key_id)  # no subject row points at it: leave no orphan key
            raise
        self.crypto.cache.put(key_id, data_key.key_version, data_key.plaintext)
        return subject_view(info, 0)

    def subject_info(self, subject_id: str) -> SubjectKeyInfo:
        return self.storage.subject(check_id("subject_id", subject_id))

    def get_subject(self, subject_id: str) -> SubjectView:
        info = self.subject_info(subject_id)
        count = self.storage.record_count(subject_id) if info.state != SubjectState.SHREDDED else 0
        return subject_view(info, count)

    def writable_subject(self, subject_id: str) -> SubjectKeyInfo:
        """The subject, if its records may be written; SubjectShredded otherwise."""
        return writable(self.subject_info(subject_id))

    def open_record(self, info: SubjectKeyInfo, stored: StoredRecord) -> RecordView:
        """Decrypt a stored record (the caller has authorized the read)."""
        return record_view(stored, self.crypto.open(info, stored))

    # --- records --------------------------------------------------------------------

    def new_record(
        self,
        info: SubjectKeyInfo,
        spec: Category,
        record_id: str,
        fields: Mapping[str, str],
        origin: str,
        now: datetime,
        sealers: dict[tuple[str, str, int, str], _Sealer] | None = None,
    ) -> StoredRecord:
        """A new record of ``spec`` (version 1), sealed under the key its retention
        calls for: an expiry bucket's (rolling retention) or the subject's.

        ``sealers``: a batch's memo (one ``now``), so that the records of one subject
        and category share one key lookup, bucket lookup and AES object."""
        slot = (info.subject_id, info.key_id, info.key_version, spec.name)
        sealer = None if sealers is None else sealers.get(slot)
        if sealer is None:
            scheme, bucket_id, retain_until = KeyScheme.SUBJECT, None, None
            if spec.retention.kind is RetentionKind.ROLLING:
                bucket = self._expiry_bucket(spec.name, add_months(now, spec.retention.months))
                scheme, bucket_id = KeyScheme.EXPIRY, bucket.bucket_id
                retain_until = bucket.destroy_at
            seal = self.crypto.sealer(info, scheme, bucket_id)
            sealer = _Sealer(seal, scheme, bucket_id, retain_until)
            if sealers is not None:
                sealers[slot] = sealer
        seal, scheme, bucket_id, retain_until = sealer
        ciphertext = seal(record_id, spec.name, fields)
        return StoredRecord(
            info.subject_id,
            record_id,
            spec.name,
            1,
            ciphertext,
            origin,
            now,
            now,
            scheme,
            bucket_id,
            retain_until,
        )

    def _expiry_bucket(self, category: str, deadline: datetime) -> BucketInfo:
        bucket = self.crypto.buckets.for_deadline(BucketKind.EXPIRY, category, deadline)
        if bucket is None:
            raise FailedPrecondition(
                "RETENTION_OVER", "the retention period of this data is already over"
            )
        return bucket

    def create_record(
        self, subject_id: str, category: str, fields: Mapping[str, str], origin: str
    ) -> RecordView:
        spec = self.catalog.category(category)
        caller_scope.check(category=spec)
        fields = check_fields(fields, spec.fields)
        origin = check_origin(origin)
        record_id = new_id(self._random_bytes)
        singleton = category if spec.cardinality is Cardinality.ONE else None
        for _ in range(3):  # a concurrent re-key changes the subject's key: seal again
            info = self.writable_subject(subject_id)
            authorize_write(spec, info)
            refuse_if_restricted(info)
            try:
                stored = self.new_record(info, spec, record_id, fields, origin, self.clock())
            except KeyDestroyedError:
                if rekeyed_since(self.storage, info):
                    continue
                raise
            try:
                inserted = self.storage.insert_record(stored, singleton, info.key_id)
            except AlreadyExists:
                raise AlreadyExists(
                    f"category {category} holds one record per subject; update it instead",
                    category=category,
                ) from None
            if inserted:
                self.index(subject_id, record_id, category, fields, 1)
                return record_view(stored, fields)
        raise Unavailable("the subject's key kept changing; retry")

    def _stored(self, subject_id: str, record_id: str) -> StoredRecord:
        stored = self.storage.record(subject_id, check_id("record_id", record_id))
        if stored is None:
            raise RecordNotFound("record not found", record_id=record_id)
        return stored

    def get_record(self, subject_id: str, record_id: str, purpose: str) -> RecordView:
        check_id("subject_id", subject_id)
        check_id("record_id", record_id)
        known = self.catalog.purpose(purpose)
        info, stored = self.storage.subject_and_record(subject_id, record_id)
        caller_scope.check(purpose=known)  # the caller's own limits before the catalog's rules
        authorize_subject(self.catalog, purpose, info)  # erased subjects: refused next
        if stored is None:
            raise RecordNotFound("record not found", record_id=record_id)
        spec = self.catalog.category(stored.category)
        caller_scope.check(category=spec)
        authorize_read(self.catalog, spec, purpose, info)
        return self.open_record(info, stored)

    def readable(self, info: SubjectKeyInfo, purpose: str, category: str) -> list[str]:
        caller_scope.check(purpose=self.catalog.purpose(purpose))
        if category:
            spec = self.catalog.category(category)
            caller_scope.check(category=spec)
            authorize_read(self.catalog, spec, purpose, info)
            return [category]
        return caller_scope.within_reach(readable_categories(self.catalog, purpose, info))

    def list_records(
        self,
        subject_id: str,
        category: str = "",
        page_size: int = 0,
        page_token: str = "",
        purpose: str = "",
    ) -> RecordPage:
        limit = check_page_size(page_size)
        if category:
            self.catalog.category(category)
        self.catalog.purpose(purpose)
        if page_token:
            check_id("page_token", page_token)
        info = self.subject_info(subject_id)
        categories = self.readable(info, purpose, category)
        stored = self.storage.records(
            subject_id, categories=categories, after_record_id=page_token, limit=limit + 1
        )
        views = [self.open_record(info, s) for s in stored[:limit]]
        next_token = views[-1].record_id if len(stored) > limit else ""
        return RecordPage(views, next_token)

    def all_records(self, subject_id: str, purpose: str) -> tuple[SubjectKeyInfo, list[RecordView]]:
        """Every record of the subject readable for ``purpose``, decrypted (export)."""
        self.catalog.purpose(purpose)
        info = self.subject_info(subject_id)
        categories = self.readable(info, purpose, "")
        return info, [
            self.open_record(info, s)
            for s in self.storage.records(subject_id, categories=categories)
        ]

    def _writable_record(
        self, subject_id: str, record_id: str
    ) -> tuple[SubjectKeyInfo, StoredRecord]:
        """The subject (writable) and one of its records, read in one statement: the
        record is sealed under the key the subject row names (two reads could straddle
        a re-key and pair the new ciphertext with the old key)."""
        info, stored = self.storage.subject_and_record(
            check_id("subject_id", subject_id), check_id("record_id", record_id)
        )
        writable(info)
        if stored is None:
            raise RecordNotFound("record not found", record_id=record_id)
        return info, stored

    def erases_everywhere(self, category: str, erase_everywhere: bool = False) -> bool:
        """Whether DeleteRecord or UpdateRecord of ``category`` erases the old value from
        every database copy: asked for (``erase_everywhere``), or always for the
        catalog's ``erase_on_change`` categories."""
        return erase_everywhere or self.catalog.category(category).erase_on_change

    def update_record(
        self,
        subject_id: str,
        record_id: str,
        fields: Mapping[str, str],
        expected_version: int,
        origin: str = "",
        *,
        erase_everywhere: bool = False,
    ) -> RecordView:
        """Rectify a record. With ``erase_everywhere`` (always for ``erase_on_change``
        categories) the replaced value is erased from every database copy: the rewrite
        commits with the subject's move to a new key, the old key is then destroyed
        (:meth:`Rekeying.erase_record`)."""
        if expected_version < 1:
            raise InvalidArgument("expected_version", "expected_version must be >= 1")
        # A failed compare-and-set reads again: a concurrent update shows as a version
        # conflict, an erasure as SUBJECT_SHREDDED, a re-key means sealing again.
        for _ in range(REWRITE_ATTEMPTS):
            info, current = self._writable_record(subject_id, record_id)
            spec = self.catalog.category(current.category)
            caller_scope.check(category=spec)
            checked = check_fields(fields, spec.fields)
            new_origin = check_origin(origin) if origin else current.origin
            authorize_write(spec, info)
            erasing = self.erases_everywhere(spec.name, erase_everywhere)
            try:
                if current.version != expected_version:
                    raise VersionConflict(
                        "record was changed since it was read",
                        current_version=str(current.version),
                    )
                if erasing:
                    return self._rectify_everywhere(
                        spec,
                        current,
                        checked,
                        expected_version,
                        check_origin(origin) if origin else "",
                    )
            except VersionConflict:
                if erasing:
                    # Perhaps the retry of an erasing update that committed and then
                    # failed to destroy the old key (KMS outage, crash): destroy it now.
                    self.rekeying.destroy_retired_keys(current.subject_id)
                raise
            view = self._rewrite(info, current, checked, new_origin)
            if view is not None:
                return view
        raise Unavailable("the subject's key kept changing; retry")

    def _rectify_everywhere(
        self,
        spec: Category,
        current: StoredRecord,
        fields: Mapping[str, str],
        expected_version: int,
        origin: str,
    ) -> RecordView:
        """UpdateRecord through the re-key: the new content written at
        ``expected_version`` + 1 in the transaction that moves the subject to a new key
        (the blind-index rows replaced there too), then the old key destroyed. An empty
        ``origin`` keeps the record's."""

        def erase(tags: GenerationTags | None) -> StoredRecord | None:
            return self.rekeying.erase_record(
                current.subject_id,
                RecordChange(
                    current.record_id,
                    fields,
                    expected_version,
                    origin,
                    tags,
                    # The consent as each try reads the subject (a withdrawal may commit
                    # first).
                    check=lambda info, _: authorize_write(spec, info),
                ),
            )

        # The index rows are replaced in the re-key's transaction, under every live index
        # key generation (the whole erasure tried again if another replica rotated).
        stored = (
            self.lookup_index().write(indexed_values(spec.name, fields), erase)
            if spec.name in INDEXED_FIELDS
            else erase(None)
        )
        assert stored is not None
        return record_view(stored, fields)

    def _rewrite(
        self,
        info: SubjectKeyInfo,
        current: StoredRecord,
        fields: Mapping[str, str],
        origin: str,
        *,
        scheme: KeyScheme | None = None,
        bucket_id: str | None = None,
        retain_until: datetime | None = None,
    ) -> RecordView | None:
        """Seal ``fields`` and write them over ``current`` if the row and the subject's
        key are still as read; None, with nothing written, otherwise (read again)."""
        scheme = scheme or current.key_scheme
        if bucket_id is None:
            bucket_id, retain_until = current.bucket_id, current.retain_until
        ciphertext = self.crypto.seal(
            info, current.record_id, current.category, fields, scheme, bucket_id
        )
        now = self.clock()
        updated = replace(
            current,
            version=current.version + 1,
            ciphertext=ciphertext,
            origin=origin,
            updated_at=now,
            key_scheme=scheme,
            bucket_id=bucket_id,
            retain_until=retain_until,
        )
        # The index rows change in the record's own transaction, under every live
        # index key generation (written again if another replica rotated meanwhile).
        if current.category in INDEXED_FIELDS:
            written = self.lookup_index().write(
                indexed_values(current.category, fields),
                lambda tags: self.storage.update_record(updated, current, info.key_id, tags),
            )
        else:
            written = self.storage.update_record(updated, current, info.key_id)
        if not written:
            return None
        return record_view(updated, fields)

    def delete_record(
        self, subject_id: str, record_id: str, *, erase_everywhere: bool = False
    ) -> bool:
        """Delete a record. With ``erase_everywhere`` (always for ``erase_on_change``
        categories) the value is erased from every database copy: the delete commits
        with the subject's move to a new key, the old key is then destroyed. Returns
        whether it was (the old key is destroyed)."""
        self.writable_subject(subject_id)
        try:
            category = self._stored(subject_id, record_id).category
            spec = self.catalog.category(category)
            caller_scope.check(category=spec)
            caller_scope.note(category)
            if self.erases_everywhere(category, erase_everywhere):
                self.rekeying.erase_record(subject_id, RecordChange(record_id))
                return True
            if not self.storage.delete_record(subject_id, record_id):
                raise RecordNotFound("record not found", record_id=record_id)
            return False
        except RecordNotFound:
            # Perhaps the retry of an erasing delete that committed and then failed to
            # destroy the old key (KMS outage, crash): destroy it now. Only subjects
            # that were re-keyed have keys to destroy again.
            self.rekeying.destroy_retired_keys(subject_id)
            raise

    def record_event(self, subject_id: str, record_id: str, event: str) -> RecordView:
        """Record an event that starts a record's retention clock (a ticket resolved).

        The record is re-encrypted under the expiry bucket of its new deadline, so the
        retention job destroys it with the bucket's key. Returns the record's metadata
        only (``fields`` empty): starting a retention clock is not a read, and its
        callers (support resolving a ticket) may have no right to the content.
        """
        for _ in range(REWRITE_ATTEMPTS):  # as update_record: read again after a failed write
            info, current = self._writable_record(subject_id, record_id)
            spec = self.catalog.category(current.category)
            caller_scope.check(category=spec)
            rule = spec.retention
            if rule.kind is not RetentionKind.AFTER_EVENT or rule.event != event:
                raise InvalidArgument("event", "this category's retention does not use that event")
            if current.key_scheme != KeyScheme.SUBJECT:
                raise FailedPrecondition("EVENT_ALREADY_RECORDED", "the event was already recorded")
            refuse_if_restricted(info)
            bucket = self._expiry_bucket(current.category, add_months(self.clock(), rule.months))
            fields = decrypt_current(self.storage, self.crypto, info, current)
            if fields is None:
                continue  # re-keyed since the read: read again
            view = self._rewrite(
                info,
                current,
                fields,
                current.origin,
                scheme=KeyScheme.EXPIRY,
                bucket_id=bucket.bucket_id,
                retain_until=bucket.destroy_at,
            )
            if view is not None:
                return replace(view, fields={})
        raise Unavailable("the subject's key kept changing; retry")

    # --- account lifecycle ----------------------------------------------------------

    def close_account(self, subject_id: str) -> SubjectView:
        """Record the account's closure; its erasure is scheduled (6 months by default)."""
        now = self.clock()
        months = self.catalog.settings.closed_account_erasure_months
        erase_at = add_months(now, months)
        if not self.storage.close_account(check_id("subject_id", subject_id), now, erase_at):
            self._refuse_transition(subject_id, "ACCOUNT_NOT_OPEN", "the account is not open")
        return self.get_subject(subject_id)

    def reopen_account(self, subject_id: str) -> SubjectView:
        """Undo a closure before its scheduled erasure."""
        if not self.storage.reopen_account(check_id("subject_id", subject_id), self.clock()):
            self._refuse_transition(subject_id, "ACCOUNT_NOT_CLOSED", "the account is not closed")
        return self.get_subject(subject_id)

    def _refuse_transition(self, subject_id: str, reason: str, message: str) -> None:
        self.writable_subject(subject_id)
        raise FailedPrecondition(reason, message)
