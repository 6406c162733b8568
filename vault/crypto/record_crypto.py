"""Record cryptography: subject keys, the record key of each scheme, sealing and opening.

A record is sealed (vault.crypto.envelope) under the key its scheme names:

- ``subject``: the subject's DEK;
- ``expiry``: HKDF of the subject's and the expiry bucket's DEKs (destroying either
  destroys the record);
- ``hold``: HKDF of the hold bucket's DEK alone (legally kept after an erasure).

DEKs come from the in-process cache when possible (zero KMS calls), else one unwrap;
a batch unwraps its cold subjects' DEKs together (:meth:`RecordCrypto.warm`). Nothing
here decides who may read: the use cases check the subject's state and the purpose
first. Sealing and opening note the category and field names for the call's audit
entry (vault.access.caller_scope).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.base import (
    DataKey,
    KeyDestroyed,
    KeyManager,
    KmsAccessDenied,
    KmsError,
    KmsUnavailable,
)
from vault.access import caller_scope
from vault.clock import Clock, utc_now
from vault.crypto.bucket_keys import BucketKeys, expiry_record_key, hold_record_key
from vault.crypto.envelope import (
    RecordCipher,
    RecordPlace,
    associated_data_of_records,
    decode_fields,
    field_names_of,
    key_version_of,
    open_sealed,
)
from vault.crypto.keycache import DataKeyCache
from vault.errors import IntegrityFailure, KeyDestroyedError, OubliError, kms_error
from vault.ids import RandomBytes, new_id
from vault.storage import RecordLike, Storage, SubjectKeyInfo
from vault.vocabulary import KeyScheme

#: Cold subjects per ``unwrap_many`` when a batch warms the DEK cache.
WARM_GROUP = 64
#: Groups unwrapped side by side (each makes up to 8 Transit calls at once).
WARM_WORKERS = 2


def _nothing_to_wait_for() -> None:
    return None


class RecordCrypto:
    """Subject keys and records' envelopes, over the KMS and the shared DEK cache."""

    def __init__(
        self,
        storage: Storage,
        kms: KeyManager,
        *,
        cache: DataKeyCache | None = None,
        clock: Clock = utc_now,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.kms = kms
        self._storage = storage
        self.cache = cache if cache is not None else DataKeyCache()
        self.buckets = BucketKeys(storage, kms, self.cache, clock, random_bytes, kms_error)
        self._random_bytes = random_bytes
        self._cipher = RecordCipher(random_bytes)
        self._warm_lock = threading.Lock()
        self._warmers: ThreadPoolExecutor | None = None

    # --- subject keys ---------------------------------------------------------------

    def new_subject_key(self) -> tuple[str, DataKey]:
        """A new KMS key (random id, unrelated to the subject id) and its first DEK;
        nothing is left in the KMS when either step fails."""
        key_id = new_id(self._random_bytes)
        try:
            self.kms.create_key(key_id)
            return key_id, self.kms.generate_data_key(key_id)
        except KmsError as e:
            self.discard_key(key_id)
            raise kms_error(e) from e

    def discard_key(self, key_id: str) -> None:
        """Destroy a key no stored row points at, best effort: an unused key protects
        nothing (a key that protected data goes through vault.crypto.key_destruction)."""
        with contextlib.suppress(KmsError):
            self.kms.destroy_key(key_id)

    def subject_dek(self, info: SubjectKeyInfo, key_version: int | None = None) -> bytes:
        """The subject's DEK of ``key_version`` (default: the current one)."""
        version = info.key_version if key_version is None else key_version
        cached = self.cache.get(info.key_id, version)
        if cached is not None:
            return cached
        if version != info.key_version or info.wrapped_dek is None:
            raise IntegrityFailure("ciphertext names a key version the subject does not have")
        try:
            dek = self.kms.unwrap(info.key_id, info.wrapped_dek)
        except (KeyDestroyed, KmsUnavailable, KmsAccessDenied) as e:
            raise kms_error(e) from e
        except KmsError as e:
            # A rotation re-wrapped the DEK and retired the version the row read before
            # it names (vault.usecases.kek_rotation): the row read again has the re-wrap.
            dek = self._unwrap_again(info, e)
        self.cache.put(info.key_id, version, dek)
        return dek

    def _unwrap_again(self, info: SubjectKeyInfo, error: KmsError) -> bytes:
        try:
            fresh = self._storage.subject(info.subject_id)
        except OubliError:
            raise kms_error(error) from error
        if (
            fresh.key_id != info.key_id
            or fresh.key_version != info.key_version
            or fresh.wrapped_dek is None
            or fresh.wrapped_dek == info.wrapped_dek
        ):
            raise kms_error(error) from error
        try:
            return self.kms.unwrap(fresh.key_id, fresh.wrapped_dek)
        except KmsError as e:
            raise kms_error(e) from e

    def warm(self, infos: Sequence[SubjectKeyInfo]) -> None:
        """Unwrap the DEKs of the cold subjects among ``infos`` (see :meth:`start_warming`)
        and wait for them."""
        self.start_warming(infos)()

    def start_warming(self, infos: Sequence[SubjectKeyInfo]) -> Callable[[], None]:
        """Start unwrapping the DEKs of the cold subjects among ``infos`` in the
        background; returns the function that waits until they are in the cache.

        Each subject has its own KMS key (what makes its erasure one key destruction),
        and Transit batches only within one key: a cold subject costs one unwrap
        whatever the grouping. So the unwraps go in groups of :data:`WARM_GROUP` (one
        ``unwrap_many`` each, with its own KMS budget), :data:`WARM_WORKERS` groups at
        a time, while the caller goes on with its database reads. Failures are left
        for the item that needs the key: it tries again alone and gets the error the
        unary call would have got.
        """
        cold: dict[str, SubjectKeyInfo] = {}
        for info in infos:
            if (
                info.wrapped_dek is not None
                and info.key_id not in cold
                and self.cache.get(info.key_id, info.key_version) is None
            ):
                cold[info.key_id] = info
        if not cold:
            return _nothing_to_wait_for
        pending = list(cold.values())
        groups = [pending[i : i + WARM_GROUP] for i in range(0, len(pending), WARM_GROUP)]
        pool = self._warm_pool()
        # Each group runs in a copy of the caller's context: it keeps the call's KMS budget.
        futures = [
            pool.submit(contextvars.copy_context().run, self._unwrap_into_cache, group)
            for group in groups
        ]

        def wait() -> None:
            for future in futures:
                future.result()

        return wait

    def _warm_pool(self) -> ThreadPoolExecutor:
        with self._warm_lock:
            if self._warmers is None:
                self._warmers = ThreadPoolExecutor(WARM_WORKERS, thread_name_prefix="oubli-warm")
            return self._warmers

    def _unwrap_into_cache(self, cold: Sequence[SubjectKeyInfo]) -> None:
        try:
            results = self.kms.unwrap_many([(i.key_id, i.wrapped_dek or b"") for i in cold])
        except KmsError:  # the KMS is down: each item reports it
            return
        for info, result in zip(cold, results, strict=True):
            if isinstance(result, bytes):
                self.cache.put(info.key_id, info.key_version, result)

    # --- record keys ----------------------------------------------------------------

    def record_key(
        self, info: SubjectKeyInfo, scheme: str, bucket_id: str | None, key_version: int
    ) -> bytes:
        """The key a record of ``scheme`` (and bucket) is sealed under.

        Raises:
            KeyDestroyedError: the record's bucket is destroyed (its period is over).
        """
        if scheme == KeyScheme.SUBJECT:
            return self.subject_dek(info, key_version)
        bucket = self.buckets.get(bucket_id or "")
        if bucket is None:
            raise KeyDestroyedError("the record's retention period is over: its key is destroyed")
        bucket_dek = self.buckets.dek(bucket)
        if scheme == KeyScheme.HOLD:
            return hold_record_key(bucket_dek, bucket.bucket_id, info.subject_id)
        subject_dek = self.subject_dek(info, key_version)
        return expiry_record_key(subject_dek, bucket_dek, bucket.bucket_id, info.subject_id)

    @staticmethod
    def _place(
        info: SubjectKeyInfo, record_id: str, category: str, scheme: str, bucket: str | None
    ) -> RecordPlace:
        return RecordPlace(info.tenant, info.subject_id, record_id, category, scheme, bucket or "")

    # --- sealing and opening --------------------------------------------------------

    def seal(
        self,
        info: SubjectKeyInfo,
        record_id: str,
        category: str,
        fields: Mapping[str, str],
        scheme: KeyScheme,
        bucket_id: str | None,
    ) -> bytes:
        """``fields`` sealed under the subject's current key version and ``scheme``."""
        key = self.record_key(info, scheme, bucket_id, info.key_version)
        place = self._place(info, record_id, category, scheme, bucket_id)
        caller_scope.note(category, fields)
        return self._cipher.seal(key, info.key_version, place, fields)

    def sealer(
        self, info: SubjectKeyInfo, scheme: KeyScheme, bucket_id: str | None
    ) -> Callable[[str, str, Mapping[str, str]], bytes]:
        """:meth:`seal` for many records of one subject under one scheme (and bucket):
        the key and its AES object are resolved once, not per record (batch puts)."""
        version = info.key_version
        aead = AESGCM(self.record_key(info, scheme, bucket_id, version))
        cipher = self._cipher

        def seal(record_id: str, category: str, fields: Mapping[str, str]) -> bytes:
            place = self._place(info, record_id, category, scheme, bucket_id)
            caller_scope.note(category, fields)
            return cipher.seal(aead, version, place, fields)

        return seal

    def decrypt(self, info: SubjectKeyInfo, stored: RecordLike) -> dict[str, str]:
        """A stored record's fields (noted nowhere: re-encryption, not a read)."""
        key = self.record_key(
            info, stored.key_scheme, stored.bucket_id, key_version_of(stored.ciphertext)
        )
        place = self._place(
            info, stored.record_id, stored.category, stored.key_scheme, stored.bucket_id
        )
        return self._cipher.open(key, place, stored.ciphertext)

    def open(self, info: SubjectKeyInfo, stored: RecordLike) -> dict[str, str]:
        """A stored record's fields, read (the caller has authorized the read): its
        category and field names are noted for the audit entry."""
        fields = self.decrypt(info, stored)
        caller_scope.note(stored.category, fields)
        return fields

    def open_page(
        self,
        info: SubjectKeyInfo,
        page: Sequence[RecordLike],
        field_names: Collection[str] = (),
    ) -> Iterator[tuple[RecordLike, str]]:
        """Decrypt a page of one subject's records (the caller has authorized the read):
        each record with its fields' canonical JSON as decrypted, for an export to
        write as it is (no parse, no re-encoding).

        The plaintext is authenticated (AES-GCM, bound to the record's place), so it is
        the canonical JSON :func:`~vault.crypto.envelope.encode_fields` sealed; the
        field names read, for the audit entry, are found in it among ``field_names``
        (the category's, from the catalog) without parsing
        (:func:`~vault.crypto.envelope.field_names_of`); a record where that cannot tell
        them is decoded and checked to be a map of strings, as every record was before.

        Keys, AES objects and the associated data's shared parts are resolved once per
        (category, scheme, bucket, key version) of the page rather than per record:
        exports open hundreds of thousands of records.
        """
        openers: dict[tuple[str, str, str | None, int], tuple[AESGCM, Callable[[str], bytes]]] = {}
        names: set[str] = set()
        category = ""
        for stored in page:
            blob = stored.ciphertext
            version = key_version_of(blob)
            slot = (stored.category, stored.key_scheme, stored.bucket_id, version)
            opener = openers.get(slot)
            if opener is None:
                key = self.record_key(info, stored.key_scheme, stored.bucket_id, version)
                opener = openers[slot] = (
                    AESGCM(key),
                    associated_data_of_records(
                        info.tenant,
                        info.subject_id,
                        stored.category,
                        stored.key_scheme,
                        stored.bucket_id or "",
                        version,
                    ),
                )
            aead, associated_data = opener
            plaintext = open_sealed(aead, associated_data(stored.record_id), blob)
            if category and stored.category != category:
                caller_scope.note(category, names)
                names = set()
            category = stored.category
            found = field_names_of(plaintext, field_names)
            names.update(found if found is not None else decode_fields(plaintext))
            yield stored, plaintext.decode("utf-8")
        if category:
            caller_scope.note(category, names)
