"""The server's background work on the audit trail: sealing what was recorded, without
anyone reading the chain, and a last seal when it stops."""

from __future__ import annotations

import time

from sqlalchemy import text

from tests.memory_kms import InMemoryKeyManager
from vault.audit.chain import AuditLog
from vault.audit.entries import AuditEvent
from vault.audit.recorder import AuditRecorder
from vault.catalog import Catalog
from vault.clock import utc_now
from vault.storage import Storage

WAIT = 10.0  # seconds; only reached if the sealer never runs


def _chain_length(storage: Storage) -> int:
    with storage.engine.connect() as c:
        return int(c.execute(text("SELECT count(*) FROM audit_entries")).scalar_one())


def _event(n: int) -> AuditEvent:
    return AuditEvent(caller="billing", action="GetSubject", outcome="OK", request_id=f"r-{n}")


def test_the_background_sealer_chains_recorded_entries_and_a_stop_seals_the_rest(
    storage: Storage,
) -> None:
    kms = InMemoryKeyManager()
    audit = AuditLog(storage, kms, utc_now, "audit-checkpoints")
    audit.ensure_signing_key()
    recorder = AuditRecorder(audit, Catalog.load())
    recorder.start_checkpoints(every_seconds=3600, seal_every_seconds=0.05)
    try:
        audit.append(_event(1))
        deadline = time.monotonic() + WAIT
        while _chain_length(storage) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _chain_length(storage) == 1
    finally:
        recorder.stop()
    audit.append(_event(2))  # recorded after the threads stopped: stays pending
    assert _chain_length(storage) == 1 and audit.pending() == 1
    recorder.stop()  # stopping again seals it
    assert _chain_length(storage) == 2 and audit.pending() == 0
