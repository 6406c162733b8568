"""Re-key: a subject moves to a new KMS key and the old one is destroyed.

Records of the categories dropped are deleted, every other record is re-encrypted under
the new key, in one compare-and-set transaction (Storage.rekey); the old key is then
recorded in the erasure ledger and destroyed: afterwards no copy of the database,
backups included, can yield the dropped records. Withdrawing a consent
(vault.usecases.rights) uses it to destroy the data stored under that consent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from kms.base import DataKey
from vault.clock import Clock, utc_now
from vault.crypto.key_destruction import destroy_key, destroy_ledger_keys
from vault.crypto.record_crypto import RecordCrypto
from vault.errors import Unavailable
from vault.fault_points import fault_point
from vault.storage import Storage, StoredRecord, SubjectKeyInfo
from vault.storage.erasure_ledger import NewLedgerEntry
from vault.usecases.erasure_ledger import RETIRED, ErasureLedger
from vault.usecases.writable import decrypt_current, writable

#: Tries of a re-key that found records written meanwhile; the new key is reused, so a
#: try costs a read and local re-encryption, no KMS call.
REKEY_ATTEMPTS = 5


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
        new_key: tuple[str, DataKey] | None = None
        try:
            for _ in range(REKEY_ATTEMPTS):
                # Subject and records read together: every record is under info's key.
                info, records = self.storage.subject_with_records(subject_id)
                writable(info)
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
        return len(dropped)

    def destroy_retired_keys(self, subject_id: str) -> None:
        """Destroy (again) every key the ledger lists for this subject; idempotent."""
        destroy_ledger_keys(self.storage, self.crypto, subject_id)

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
            fields = decrypt_current(self.storage, self.crypto, info, r)
            if fields is None:
                return None
            ciphertext = self.crypto.seal(
                new_info, r.record_id, r.category, fields, r.key_scheme, r.bucket_id
            )
            kept.append(replace(r, ciphertext=ciphertext))
        return kept
