"""The audit tables as tests read them behind oubli's back.

Appends are recorded in ``audit_pending`` and sealed into ``audit_entries`` a moment
later (vault/audit/chain.py): a test that reads or edits the chain's rows seals first,
as any replica's sealer would, and a canary check reads both tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from kms.absent import AbsentKeyManager
from vault.audit.chain import AuditLog
from vault.clock import utc_now
from vault.storage import Storage


def seal(storage: Storage) -> int:
    """Seal every recorded entry into the chain; how many were sealed."""
    return AuditLog(storage, AbsentKeyManager(), utc_now, "").seal()


def chain_rows(storage: Storage, after_seq: int = 0) -> list[Any]:
    """The chain's rows after ``after_seq``, in seq order, once everything is sealed."""
    seal(storage)
    with storage.engine.connect() as c:
        return list(
            c.execute(
                text("SELECT * FROM audit_entries WHERE seq > :seq ORDER BY seq"),
                {"seq": after_seq},
            )
        )


def audit_dump(storage: Storage) -> str:
    """Every audit row, sealed or pending, as text (to look for a planted canary)."""
    with storage.engine.connect() as c:
        pending = c.execute(text("SELECT * FROM audit_pending")).all()
        chained = c.execute(text("SELECT * FROM audit_entries")).all()
    return repr(pending) + repr(chained)
