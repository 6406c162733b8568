"""Wiring of the audit trail into the server: one entry per oubli RPC.

"No audit, no access": the entry is appended before a response leaves the server; if
the append fails the call fails with UNAVAILABLE and no data is returned. The entry
names the caller, the RPC, the pseudonymous subject id, the categories and field names
touched, the purpose and the outcome — never a value.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import structlog
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kms.base import KeyManager
from vault.access import AccessNote
from vault.audit import AuditEvent, AuditLog
from vault.callers import rpc_name
from vault.clock import Clock
from vault.errors import Unavailable
from vault.ids import RandomBytes, new_id
from vault.models import ServiceKeyRow
from vault.storage import Storage

log = structlog.get_logger("oubli.audit")

SIGNING_KEY_NAME = "audit-signing"


def signing_key_id(storage: Storage, clock: Clock, random_bytes: RandomBytes = os.urandom) -> str:
    """The audit signing key's (random) id, chosen once per database."""
    try:
        with storage.engine.begin() as c:
            found = c.execute(
                select(ServiceKeyRow.key_id).where(ServiceKeyRow.name == SIGNING_KEY_NAME)
            ).scalar()
            if found is not None:
                return str(found)
            key_id = new_id(random_bytes)
            c.execute(
                insert(ServiceKeyRow).values(
                    name=SIGNING_KEY_NAME,
                    key_id=key_id,
                    wrapped_dek=b"",  # a signing key: nothing is wrapped
                    key_version=0,
                    created_at=clock(),
                )
            )
            return key_id
    except IntegrityError:  # another replica chose first
        return signing_key_id(storage, clock, random_bytes)
    except SQLAlchemyError as e:
        raise Unavailable(f"database error: {type(e).__name__}") from e


class AuditRecorder:
    """Turns a finished RPC into an audit entry; checkpoints the chain periodically."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def build(cls, storage: Storage, kms: KeyManager, clock: Clock) -> AuditRecorder:
        audit = AuditLog(storage, kms, clock, signing_key_id(storage, clock))
        audit.ensure_signing_key()
        return cls(audit)

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
        subject_id = note.subject_id or getattr(request, "subject_id", "") or None
        purpose = getattr(request, "purpose", "") or ""
        category = getattr(request, "category", "") or ""
        categories = set(note.categories) | ({category} if category else set())
        self.audit.append(
            AuditEvent(
                caller=caller,
                action=".".join(rpc_name(method)),
                subject_id=subject_id,
                categories=tuple(sorted(categories)),
                fields=tuple(sorted(note.fields)),
                purpose=purpose,
                outcome=outcome,
                request_id=request_id,
            )
        )

    def start_checkpoints(self, every_seconds: float) -> None:
        """Sign the chain head every ``every_seconds`` (any replica may; it is idempotent)."""

        def loop() -> None:
            while not self._stop.wait(every_seconds):
                try:
                    self.audit.checkpoint()
                except Exception as e:  # keep serving; the next tick tries again
                    log.error("audit_checkpoint_failed", error_type=type(e).__name__)

        self._thread = threading.Thread(target=loop, name="audit-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
