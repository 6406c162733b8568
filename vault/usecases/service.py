"""The vault's domain: subjects, their records, erasure, retention keys and export.

Plain Python, no gRPC: the servicers in vault.api only convert messages. Every
operation reads the subject's state from the database first, so a subject shredded
through any replica is refused by all of them at once; DEKs come from the in-process
cache when possible (zero KMS calls), else one unwrap. Reads state a purpose, checked
against the catalog and the subject's objections, consents and restriction
(vault.usecases.purpose_check).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.base import DataKey, KeyManager, KmsError
from vault.access import caller_scope
from vault.catalog import Cardinality, Catalog, Category, RetentionKind
from vault.clock import Clock, utc_now
from vault.crypto.blind_index import (
    DEFAULT_BITS,
    INDEXED_FIELDS,
    BlindIndex,
    IndexKeyStore,
    indexed_values,
)
from vault.crypto.bucket_keys import (
    EXPIRY,
    HOLD,
    BucketKeys,
    add_months,
    expiry_record_key,
    hold_record_key,
)
from vault.crypto.envelope import RecordCipher, RecordPlace, decode_fields, key_version_of
from vault.crypto.keycache import DataKeyCache
from vault.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityFailure,
    InvalidArgument,
    KeyDestroyedError,
    OubliError,
    RecordNotFound,
    SubjectShredded,
    Unavailable,
    VersionConflict,
    kms_error,
)
from vault.ids import RandomBytes, check_id, new_id
from vault.limits import check_fields, check_origin, check_page_size
from vault.storage import BucketInfo, Receipt, RecordLike, Storage, StoredRecord, SubjectKeyInfo
from vault.usecases.purpose_check import (
    authorize_read,
    authorize_subject,
    authorize_write,
    readable_categories,
    refuse_if_restricted,
)
from vault.vocabulary import (
    ACTIVE,
    HELD,
    SCHEME_EXPIRY,
    SCHEME_HOLD,
    SCHEME_SUBJECT,
    SHREDDED,
    WRITABLE,
)

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

#: Tries of a rewrite (UpdateRecord, RecordEvent) whose compare-and-set found the
#: subject's key changed by a re-key: each seals again under the key read anew.
REWRITE_ATTEMPTS = 3
#: Tries of a re-key that found records written meanwhile; the new key is reused, so a
#: try costs a read and local re-encryption, no KMS call.
REKEY_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class SubjectView:
    subject_id: str
    state: str
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
class ShredReceipt:
    subject_id: str
    key_id: str
    shredded_at: datetime
    records_deleted: int
    kms_backend: str
    residual_risk: str
    residual_copies_expire_at: datetime
    records_retained: int = 0
    retained_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecordPage:
    records: list[RecordView]
    next_page_token: str


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
    """Create, read, rectify, delete, export, retain and shred personal data."""

    def __init__(
        self,
        storage: Storage,
        kms: KeyManager,
        catalog: Catalog,
        *,
        tenant: str = "default",
        cache: DataKeyCache | None = None,
        clock: Clock = utc_now,
        random_bytes: RandomBytes = os.urandom,
        kms_backup_retention: timedelta = timedelta(days=7),
        lookup_bits: int = DEFAULT_BITS,
    ) -> None:
        self.storage = storage
        self.kms = kms
        self.catalog = catalog
        self.tenant = tenant
        self.cache = cache if cache is not None else DataKeyCache()
        self.clock = clock
        self._random_bytes = random_bytes
        self._kms_backup_retention = kms_backup_retention
        self._cipher = RecordCipher(random_bytes)
        self.buckets = BucketKeys(storage, kms, self.cache, clock, random_bytes, kms_error)
        self._lookup_bits = lookup_bits
        self._lookup: BlindIndex | None = None
        self._lookup_lock = threading.Lock()

    def lookup_index(self) -> BlindIndex:
        """The blind index (e-mail, phone), its key unwrapped once and kept in memory."""
        found = self._lookup
        if found is not None:
            return found
        # The KMS call runs outside the lock: with a hung KMS, writers must each meet
        # the KMS guard's deadline, not queue one after another behind this lock.
        # Concurrent first loads are safe (load_or_create settles races between replicas).
        key = IndexKeyStore(self.storage, clock=self.clock).load_or_create(self.kms)
        with self._lookup_lock:
            if self._lookup is None:
                self._lookup = BlindIndex(self.storage, key, self._lookup_bits)
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
        key_id, data_key = self._new_subject_key()
        info = SubjectKeyInfo(
            subject_id,
            self.tenant,
            ACTIVE,
            key_id,
            data_key.wrapped,
            data_key.key_version,
            now,
            now,
        )
        try:
            self.storage.insert_subject(info)
        except OubliError:
            self._discard_key(key_id)  # no subject row points at it: leave no orphan key
            raise
        self.cache.put(key_id, data_key.key_version, data_key.plaintext)
        caller_scope.note_subject(subject_id)
        return subject_view(info, 0)

    def _new_subject_key(self) -> tuple[str, DataKey]:
        key_id = new_id(self._random_bytes)
        try:
            self.kms.create_key(key_id)
            return key_id, self.kms.generate_data_key(key_id)
        except KmsError as e:
            self._discard_key(key_id)
            raise kms_error(e) from e

    def _discard_key(self, key_id: str) -> None:
        with contextlib.suppress(KmsError):  # best effort: an unused key protects nothing
            self.kms.destroy_key(key_id)

    def subject_info(self, subject_id: str) -> SubjectKeyInfo:
        return self.storage.subject(check_id("subject_id", subject_id))

    def get_subject(self, subject_id: str) -> SubjectView:
        info = self.subject_info(subject_id)
        count = self.storage.record_count(subject_id) if info.state != SHREDDED else 0
        return subject_view(info, count)

    def writable_subject(self, subject_id: str) -> SubjectKeyInfo:
        info = self.subject_info(subject_id)
        if info.state not in WRITABLE or info.wrapped_dek is None:
            raise SubjectShredded("the subject was erased", subject_id=subject_id)
        return info

    # --- keys -----------------------------------------------------------------------

    def subject_dek(self, info: SubjectKeyInfo, key_version: int | None = None) -> bytes:
        version = info.key_version if key_version is None else key_version
        cached = self.cache.get(info.key_id, version)
        if cached is not None:
            return cached
        if version != info.key_version or info.wrapped_dek is None:
            raise IntegrityFailure("ciphertext names a key version the subject does not have")
        try:
            dek = self.kms.unwrap(info.key_id, info.wrapped_dek)
        except KmsError as e:
            raise kms_error(e) from e
        self.cache.put(info.key_id, version, dek)
        return dek

    def _record_key(
        self, info: SubjectKeyInfo, scheme: str, bucket_id: str | None, key_version: int
    ) -> bytes:
        if scheme == SCHEME_SUBJECT:
            return self.subject_dek(info, key_version)
        bucket = self.buckets.get(bucket_id or "")
        if bucket is None:
            raise KeyDestroyedError("the record's retention period is over: its key is destroyed")
        bucket_dek = self.buckets.dek(bucket)
        if scheme == SCHEME_HOLD:
            return hold_record_key(bucket_dek, bucket.bucket_id, info.subject_id)
        subject_dek = self.subject_dek(info, key_version)
        return expiry_record_key(subject_dek, bucket_dek, bucket.bucket_id, info.subject_id)

    def _place(
        self, info: SubjectKeyInfo, record_id: str, category: str, scheme: str, bucket: str | None
    ) -> RecordPlace:
        return RecordPlace(info.tenant, info.subject_id, record_id, category, scheme, bucket or "")

    def seal(
        self,
        info: SubjectKeyInfo,
        record_id: str,
        category: str,
        fields: Mapping[str, str],
        scheme: str,
        bucket_id: str | None,
    ) -> bytes:
        key = self._record_key(info, scheme, bucket_id, info.key_version)
        place = self._place(info, record_id, category, scheme, bucket_id)
        caller_scope.note(category, fields)
        return self._cipher.seal(key, info.key_version, place, fields)

    def _decrypt(self, info: SubjectKeyInfo, stored: StoredRecord) -> dict[str, str]:
        key = self._record_key(
            info, stored.key_scheme, stored.bucket_id, key_version_of(stored.ciphertext)
        )
        place = self._place(
            info, stored.record_id, stored.category, stored.key_scheme, stored.bucket_id
        )
        return self._cipher.open(key, place, stored.ciphertext)

    def open_page(
        self, info: SubjectKeyInfo, page: Sequence[RecordLike]
    ) -> Iterator[tuple[RecordLike, str]]:
        """Decrypt a page of one subject's records (the caller has authorized the read):
        each record with its fields' canonical JSON, checked to be a map of strings.

        Keys and AES objects are resolved once per (scheme, bucket, key version) of the
        page rather than per record: exports open hundreds of thousands of records.
        """
        aeads: dict[tuple[str, str | None, int], AESGCM] = {}
        names: set[str] = set()
        category = ""
        for stored in page:
            version = key_version_of(stored.ciphertext)
            slot = (stored.key_scheme, stored.bucket_id, version)
            aead = aeads.get(slot)
            if aead is None:
                aead = aeads[slot] = AESGCM(
                    self._record_key(info, stored.key_scheme, stored.bucket_id, version)
                )
            place = self._place(
                info, stored.record_id, stored.category, stored.key_scheme, stored.bucket_id
            )
            plaintext = self._cipher.open_plaintext(aead, place, stored.ciphertext)
            names.update(decode_fields(plaintext))
            if category and stored.category != category:
                caller_scope.note(category, names)
                names = set()
            category = stored.category
            yield stored, plaintext.decode("utf-8")
        if category:
            caller_scope.note(category, names)

    def open_record(self, info: SubjectKeyInfo, stored: StoredRecord) -> RecordView:
        """Decrypt a stored record (the caller has authorized the read)."""
        return self._open(info, stored)

    def _open(self, info: SubjectKeyInfo, stored: StoredRecord) -> RecordView:
        fields = self._decrypt(info, stored)
        caller_scope.note(stored.category, fields)
        return RecordView(
            stored.subject_id,
            stored.record_id,
            stored.category,
            fields,
            stored.version,
            stored.origin,
            stored.created_at,
            stored.updated_at,
            stored.retain_until,
        )

    # --- records --------------------------------------------------------------------

    def placement(self, spec: Category, now: datetime) -> tuple[str, str | None, datetime | None]:
        """Key scheme, bucket and deadline for a new record of ``spec``."""
        if spec.retention.kind is RetentionKind.ROLLING:
            deadline = add_months(now, spec.retention.months)
            bucket = self._expiry_bucket(spec.name, deadline)
            return SCHEME_EXPIRY, bucket.bucket_id, bucket.destroy_at
        return SCHEME_SUBJECT, None, None

    def _expiry_bucket(self, category: str, deadline: datetime) -> BucketInfo:
        bucket = self.buckets.for_deadline(EXPIRY, category, deadline)
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
            now = self.clock()
            scheme, bucket_id, retain_until = self.placement(spec, now)
            try:
                ciphertext = self.seal(info, record_id, category, fields, scheme, bucket_id)
            except KeyDestroyedError:
                if self.rekeyed_since(info):
                    continue
                raise
            stored = StoredRecord(
                subject_id,
                record_id,
                category,
                1,
                ciphertext,
                origin,
                now,
                now,
                scheme,
                bucket_id,
                retain_until,
            )
            try:
                inserted = self.storage.insert_record(stored, singleton, info.key_id)
            except AlreadyExists:
                raise AlreadyExists(
                    f"category {category} holds one record per subject; update it instead",
                    category=category,
                ) from None
            if inserted:
                self.index(subject_id, record_id, category, fields, 1)
                return RecordView(
                    subject_id, record_id, category, fields, 1, origin, now, now, retain_until
                )
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
        return self._open(info, stored)

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
        views = [self._open(info, s) for s in stored[:limit]]
        next_token = views[-1].record_id if len(stored) > limit else ""
        return RecordPage(views, next_token)

    def all_records(self, subject_id: str, purpose: str) -> tuple[SubjectKeyInfo, list[RecordView]]:
        """Every record of the subject readable for ``purpose``, decrypted (export)."""
        self.catalog.purpose(purpose)
        info = self.subject_info(subject_id)
        categories = self.readable(info, purpose, "")
        return info, [
            self._open(info, s) for s in self.storage.records(subject_id, categories=categories)
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
        if info.state not in WRITABLE or info.wrapped_dek is None:
            raise SubjectShredded("the subject was erased", subject_id=subject_id)
        if stored is None:
            raise RecordNotFound("record not found", record_id=record_id)
        return info, stored

    def rekeyed_since(self, info: SubjectKeyInfo) -> bool:
        """For a write that met KeyDestroyedError on ``info``'s key: whether a re-key
        moved the subject to another key since ``info`` was read (read again and seal
        anew). Raises SubjectShredded if an erasure started meanwhile, which is what
        destroyed the key then."""
        return self.writable_subject(info.subject_id).key_id != info.key_id

    def _decrypt_current(self, info: SubjectKeyInfo, stored: StoredRecord) -> dict[str, str] | None:
        """Decrypt a record about to be rewritten; None when a re-key committed since
        ``info`` was read and destroyed its key (the caller reads again)."""
        try:
            return self._decrypt(info, stored)
        except KeyDestroyedError:
            if self.rekeyed_since(info):
                return None
            raise

    def update_record(
        self,
        subject_id: str,
        record_id: str,
        fields: Mapping[str, str],
        expected_version: int,
        origin: str = "",
    ) -> RecordView:
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
            if current.version != expected_version:
                raise VersionConflict(
                    "record was changed since it was read", current_version=str(current.version)
                )
            view = self._rewrite(info, current, checked, new_origin)
            if view is not None:
                return view
        raise Unavailable("the subject's key kept changing; retry")

    def _rewrite(
        self,
        info: SubjectKeyInfo,
        current: StoredRecord,
        fields: Mapping[str, str],
        origin: str,
        *,
        scheme: str | None = None,
        bucket_id: str | None = None,
        retain_until: datetime | None = None,
    ) -> RecordView | None:
        """Seal ``fields`` and write them over ``current`` if the row and the subject's
        key are still as read; None, with nothing written, otherwise (read again)."""
        scheme = scheme or current.key_scheme
        if bucket_id is None:
            bucket_id, retain_until = current.bucket_id, current.retain_until
        ciphertext = self.seal(info, current.record_id, current.category, fields, scheme, bucket_id)
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
        # The index rows change in the record's own transaction.
        tags = (
            self.lookup_index().tags(indexed_values(current.category, fields))
            if current.category in INDEXED_FIELDS
            else None
        )
        if not self.storage.update_record(updated, current, info.key_id, tags):
            return None
        return RecordView(
            info.subject_id,
            current.record_id,
            current.category,
            dict(fields),
            updated.version,
            origin,
            current.created_at,
            now,
            retain_until,
        )

    def delete_record(self, subject_id: str, record_id: str) -> None:
        self.writable_subject(subject_id)
        category = self._stored(subject_id, record_id).category
        caller_scope.check(category=self.catalog.category(category))
        caller_scope.note(category)
        if not self.storage.delete_record(subject_id, check_id("record_id", record_id)):
            raise RecordNotFound("record not found", record_id=record_id)

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
            if current.key_scheme != SCHEME_SUBJECT:
                raise FailedPrecondition("EVENT_ALREADY_RECORDED", "the event was already recorded")
            refuse_if_restricted(info)
            bucket = self._expiry_bucket(current.category, add_months(self.clock(), rule.months))
            fields = self._decrypt_current(info, current)
            if fields is None:
                continue  # re-keyed since the read: read again
            view = self._rewrite(
                info,
                current,
                fields,
                current.origin,
                scheme=SCHEME_EXPIRY,
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
        info = self.subject_info(subject_id)
        if info.state not in WRITABLE:
            raise SubjectShredded("the subject was erased", subject_id=subject_id)
        raise FailedPrecondition(reason, message)

    # --- erasure --------------------------------------------------------------------

    def shred_subject(self, subject_id: str) -> ShredReceipt:
        """Erase a subject by destroying its key, keeping only what the law requires.

        1. mark the subject ``shredding`` (committed: every replica refuses it from now);
        2. re-encrypt records of legal-hold categories (invoices) under the hold bucket
           of their deadline (closure, or now, plus the hold period) — one transaction;
        3. destroy the subject's KMS key (idempotent);
        4. in one transaction: delete every other record, drop the wrapped DEK, mark the
           subject ``held`` (legal records remain) or ``shredded``, write the receipt
           and the key ledger.

        A crash or outage after step 1 leaves the subject refused; calling again (or the
        retention job) completes the remaining steps. On an erased subject it returns
        the receipt.
        """
        info = self.subject_info(subject_id)
        if info.state in (HELD, SHREDDED):
            existing = self.storage.receipt(subject_id)
            if existing is None:  # pragma: no cover - finish_shred writes both at once
                raise IntegrityFailure("erased subject without a receipt")
            return self.receipt_view(existing)
        if info.state in WRITABLE:
            self.storage.mark_shredding(subject_id, self.clock())
            # Read again: a re-key that committed just before the mark moved the subject
            # to a new key, and that is the key to destroy. From here on it cannot change.
            info = self.subject_info(subject_id)
        self._hold_legal_records(info)
        self.destroy_key(info.key_id)
        held = self.storage.records(subject_id, scheme=SCHEME_HOLD)
        buckets = [b for b in (self.buckets.get(r.bucket_id or "") for r in held) if b]
        last = max(buckets, key=lambda b: b.destroy_at, default=None)
        receipt = self.storage.finish_shred(
            subject_id,
            self.kms.backend_name,
            self.clock(),
            hold_bucket_id=last.bucket_id if last else None,
            hold_until=last.destroy_at if last else None,
        )
        return self.receipt_view(receipt)

    def _hold_legal_records(self, info: SubjectKeyInfo) -> None:
        legal = {
            name: spec
            for name, spec in self.catalog.categories.items()
            if spec.retention.kind is RetentionKind.LEGAL_HOLD
        }
        pending = self.storage.records(
            info.subject_id, categories=sorted(legal), scheme=SCHEME_SUBJECT
        )
        if not pending:
            return
        closure = info.closed_at or self.clock()
        for _ in range(REWRITE_ATTEMPTS):
            moved: list[StoredRecord] = []
            for stored in pending:
                rule = legal[stored.category].retention
                bucket = self.buckets.for_deadline(
                    HOLD, stored.category, add_months(closure, rule.months)
                )
                if bucket is None:
                    continue  # the hold period is already over: it goes with the rest
                try:
                    fields = self._decrypt(info, stored)
                except KeyDestroyedError:
                    # The subject's key is gone already (e.g. this database was restored
                    # from before an earlier erasure): nothing can be held, nothing is left.
                    return
                ciphertext = self.seal(
                    info, stored.record_id, stored.category, fields, SCHEME_HOLD, bucket.bucket_id
                )
                moved.append(
                    replace(
                        stored,
                        ciphertext=ciphertext,
                        key_scheme=SCHEME_HOLD,
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
                info.subject_id, categories=sorted(legal), scheme=SCHEME_SUBJECT
            )
        raise Unavailable("the subject's records kept changing during erasure; retry")

    def receipt_view(self, receipt: Receipt) -> ShredReceipt:
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
        )

    def rekey(
        self,
        subject_id: str,
        drop_categories: Sequence[str] = (),
        *,
        withdrawn_consent: str | None = None,
    ) -> int:
        """Move a subject to a new KMS key and destroy the old one.

        Records of ``drop_categories`` are deleted, every other record is re-encrypted
        under the new key: afterwards no copy of the database, backups included, can
        yield the dropped records. ``withdrawn_consent`` leaves the subject's consents
        in the same transaction. Returns how many records were dropped.
        """
        new_key: tuple[str, DataKey] | None = None
        try:
            for _ in range(REKEY_ATTEMPTS):
                # Subject and records read together: every record is under info's key.
                info, records = self.storage.subject_with_records(subject_id)
                if info.state not in WRITABLE or info.wrapped_dek is None:
                    raise SubjectShredded("the subject was erased", subject_id=subject_id)
                if new_key is None:
                    new_key = self._new_subject_key()
                    self.cache.put(new_key[0], new_key[1].key_version, new_key[1].plaintext)
                key_id, data_key = new_key
                new_info = replace(
                    info,
                    key_id=key_id,
                    wrapped_dek=data_key.wrapped,
                    key_version=data_key.key_version,
                )
                dropped = [r.record_id for r in records if r.category in drop_categories]
                kept = self._reseal(info, new_info, records, drop_categories)
                if kept is not None and self.storage.rekey(
                    subject_id,
                    info.key_id,
                    key_id,
                    data_key.wrapped,
                    data_key.key_version,
                    kept,
                    dropped,
                    self.clock(),
                    withdrawn_consent=withdrawn_consent,
                ):
                    new_key = None  # in use now: not to be discarded
                    break
            else:
                raise Unavailable("the subject kept changing during re-keying; retry")
        finally:
            if new_key is not None:  # never committed: leave no orphan key
                self.cache.evict(new_key[0])
                self._discard_key(new_key[0])
        self.destroy_key(info.key_id)  # in the ledger: a retry or reconcile destroys it later
        return len(dropped)

    def _reseal(
        self,
        info: SubjectKeyInfo,
        new_info: SubjectKeyInfo,
        records: Sequence[StoredRecord],
        drop_categories: Sequence[str],
    ) -> list[StoredRecord] | None:
        """The records not dropped, sealed under ``new_info``'s key, each keeping the
        version, scheme and bucket it was read with (Storage.rekey writes nothing if any
        changed meanwhile); None when another re-key destroyed ``info``'s key since."""
        kept: list[StoredRecord] = []
        for r in records:
            if r.category in drop_categories:
                continue
            fields = self._decrypt_current(info, r)
            if fields is None:
                return None
            ciphertext = self.seal(
                new_info, r.record_id, r.category, fields, r.key_scheme, r.bucket_id
            )
            kept.append(replace(r, ciphertext=ciphertext))
        return kept

    def destroy_key(self, key_id: str) -> None:
        """Destroy a KMS key (subject, retired or bucket key): its DEK leaves this
        process's cache first, and a KMS failure becomes a domain error. Idempotent.

        Raises:
            Unavailable, KmsRefused: the KMS could not destroy it (safe to retry).
        """
        self.cache.evict(key_id)
        try:
            self.kms.destroy_key(key_id)
        except KmsError as e:
            raise kms_error(e) from e

    def destroy_retired_keys(self, subject_id: str) -> None:
        """Destroy (again) every key the ledger lists for this subject; idempotent."""
        self._destroy_ledger_keys(subject_id)

    def _destroy_ledger_keys(self, subject_id: str | None = None) -> int:
        key_ids = self.storage.ledger_key_ids(subject_id)
        for key_id in key_ids:
            self.destroy_key(key_id)
        return len(key_ids)

    def reconcile_shreds(self) -> int:
        """Destroy again every key in the key ledger; returns how many were checked.

        Run after restoring a KMS backup (Vault snapshot, keystore file copy) and before
        serving traffic: the restore brought back keys destroyed since the backup was
        taken. Destroying is idempotent, so running it twice is harmless.
        """
        return self._destroy_ledger_keys()
