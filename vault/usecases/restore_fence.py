"""The restore fence: ledger, KMS and database reconciled before a server serves.

A restore brings back what was destroyed since its backup: an old data database shows
erased subjects as live (their wrapped DEKs, their records), an old KMS snapshot holds
their keys again. The erasure ledger (:mod:`vault.usecases.erasure_ledger`) lives apart
from both, so it still names every key destroyed. The fence, run before the server
reports SERVING and periodically afterwards:

1. compares positions: the ledger's head and the database's high-water mark (the ledger
   seq of its last finished erasure). A database behind the ledger is logged and
   exported (``oubli_erasure_ledger_lag_entries``); a ledger behind the database (lost,
   or restored from a backup) refuses to serve (:class:`LedgerBehind`) unless the
   operator accepted it (``--accept-ledger-behind``);
2. erases, through :class:`~vault.usecases.erasure.Erasure`, every subject the ledger
   names that the database does not show erased, and every subject left ``shredding``
   by a crash (legal-hold records are held when the key still exists; when it is gone
   they cannot be, and go with the rest);
3. destroys again every key the ledger (or the database's key ledger) names that the
   KMS still holds; finishes the retention buckets the ledger names that the database
   still shows, and destroys the buckets a crash left ``destroying`` before their key
   was recorded (as the retention job would have);
4. copies into the ledger the destroyed keys the database's key ledger knows and the
   ledger does not (a ledger started after them, or restored), raises the database's
   position to the ledger head it reconciled, and signs that head.

Until the first pass succeeds the :class:`ServingGate` is closed: every oubli RPC gets
UNAVAILABLE (``RESTORE_FENCE_PENDING``), health says NOT_SERVING. ``oubli reconcile``
runs one pass by hand; its dry run (:meth:`RestoreFence.plan`) lists what a pass would
do and changes nothing.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from kms.base import KmsError
from vault.audit.signing import SigningKey
from vault.crypto.key_destruction import destroy_key
from vault.errors import FailedPrecondition, OubliError, Unavailable, kms_error
from vault.storage.erasure_ledger import NewLedgerEntry
from vault.usecases.batches import MAX_BATCH_ITEMS
from vault.usecases.erasure import Erasure
from vault.usecases.erasure_ledger import BUCKET, SUBJECT
from vault.usecases.retention import RetentionJob
from vault.vocabulary import BucketState, SubjectState

log = structlog.get_logger("oubli.fence")

#: KMS existence checks and destructions side by side.
FENCE_WORKERS = 8


class FencePending(Unavailable):
    """The restore fence has not passed yet (or the ledger is behind the database)."""

    reason = "RESTORE_FENCE_PENDING"


class LedgerBehind(FailedPrecondition):
    """The database has finished erasures the ledger does not have: the ledger was lost
    or restored from a backup. Serving needs an operator's explicit acceptance."""

    def __init__(self, ledger_head: int, database_position: int) -> None:
        super().__init__(
            "ERASURE_LEDGER_BEHIND",
            f"the erasure ledger is behind the database: ledger head seq {ledger_head}, "
            f"database high-water mark seq {database_position}. The ledger was lost or "
            "restored from a backup, so erasures recorded after it may be forgotten: "
            "restore the newest ledger (or its mirror), or accept the gap with "
            "`oubli serve --accept-ledger-behind` (the fence then re-records what the "
            "database knows and resets its position to the ledger head)",
        )
        self.ledger_head = ledger_head
        self.database_position = database_position


class ServingGate:
    """Whether oubli's RPCs may run. Closed until the restore fence passes; the
    interceptor reads :attr:`refusal` (None when open) on every call."""

    def __init__(self) -> None:
        self.refusal: OubliError | None = FencePending(
            "the restore fence has not finished: the server is reconciling the erasure "
            "ledger, the KMS and the database; retry shortly"
        )

    def open(self) -> None:
        self.refusal = None

    def close(self, refusal: OubliError) -> None:
        self.refusal = refusal


@dataclass(frozen=True, slots=True)
class FencePlan:
    """What a pass of the fence finds (ids only, never personal data)."""

    ledger_head: int
    database_position: int
    ledger_entries: int
    keys_checked: int
    #: Keys the ledger names that the KMS still holds.
    keys_to_destroy: list[str] = field(default_factory=list)
    #: Subjects the ledger names that the database does not show erased, and subjects
    #: left ``shredding``.
    subjects_to_erase: list[str] = field(default_factory=list)
    #: Retention buckets the ledger names that the database does not show destroyed.
    buckets_to_finish: list[str] = field(default_factory=list)
    #: Destroyed keys the database's key ledger lists and the erasure ledger does not.
    keys_to_record: list[str] = field(default_factory=list)
    #: Retention buckets a crash left ``destroying`` before their key went into the
    #: ledger: destroyed as the retention job would have.
    buckets_to_destroy: list[str] = field(default_factory=list)

    @property
    def lag(self) -> int:
        """Entries the database is behind the ledger (0 when level or ahead)."""
        return max(0, self.ledger_head - self.database_position)

    @property
    def ledger_behind(self) -> bool:
        return self.database_position > self.ledger_head


