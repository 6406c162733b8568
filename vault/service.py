"""The vault's domain: subjects, their records, shredding and export.

Plain Python, no gRPC: the servicers in vault.grpc_api only convert messages. Every
operation reads the subject's state from the database first, so a subject shredded
through any replica is refused by all of them at once; DEKs come from the in-process
cache when possible (zero KMS calls), else one unwrap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from kms.base import KeyDestroyed, KeyManager, KmsAccessDenied, KmsError, KmsUnavailable
from vault.catalog import Cardinality, Catalog
from vault.clock import Clock, utc_now
from vault.envelope import RecordCipher, RecordPlace, key_version_of
from vault.errors import (
    AlreadyExists,
    IntegrityFailure,
    InvalidArgument,
    KeyDestroyedError,
    KmsRefused,
    OubliError,
    RecordNotFound,
    SubjectShredded,
    Unavailable,
    VersionConflict,
)
from vault.ids import RandomBytes, check_id, new_id
from vault.keycache import DataKeyCache
from vault.limits import check_fields, check_origin, check_page_size
from vault.storage import (
    ACTIVE,
    SHREDDED,
    Receipt,
    Storage,
    StoredRecord,
    SubjectKeyInfo,
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


@dataclass(frozen=True, slots=True)
class SubjectView:
    subject_id: str
    state: str
    created_at: datetime
    updated_at: datetime
    record_count: int


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


@dataclass(frozen=True, slots=True)
class ShredReceipt:
    subject_id: str
    key_id: str
    shredded_at: datetime
    records_deleted: int
    kms_backend: str
    residual_risk: str
    residual_copies_expire_at: datetime


@dataclass(frozen=True, slots=True)
class RecordPage:
    records: list[RecordView]
    next_page_token: str


def _kms_error(error: KmsError) -> OubliError:
    if isinstance(error, KmsUnavailable):
        return Unavailable("key management service unavailable; safe to retry")
    if isinstance(error, KmsAccessDenied):
        return KmsRefused("the key management service refused oubli's credentials")
    if isinstance(error, KeyDestroyed):
        return KeyDestroyedError("the subject's key is destroyed: its data is unrecoverable")
    return IntegrityFailure("the key management service refused the subject's data key")


class VaultService:
    """Create, read, rectify, delete, export and shred personal data."""

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
    ) -> None:
        self.storage = storage
        self.kms = kms
        self.catalog = catalog
        self.tenant = tenant
        self.cache = cache if cache is not None else DataKeyCache()
        self._clock = clock
        self._random_bytes = random_bytes
        self._kms_backup_retention = kms_backup_retention
        self._cipher = RecordCipher(random_bytes)

    # --- subjects -------------------------------------------------------------------

    def create_subject(self) -> SubjectView:
        now = self._clock()
        subject_id = new_id(self._random_bytes)
        # The KMS key id is random and unrelated to the subject id.
        key_id = new_id(self._random_bytes)
        try:
            self.kms.create_key(key_id)
            data_key = self.kms.generate_data_key(key_id)
        except KmsError as e:
            self._discard_key(key_id)
            raise _kms_error(e) from e
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
        return SubjectView(subject_id, ACTIVE, now, now, 0)

    def _discard_key(self, key_id: str) -> None:
        with contextlib.suppress(KmsError):  # best effort: an unused key protects nothing
            self.kms.destroy_key(key_id)

    def get_subject(self, subject_id: str) -> SubjectView:
        info = self.storage.subject(check_id("subject_id", subject_id))
        count = self.storage.record_count(subject_id) if info.state == ACTIVE else 0
        return SubjectView(info.subject_id, info.state, info.created_at, info.updated_at, count)

    def _active_subject(self, subject_id: str) -> SubjectKeyInfo:
        info = self.storage.subject(check_id("subject_id", subject_id))
        if info.state != ACTIVE or info.wrapped_dek is None:
            raise SubjectShredded("the subject was erased", subject_id=subject_id)
        return info

    def _dek(self, info: SubjectKeyInfo, key_version: int | None = None) -> bytes:
        version = info.key_version if key_version is None else key_version
        cached = self.cache.get(info.key_id, version)
        if cached is not None:
            return cached
        if version != info.key_version or info.wrapped_dek is None:
            raise IntegrityFailure("ciphertext names a key version the subject does not have")
        try:
            dek = self.kms.unwrap(info.key_id, info.wrapped_dek)
        except KmsError as e:
            raise _kms_error(e) from e
        self.cache.put(info.key_id, version, dek)
        return dek

    def _place(self, info: SubjectKeyInfo, record_id: str, category: str) -> RecordPlace:
        return RecordPlace(info.tenant, info.subject_id, record_id, category)

    def _open(self, info: SubjectKeyInfo, stored: StoredRecord) -> RecordView:
        dek = self._dek(info, key_version_of(stored.ciphertext))
        fields = self._cipher.open(
            dek, self._place(info, stored.record_id, stored.category), stored.ciphertext
        )
        return RecordView(
            stored.subject_id,
            stored.record_id,
            stored.category,
            fields,
            stored.version,
            stored.origin,
            stored.created_at,
            stored.updated_at,
        )

    # --- records --------------------------------------------------------------------

    def create_record(
        self, subject_id: str, category: str, fields: Mapping[str, str], origin: str
    ) -> RecordView:
        spec = self.catalog.category(category)
        fields = check_fields(fields, spec.fields)
        origin = check_origin(origin)
        info = self._active_subject(subject_id)
        dek = self._dek(info)
        record_id = new_id(self._random_bytes)
        ciphertext = self._cipher.seal(
            dek, info.key_version, self._place(info, record_id, category), fields
        )
        now = self._clock()
        stored = StoredRecord(subject_id, record_id, category, 1, ciphertext, origin, now, now)
        singleton = category if spec.cardinality is Cardinality.ONE else None
        try:
            inserted = self.storage.insert_record(stored, singleton)
        except AlreadyExists:
            raise AlreadyExists(
                f"category {category} holds one record per subject; update it instead",
                category=category,
            ) from None
        if not inserted:  # shredded between the state check and the write
            raise SubjectShredded("the subject was erased", subject_id=subject_id)
        return RecordView(subject_id, record_id, category, fields, 1, origin, now, now)

    def _stored(self, subject_id: str, record_id: str) -> StoredRecord:
        stored = self.storage.record(subject_id, check_id("record_id", record_id))
        if stored is None:
            raise RecordNotFound("record not found", record_id=record_id)
        return stored

    def get_record(self, subject_id: str, record_id: str) -> RecordView:
        info = self._active_subject(subject_id)
        return self._open(info, self._stored(subject_id, record_id))

    def list_records(
        self, subject_id: str, category: str = "", page_size: int = 0, page_token: str = ""
    ) -> RecordPage:
        limit = check_page_size(page_size)
        if category:
            self.catalog.category(category)
        if page_token:
            check_id("page_token", page_token)
        info = self._active_subject(subject_id)
        stored = self.storage.records(
            subject_id, category=category or None, after_record_id=page_token, limit=limit + 1
        )
        views = [self._open(info, s) for s in stored[:limit]]
        next_token = views[-1].record_id if len(stored) > limit else ""
        return RecordPage(views, next_token)

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
        info = self._active_subject(subject_id)
        current = self._stored(subject_id, record_id)
        spec = self.catalog.category(current.category)
        fields = check_fields(fields, spec.fields)
        origin = check_origin(origin) if origin else current.origin
        if current.version != expected_version:
            raise VersionConflict(
                "record was changed since it was read",
                current_version=str(current.version),
            )
        dek = self._dek(info)
        ciphertext = self._cipher.seal(
            dek, info.key_version, self._place(info, record_id, current.category), fields
        )
        now = self._clock()
        updated = StoredRecord(
            subject_id,
            record_id,
            current.category,
            expected_version + 1,
            ciphertext,
            origin,
            current.created_at,
            now,
        )
        if not self.storage.update_record(updated, expected_version):
            self._active_subject(subject_id)  # shredded meanwhile?
            raise VersionConflict("record was changed since it was read")
        return RecordView(
            subject_id,
            record_id,
            current.category,
            fields,
            updated.version,
            origin,
            current.created_at,
            now,
        )

    def delete_record(self, subject_id: str, record_id: str) -> None:
        self._active_subject(subject_id)
        if not self.storage.delete_record(subject_id, check_id("record_id", record_id)):
            raise RecordNotFound("record not found", record_id=record_id)

    def all_records(self, subject_id: str) -> tuple[SubjectKeyInfo, list[RecordView]]:
        """Every record of an active subject, decrypted (for export)."""
        info = self._active_subject(subject_id)
        return info, [self._open(info, s) for s in self.storage.records(subject_id)]

    # --- erasure --------------------------------------------------------------------

    def shred_subject(self, subject_id: str) -> ShredReceipt:
        """Erase a subject by destroying its key. Idempotent and safe to retry.

        1. mark the subject ``shredding`` (committed: every replica refuses it from now);
        2. destroy the KMS key (idempotent: an already missing key is fine);
        3. in one transaction: delete the ciphertext rows, drop the wrapped DEK, mark
           ``shredded`` and write the receipt to the shred ledger.

        A crash or an outage after step 1 leaves the subject refused; calling again
        completes the remaining steps. A call on a shredded subject returns its receipt.
        """
        info = self.storage.subject(check_id("subject_id", subject_id))
        if info.state != SHREDDED:
            self.storage.mark_shredding(subject_id, self._clock())
            self.cache.evict(info.key_id)
            try:
                self.kms.destroy_key(info.key_id)
            except KmsError as e:
                raise _kms_error(e) from e
            receipt = self.storage.finish_shred(subject_id, self.kms.backend_name, self._clock())
        else:
            existing = self.storage.receipt(subject_id)
            if existing is None:  # pragma: no cover - finish_shred writes both at once
                raise IntegrityFailure("shredded subject without a receipt")
            receipt = existing
        return self._receipt(receipt)

    def _receipt(self, receipt: Receipt) -> ShredReceipt:
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
        )

    def reconcile_shreds(self) -> int:
        """Destroy again every key in the shred ledger; returns how many were checked.

        Run after restoring a KMS backup (Vault snapshot, keystore file copy) and before
        serving traffic: the restore brought back keys of subjects erased since the
        backup was taken. Destroying is idempotent, so running it twice is harmless.
        """
        checked = 0
        for key_id in self.storage.shredded_key_ids():
            self.cache.evict(key_id)
            try:
                self.kms.destroy_key(key_id)
            except KmsError as e:
                raise _kms_error(e) from e
            checked += 1
        return checked
