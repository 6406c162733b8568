"""Wiring of the audit trail into the server: one entry per oubli RPC.

"No audit, no access": the entry is appended before a response leaves the server; if
the append fails the call fails with UNAVAILABLE and no data is returned. The entry
names the caller, the RPC, the pseudonymous subject id, the categories and field names
touched, the purpose and the outcome — never a value. A purpose or category is written
only when the catalog knows it: the request's ``purpose`` and ``category`` fields are
whatever the caller typed, and a card or phone number looks like a name to the audit's
own filter, so anything else is written as ``~invalid``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import structlog

from kms.base import KeyManager
from vault.access.caller_policy import rpc_name
from vault.access.caller_scope import AccessNote
from vault.audit.chain import SEAL_INTERVAL_SECONDS, AuditLog
from vault.audit.entries import INVALID, AuditEvent
from vault.audit.throttle import Throttle
from vault.catalog import Catalog
from vault.clock import Clock
from vault.errors import AlreadyExists
from vault.ids import RandomBytes, new_id
from vault.storage import Storage
from vault.storage.audit_log import AuditRide
from vault.storage.service_keys import ServiceKey

log = structlog.get_logger("oubli.audit")

SIGNING_KEY_NAME = "audit-signing"


def signing_key_id(storage: Storage, clock: Clock, random_bytes: RandomBytes = os.urandom) -> str:
    """The audit signing key's (random) id, chosen once per database."""
    found = storage.service_key(SIGNING_KEY_NAME)
    if found is not None:
        return found.key_id
    key_id = new_id(random_bytes)
    try:
        # A signing key: nothing is wrapped.
        storage.add_service_key(ServiceKey(SIGNING_KEY_NAME, key_id, b"", 0, clock()))
    except AlreadyExists:  # another replica chose first
        return signing_key_id(storage, clock, random_bytes)
    return key_id


_Share = tuple[str | None, str, set[str], set[str], str | None]


def _purpose(catalog: Catalog, name: str) -> str:
    return name if not name or name in catalog.purposes else INVALID


def _categories(catalog: Catalog, names: Iterable[str]) -> set[str]:
    return {name if name in catalog.categories else INVALID for name in names}


def _catalog_names(catalog: Catalog, shares: list[_Share]) -> list[_Share]:
    """The shares with every purpose and category the catalog does not know as INVALID."""
    return [
        (subject_id, _purpose(catalog, purpose), _categories(catalog, categories), fields, outcome)
        for subject_id, purpose, categories, fields, outcome in shares
    ]


def _shares(request: Any, note: AccessNote) -> list[_Share]:
    """Who the call touched: (subject, purpose, categories, fields, item outcome).

    One share for a call on one subject; one per subject (and purpose) for a batch,
    so that each subject's trail — and its access report — shows the batch.
    """
    if note.items:  # what the batch's items noted as they ran
        return [
            (subject_id, purpose, item.categories, item.fields, item.outcome)
            for (subject_id, purpose), item in note.items.items()
        ]
    batch = list(getattr(request, "requests", ()) or ()) if request is not None else []
    if batch:  # before a batch runs (STARTED), or when it failed before any item ran
        # Subjects only: the request's category and field names are not checked yet,
        # and an unchecked name must not reach the permanent trail.
        keys = dict.fromkeys((i.subject_id, getattr(i, "purpose", "")) for i in batch)
        return [(subject_id, purpose, set(), set(), None) for subject_id, purpose in keys]
    subject_ids = list(getattr(request, "subject_ids", ()) or ()) if request is not None else []
    if subject_ids:
        return [(s, "", set(), set(), None) for s in dict.fromkeys(subject_ids)]
    subject_id = note.subject_id or getattr(request, "subject_id", "") or None
    category = getattr(request, "category", "") or ""
    categories = set(note.categories) | ({category} if category else set())
    purpose = note.purpose or getattr(request, "purpose", "") or ""
    return [(subject_id, purpose, categories, note.fields, None)]


class AuditRecorder:
    """Turns a finished RPC into an audit entry; checkpoints the chain periodically."""

    def __init__(self, audit: AuditLog, catalog: Catalog) -> None:
        self.audit = audit
        self._catalog = catalog
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def build(
        cls,
        storage: Storage,
        kms: KeyManager,
        clock: Clock,
        catalog: Catalog,
        full_walk_pause: timedelta = timedelta(seconds=300),
    ) -> AuditRecorder:
        """The recorder over ``storage``; walks of the whole chain by this server are
        ``full_walk_pause`` apart at least (zero: no limit)."""
        full_walks = (
            Throttle(full_walk_pause, clock, "a full walk of the audit chain")
            if full_walk_pause > timedelta(0)
            else None
        )
        audit = AuditLog(storage, kms, clock, signing_key_id(storage, clock), full_walks)
        audit.ensure_signing_key()
        return cls(audit, catalog)

    def record(
        self,
        *,
        method: str,
        caller: str,
        request: Any,
        note: AccessNote,
        outcome: str,
        request_id: str,
    ) -> None:
        """Append the call's entries (one per subject it touched), in their own
        transaction.

        Raises:
            Unavailable: they could not be written (no audit, no access).
        """
        self.audit.append_many(
            self.events(
                method=method,
                caller=caller,
                request=request,
                note=note,
                outcome=outcome,
                request_id=request_id,
            )
        )

    def ride(
        self, *, method: str, caller: str, request: Any, note: AccessNote, request_id: str
    ) -> AuditRide:
        """The call's OK entries, to be written in the transaction of its change (the
        repository that makes it calls vault.storage.audit_log.write_rides). They are
        made when written: by then the call has noted what it touched."""
        return AuditRide(
            lambda: self.audit.stamped(
                self.events(
                    method=method,
                    caller=caller,
                    request=request,
                    note=note,
                    outcome="OK",
                    request_id=request_id,
                )
            )
        )

    def events(
        self,
        *,
        method: str,
        caller: str,
        request: Any,
        note: AccessNote,
        outcome: str,
        request_id: str,
    ) -> list[AuditEvent]:
        """The call's entries: one per subject (and purpose) it touched."""
        action = ".".join(rpc_name(method))
        return [
            AuditEvent(
                caller=caller,
                action=action,
                subject_id=subject_id,
                categories=tuple(sorted(categories)),
                fields=tuple(sorted(fields)),
                purpose=purpose,
                outcome=item_outcome or outcome,
                request_id=request_id,
            )
            for subject_id, purpose, categories, fields, item_outcome in _catalog_names(
                self._catalog, _shares(request, note)
            )
        ]

    def start_checkpoints(
        self, every_seconds: float, seal_every_seconds: float = SEAL_INTERVAL_SECONDS
    ) -> None:
        """Seal recorded entries into the chain every ``seal_every_seconds``, and sign
        the chain head every ``every_seconds`` (any replica may do either: both are
        idempotent and serialized by the database)."""
        self._every(
            seal_every_seconds, "audit-seal", "audit_seal_failed", self.audit.seal_if_pending
        )
        self._every(
            every_seconds, "audit-checkpoints", "audit_checkpoint_failed", self.audit.checkpoint
        )

    def _every(self, seconds: float, name: str, failed: str, tick: Callable[[], object]) -> None:
        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    tick()
                except Exception as e:  # keep serving; the next tick tries again
                    log.error(failed, error_type=type(e).__name__)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop the background work; seal what this server recorded (best effort: any
        other replica's sealer, or the next start, seals what is left)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        try:
            self.audit.seal()
        except Exception as e:
            log.warning("audit_seal_failed", error_type=type(e).__name__)