@dataclass(frozen=True, slots=True)
class FenceReport:
    plan: FencePlan
    seconds: float


class RestoreFence:
    """One pass of reconciliation over :class:`Erasure`'s ledger, KMS and database."""

    def __init__(
        self,
        erasure: Erasure,
        *,
        accept_ledger_behind: bool = False,
        signing_key: SigningKey | None = None,
        workers: int = FENCE_WORKERS,
    ) -> None:
        self.erasure = erasure
        self.storage = erasure.storage
        self.ledger = erasure.ledger
        self.accept_ledger_behind = accept_ledger_behind
        self._signing_key = signing_key
        self._workers = workers
        #: Entries the database was behind the ledger at the last pass (a metric).
        self.lag = 0

    def check_positions(self) -> tuple[int, int]:
        """(ledger head, database position); raises :class:`LedgerBehind` when the
        database is ahead and the operator has not accepted it."""
        head = self.ledger.head()[0]
        position = self.storage.ledger_position()
        if position > head and not self.accept_ledger_behind:
            raise LedgerBehind(head, position)
        return head, position

    def plan(self) -> FencePlan:
        """What a pass would do; changes nothing (``oubli reconcile --dry-run``).

        Raises:
            LedgerBehind: the ledger is behind the database and that is not accepted.
            Unavailable: the KMS, the database or the ledger could not be reached.
        """
        head, position = self.check_positions()
        entries = [e for e in self.ledger.entries() if e.seq <= head]
        in_ledger = {e.key_id for e in entries}
        known = self.storage.key_ledger()
        keys = list(dict.fromkeys([e.key_id for e in entries] + [k for k, _, _ in known]))
        held = [k for k, exists in zip(keys, self._exist(keys), strict=True) if exists]
        named = [e.subject_id for e in entries if e.kind == SUBJECT and e.subject_id]
        states = self.storage.subjects(named)
        done = (SubjectState.HELD, SubjectState.SHREDDED)
        subjects = [sid for sid, info in states.items() if info.state not in done]
        subjects = sorted(set(subjects) | set(self.storage.shredding_subject_ids()))
        buckets = []
        for e in entries:
            if e.kind == BUCKET and e.bucket_id:
                bucket = self.storage.bucket(e.bucket_id)
                if bucket is not None and bucket.state != BucketState.DESTROYED:
                    buckets.append(e.bucket_id)
        named_buckets = {e.bucket_id for e in entries if e.kind == BUCKET}
        left = [
            b.bucket_id
            for b in self.storage.due_buckets(self.erasure.clock())
            if b.state == BucketState.DESTROYING and b.bucket_id not in named_buckets
        ]
        return FencePlan(
            head,
            position,
            len(entries),
            len(keys),
            held,
            subjects,
            buckets,
            [k for k, _, _ in known if k not in in_ledger],
            left,
        )

    def run(self) -> FenceReport:
        """One pass: find what a restore or a crash left, and repair it.

        Raises:
            LedgerBehind: the ledger is behind the database and that is not accepted.
            Unavailable: the KMS, the database or the ledger could not be reached, or
                a subject could not be erased (the pass is to be retried).
        """
        start = time.perf_counter()
        plan = self.plan()
        self.lag = plan.lag
        if plan.lag:
            log.warning(
                "database_behind_erasure_ledger",
                ledger_head=plan.ledger_head,
                database_position=plan.database_position,
                lag_entries=plan.lag,
            )
        if plan.ledger_behind:
            log.warning(
                "erasure_ledger_behind_accepted",
                ledger_head=plan.ledger_head,
                database_position=plan.database_position,
            )
        self._erase(plan.subjects_to_erase)
        outcomes = self._side_by_side(self._destroy, plan.keys_to_destroy)
        failures = [e for e in outcomes if isinstance(e, OubliError)]
        if failures:
            raise Unavailable(
                f"the restore fence could not destroy {len(failures)} keys: {failures[0].reason}"
            )
        for bucket_id in plan.buckets_to_finish:
            self._finish_bucket(bucket_id)
        for bucket_id in plan.buckets_to_destroy:
            self._destroy_bucket(bucket_id)
        self._record_known_keys(plan.keys_to_record)
        head = self.ledger.head()[0]
        if plan.ledger_behind:
            self.storage.reset_ledger_position(head)
        else:
            self.storage.raise_ledger_position(max(head, plan.ledger_head))
        if self._signing_key is not None:
            self.ledger.sign_head(self._signing_key)
        seconds = time.perf_counter() - start
        if (
            plan.keys_to_destroy
            or plan.subjects_to_erase
            or plan.buckets_to_finish
            or plan.buckets_to_destroy
        ):
            log.warning(
                "restore_fence_repaired",
                keys_destroyed=len(plan.keys_to_destroy),
                subjects_erased=len(plan.subjects_to_erase),
                buckets_finished=len(plan.buckets_to_finish),
                buckets_destroyed=len(plan.buckets_to_destroy),
                ledger_head=head,
            )
        return FenceReport(plan, seconds)

    # --- steps ----------------------------------------------------------------------

    def _exist(self, key_ids: Sequence[str]) -> list[bool]:
        def exists(key_id: str) -> bool:
            try:
                return self.erasure.crypto.kms.key_exists(key_id)
            except KmsError as e:
                raise kms_error(e) from e

        found = self._side_by_side(exists, key_ids)
        for item in found:
            if isinstance(item, OubliError):
                raise item
        return [bool(item) for item in found]

    def _destroy(self, key_id: str) -> None:
        destroy_key(self.erasure.crypto, key_id)

    def _erase(self, subject_ids: Sequence[str]) -> None:
        for start in range(0, len(subject_ids), MAX_BATCH_ITEMS):
            chunk = subject_ids[start : start + MAX_BATCH_ITEMS]
            failed = [r for r in self.erasure.shred_many(chunk) if isinstance(r, OubliError)]
            if failed:
                raise Unavailable(
                    f"the restore fence could not erase {len(failed)} subjects: {failed[0].reason}"
                )

    def _finish_bucket(self, bucket_id: str) -> None:
        """A bucket the ledger names (its key destroyed) that the database still shows:
        its rows go, as the retention job's finish does."""
        storage = self.storage
        bucket = storage.bucket(bucket_id)
        if bucket is None:
            return
        storage.mark_bucket_destroying(bucket_id)
        self.erasure.crypto.buckets.forget(bucket)
        storage.finish_bucket(bucket_id, self.erasure.clock())

    def _destroy_bucket(self, bucket_id: str) -> None:
        """A bucket a crash left ``destroying``, its key not yet in the ledger: the
        retention job's destruction, completed."""
        bucket = self.storage.bucket(bucket_id)
        if bucket is not None and bucket.state == BucketState.DESTROYING:
            RetentionJob(self.erasure).destroy_bucket(bucket)

    def _record_known_keys(self, key_ids: Sequence[str]) -> None:
        if not key_ids:
            return
        wanted = set(key_ids)
        self.ledger.append(
            [
                NewLedgerEntry(kind, key_id, subject_id)
                for key_id, kind, subject_id in self.storage.key_ledger()
                if key_id in wanted
            ]
        )

    def _side_by_side(self, task: Callable[[str], object], items: Sequence[str]) -> list[object]:
        """``task`` over ``items``, several at a time; an item's domain error is its
        result."""

        def run(item: str) -> object:
            try:
                return task(item)
            except OubliError as e:
                return e

        if len(items) <= 1:
            return [run(item) for item in items]
        with ThreadPoolExecutor(min(self._workers, len(items))) as pool:
            futures = [pool.submit(contextvars.copy_context().run, run, i) for i in items]
            return [f.result() for f in futures]


