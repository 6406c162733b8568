"""The retention job: carry out everything due at a given time, by destroying keys.

Due work, in order:
1. closed accounts past their scheduled erasure, and erasures interrupted mid-way:
   erase the subject (legal-hold records move to their hold bucket; one KMS call per
   subject key);
2. buckets past their month: record the bucket's key in the erasure ledger, destroy it
   (one KMS call per bucket, however many records and subjects it covers), then delete
   its now unreadable rows.

The job is idempotent (a second run finds nothing due) and has a dry run that lists
what would be destroyed and destroys nothing. Several replicas may run it at once:
every step is idempotent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime

from vault.crypto.key_destruction import destroy_key
from vault.errors import OubliError
from vault.fault_points import fault_point
from vault.storage import BucketInfo
from vault.storage.erasure_ledger import NewLedgerEntry
from vault.usecases.batches import MAX_BATCH_ITEMS
from vault.usecases.erasure import Erasure
from vault.usecases.erasure_ledger import BUCKET

ERASE_SUBJECT = "erase_subject"
DESTROY_BUCKET = "destroy_bucket"


@dataclass(frozen=True, slots=True)
class RetentionAction:
    kind: str
    #: Subject id or bucket id (never personal data).
    target: str
    #: When it became due.
    due_at: datetime
    #: Records destroyed (for a bucket: its records; for a subject: its erasable ones).
    records: int = 0
    #: Empty on success; else the failure's reason code (the action is retried next run).
    error: str = ""


@dataclass(slots=True)
class RetentionSummary:
    ran_at: datetime
    dry_run: bool
    actions: list[RetentionAction] = field(default_factory=list)

    @property
    def subjects_erased(self) -> int:
        return sum(1 for a in self.actions if a.kind == ERASE_SUBJECT and not a.error)

    @property
    def buckets_destroyed(self) -> int:
        return sum(1 for a in self.actions if a.kind == DESTROY_BUCKET and not a.error)

    @property
    def records_destroyed(self) -> int:
        return sum(a.records for a in self.actions)

    @property
    def failures(self) -> int:
        return sum(1 for a in self.actions if a.error)


class RetentionJob:
    """Erasures and bucket destructions that are due, over :class:`Erasure`'s storage,
    keys and clock."""

    def __init__(self, erasure: Erasure) -> None:
        self.erasure = erasure
        self.storage = erasure.storage
        self.clock = erasure.clock

    def plan(self, now: datetime) -> list[RetentionAction]:
        """What is due at ``now`` (the dry run's answer)."""
        storage = self.storage
        actions = []
        held = list(self.erasure.catalog.legal_hold_categories)
        # Only what the erasure deletes: legal-hold records are kept (its receipt's
        # records_deleted), so the dry run announces what the run does.
        for subject_id, due, count in storage.due_erasures(now, held):
            actions.append(RetentionAction(ERASE_SUBJECT, subject_id, due, count))
        for bucket in storage.due_buckets(now):
            count = storage.bucket_record_count(bucket.bucket_id)
            actions.append(
                RetentionAction(DESTROY_BUCKET, bucket.bucket_id, bucket.destroy_at, count)
            )
        return actions

    def run(self, *, dry_run: bool = False) -> RetentionSummary:
        summary = RetentionSummary(self.clock(), dry_run)
        summary.actions.extend(action for action, _done, _total in self.steps(dry_run=dry_run))
        return summary

    def steps(self, *, dry_run: bool = False) -> Iterator[tuple[RetentionAction, int, int]]:
        """Carry out the due actions one by one; yields (action, done, total) after each."""
        planned = self.plan(self.clock())
        if dry_run:
            for done, action in enumerate(planned, 1):
                yield action, done, len(planned)
            return
        subjects = [a for a in planned if a.kind == ERASE_SUBJECT]
        total = len(planned)
        done = 0

        # A thousand erasures at a time, as a batch shred: one transaction marks them,
        # their keys are destroyed side by side, one transaction finishes them. One
        # failing subject must not stop every other expiry: it is reported, and stays
        # refused until the next run completes it.
        for start in range(0, len(subjects), MAX_BATCH_ITEMS):
            chunk = subjects[start : start + MAX_BATCH_ITEMS]
            results = self.erasure.shred_many([action.target for action in chunk])
            for action, result in zip(chunk, results, strict=True):
                done += 1
                if isinstance(result, OubliError):
                    yield replace(action, records=0, error=result.reason), done, total
                else:
                    yield replace(action, records=result.records_deleted), done, total
        # Erasures may have made hold buckets that are already due: look again.
        buckets = self.storage.due_buckets(self.clock())
        total = done + len(buckets)
        for bucket in buckets:
            done += 1
            try:
                yield self.destroy_bucket(bucket), done, total
            except OubliError as e:
                failed = RetentionAction(DESTROY_BUCKET, bucket.bucket_id, bucket.destroy_at)
                yield replace(failed, error=e.reason), done, total

    def destroy_bucket(self, bucket: BucketInfo) -> RetentionAction:
        """Destroy a due bucket: mark it ``destroying`` (its records are refused), record
        its key in the erasure ledger, destroy it, delete its rows. The restore fence
        calls it too, for a bucket a crash left ``destroying``."""
        storage = self.storage
        bucket_id = bucket.bucket_id
        storage.mark_bucket_destroying(bucket_id)
        fault_point("retention.bucket_marked")
        crypto = self.erasure.crypto
        crypto.buckets.forget(bucket)
        # Recorded outside the database before the key goes (the restore fence finishes
        # a bucket a restored database still shows).
        [seq] = self.erasure.ledger.append(
            [NewLedgerEntry(BUCKET, bucket.key_id, bucket_id=bucket_id)]
        )
        destroy_key(crypto, bucket.key_id)
        fault_point("retention.bucket_key_destroyed")
        records, _subjects = storage.finish_bucket(bucket_id, self.clock(), ledger_seq=seq)
        return RetentionAction(DESTROY_BUCKET, bucket_id, bucket.destroy_at, records)
