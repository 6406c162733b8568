"""Re-key: a subject's records moved under a new key in one compare-and-set transaction."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    delete,
    select,
    update,
)
from sqlalchemy.orm import Session

from vault.storage.base import Repository
from vault.storage.rows import StoredRecord, subject_info
from vault.storage.statements import (
    Changed,
    add_to_key_ledger,
    live_bucket_or_none,
    rewrite_record,
    unchanged,
)
from vault.storage.tables import (
    RecordRow,
    SubjectRow,
)
from vault.vocabulary import WRITABLE, DestroyedKeyKind


@dataclass(frozen=True, slots=True)
class Rewrite:
    """A record a re-key rewrites (record-level erasure of an UpdateRecord): its new
    content sealed under the new key at the next version, the row as the caller read
    it, and the blind-index tags of the new content (None: the category is not
    indexed)."""

    record: StoredRecord
    expected: StoredRecord
    #: {generation: {kind: tag}} under every live index key generation.
    index_tags: Mapping[int, Mapping[str, int]] | None = None


class RekeyRepository(Repository):
    """Re-key: a subject's records moved under a new key in one compare-and-set transaction."""

    def rekey(
        self,
        subject_id: str,
        old_key_id: str,
        new_key_id: str,
        wrapped_dek: bytes,
        key_version: int,
        reencrypted: Sequence[StoredRecord],
        deleted_record_ids: Sequence[str],
        now: datetime,
        *,
        withdrawn_consent: str | None = None,
        rewritten: Sequence[Rewrite] = (),
    ) -> bool:
        """Switch a subject to a new key with its records re-encrypted, in one
        transaction; the old key goes into the ledger (to be destroyed next).
        ``withdrawn_consent`` is taken off the subject's consents as they stand in this
        transaction (not as the caller read them: a consent granted meanwhile stays).
        ``rewritten`` records get new content (version, origin, time and all), their
        blind-index rows replaced by the rewrite's tags in the same transaction.

        ``reencrypted`` carry the version, key scheme and bucket they were read with:
        if any record was written, moved or added since (or the subject's key or state
        changed), nothing is written and the answer is False: the caller reads again.
        The subject row is locked ``FOR UPDATE`` first (SQLite: ``BEGIN IMMEDIATE``),
        and every rewrite takes it ``FOR SHARE`` before writing (:meth:`update_record`,
        :meth:`insert_records`), so no write slips between this check and the commit.
        """
        try:
            with self._write_session() as s:
                row = s.get(SubjectRow, subject_id, with_for_update=True)
                if row is None or row.key_id != old_key_id or row.state not in WRITABLE:
                    return False
                # Readable records only, as the caller listed them: rows of a bucket being
                # destroyed are unreadable already and go with their bucket.
                current = {
                    r.record_id: (r.version, r.key_scheme, r.bucket_id)
                    for r in s.execute(
                        select(
                            RecordRow.record_id,
                            RecordRow.version,
                            RecordRow.key_scheme,
                            RecordRow.bucket_id,
                        ).where(RecordRow.subject_id == subject_id, live_bucket_or_none())
                    )
                }
                read = {
                    r.record_id: (r.version, r.key_scheme, r.bucket_id)
                    for r in [*reencrypted, *(w.expected for w in rewritten)]
                }
                if set(current) != set(read) | set(deleted_record_ids) or any(
                    current[record_id] != seen for record_id, seen in read.items()
                ):
                    return False  # written meanwhile: the caller starts again
                if deleted_record_ids:
                    s.execute(
                        delete(RecordRow).where(
                            RecordRow.subject_id == subject_id,
                            RecordRow.record_id.in_(deleted_record_ids),
                        )
                    )
                for record in reencrypted:
                    result = s.execute(
                        update(RecordRow)
                        .where(
                            RecordRow.subject_id == subject_id,
                            RecordRow.record_id == record.record_id,
                            *unchanged(record),
                        )
                        .values(ciphertext=record.ciphertext)
                    )
                    if getattr(result, "rowcount", 0) != 1:  # a delete takes no subject lock
                        raise Changed
                for rewrite in rewritten:
                    self._rewrite(s, rewrite)
                row.key_id = new_key_id
                row.wrapped_dek = wrapped_dek
                row.key_version = key_version
                row.updated_at = now
                row.dek_created_at = now  # a new key, one version: nothing to trim
                row.kek_rotated_at = now
                row.kek_trim_after = None
                if withdrawn_consent is not None:
                    consents = subject_info(row).consents
                    consents.pop(withdrawn_consent, None)
                    row.consents = json.dumps(consents, sort_keys=True)
                add_to_key_ledger(s, old_key_id, DestroyedKeyKind.RETIRED, now, subject_id)
                return True
        except Changed:
            return False

    @staticmethod
    def _rewrite(s: Session, rewrite: Rewrite) -> None:
        """Write ``rewrite`` over its row as read (else Changed: roll back), and replace
        the record's index rows as UpdateRecord does (Storage.update_record)."""
        if not rewrite_record(s.connection(), rewrite.record, rewrite.expected, rewrite.index_tags):
            raise Changed