class FenceRunner:
    """The fence in the server: passes until one succeeds (the gate opens, health says
    SERVING), then one pass every ``interval`` seconds. A later pass that fails is
    logged and retried sooner, the gate staying open, unless it found the ledger behind
    the database: then the gate closes."""

    def __init__(
        self,
        fence: RestoreFence,
        gate: ServingGate,
        interval: float,
        on_serving: Callable[[bool], None],
    ) -> None:
        self.fence = fence
        self.gate = gate
        self.interval = interval
        self._on_serving = on_serving
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pass_once(self) -> bool:
        """One pass; opens or closes the gate by its outcome. True when it passed."""
        try:
            report = self.fence.run()
        except LedgerBehind as e:
            log.error("restore_fence_refused", reason=e.reason, message=e.message)
            self.gate.close(e)
            self._on_serving(False)
            return False
        except OubliError as e:
            log.warning("restore_fence_failed", reason=e.reason, error=e.message)
            return False
        log.info(
            "restore_fence_passed",
            ledger_head=report.plan.ledger_head,
            entries=report.plan.ledger_entries,
            ms=round(report.seconds * 1000, 1),
        )
        self.gate.open()
        self._on_serving(True)
        return True

    def start(self, *, passed: bool) -> None:
        """Run the passes in a thread; ``passed``: a pass just succeeded (the next one
        is due after the interval), else the next one starts at once."""
        self._thread = threading.Thread(
            target=self._loop, args=(passed,), name="oubli-fence", daemon=True
        )
        self._thread.start()

    def _loop(self, passed: bool) -> None:
        retry = 0.2
        if passed:
            self._stop.wait(self.interval)
        while not self._stop.is_set():
            if self.pass_once():
                retry = 0.2
                self._stop.wait(self.interval)
            else:
                self._stop.wait(min(retry, self.interval))
                retry = min(retry * 2, 10.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
