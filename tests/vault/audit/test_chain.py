"""The audit log: a hash chain that names the first entry anyone edited, deleted or moved."""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from kms.base import KeyManager
from kms.local_keystore import LocalKeystore
from kms.signatures import verify_offline
from kms.vault_transit import VaultTransitKeyManager
from tests.clock import FakeClock
from tests.memory_kms import InMemoryKeyManager
from vault.audit.chain import MAX_QUERY_LIMIT, AuditLog
from vault.audit.entries import (
    GENESIS_HASH,
    INVALID,
    AuditEntry,
    AuditEvent,
    Checkpoint,
    checkpoint_message,
    entry_hash,
)
from vault.audit.throttle import Throttle
from vault.audit.verification import MAX_EXPORTED_CHECKPOINTS
from vault.errors import (
    AuditChainBroken,
    FailedPrecondition,
    InvalidArgument,
    RateLimited,
    Unavailable,
)
from vault.storage import Storage, make_engine, migrate

SIGNING_KEY = "audit-checkpoints"
START = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
QUEUE_TIMEOUT = 10.0  # seconds; only reached if a test fails (the appends never queue)
SUBJECT_A = "a" * 26
SUBJECT_B = "b" * 26


def ticking_clock(step: timedelta = timedelta(seconds=1)) -> Callable[[], datetime]:
    """A thread-safe clock that moves on by ``step`` at every reading."""
    ticks = itertools.count()
    return lambda: START + next(ticks) * step


def make_audit(storage: Storage, kms: KeyManager) -> AuditLog:
    audit = AuditLog(storage, kms, ticking_clock(), SIGNING_KEY)
    audit.ensure_signing_key()
    return audit


@pytest.fixture
def audit(storage: Storage, memory_kms: InMemoryKeyManager) -> AuditLog:
    return make_audit(storage, memory_kms)


def event(
    n: int = 0,
    *,
    subject_id: str | None = SUBJECT_A,
    caller: str = "billing",
    outcome: str = "OK",
) -> AuditEvent:
    return AuditEvent(
        caller=caller,
        action="GetRecord",
        subject_id=subject_id,
        categories=("contact", "billing"),
        fields=("email", "iban"),
        purpose="billing",
        outcome=outcome,
        request_id=f"req-{n}",
    )


def fill(audit: AuditLog, count: int) -> None:
    """Record ``count`` entries and seal them into the chain."""
    for n in range(count):
        audit.append(event(n))
    audit.seal()


def chained(audit: AuditLog, recorded: AuditEvent) -> AuditEntry:
    """Record ``recorded``, seal it, and return it as the chain holds it."""
    audit.append(recorded)
    assert audit.seal() == 1
    head = audit.query(after_seq=0, limit=MAX_QUERY_LIMIT)[-1]
    assert head.event.request_id == recorded.request_id
    return head


def sql(storage: Storage, statement: str, **params: object) -> None:
    """Tamper with the database behind oubli's back."""
    with storage.engine.begin() as connection:
        connection.execute(text(statement), params)


# --- the chain ------------------------------------------------------------------------


def test_append_and_verify_round_trip(audit: AuditLog) -> None:
    entries = [chained(audit, event(n)) for n in range(5)]

    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    for entry in entries:
        assert entry.hash == entry_hash(entry.prev_hash, entry.seq, entry.at, entry.event)

    result = audit.verify()

    assert result.ok, result
    assert (result.checked, result.first_broken_seq, result.reason) == (5, None, "OK")
    assert result.checkpoint_seq is None
    assert audit.query() == entries


def test_entry_hash_known_answer() -> None:
    recorded = AuditEvent(
        caller="dpo",
        action="ShredSubject",
        subject_id=SUBJECT_A,
        categories=("contact",),
        fields=(),
        purpose="erasure",
        outcome="OK",
        request_id="r1",
    )
    at = datetime(2026, 1, 2, 3, 4, 5, 6789, tzinfo=UTC)
    canonical = (
        '{"action":"ShredSubject","at":"2026-01-02T03:04:05.006789Z","caller":"dpo",'
        '"categories":["contact"],"fields":[],"outcome":"OK","purpose":"erasure",'
        f'"request_id":"r1","seq":7,"subject_id":"{SUBJECT_A}"}}'
    )
    expected = hashlib.sha256(("f" * 64 + "\n" + canonical).encode()).hexdigest()

    assert entry_hash("f" * 64, 7, at, recorded) == expected


def test_empty_log_verifies(audit: AuditLog) -> None:
    result = audit.verify()
    assert result.ok and result.checked == 0
    assert audit.checkpoint() is None


def test_edited_row_is_named(audit: AuditLog, storage: Storage) -> None:
    fill(audit, 5)
    sql(storage, "UPDATE audit_entries SET purpose = 'marketing' WHERE seq = 3")

    result = audit.verify()

    assert not result.ok
    assert (result.first_broken_seq, result.reason, result.checked) == (3, "HASH_MISMATCH", 2)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("caller", "support"),
        ("action", "ExportSubject"),
        ("subject_id", SUBJECT_B),
        ("categories", '["contact"]'),
        ("fields", '["email", "phone"]'),
        ("outcome", "PERMISSION_DENIED"),
        ("request_id", "req-other"),
        ("at", "2020-01-01 00:00:00.000000"),
    ],
)
def test_every_column_is_covered_by_the_hash(
    audit: AuditLog, storage: Storage, column: str, value: str
) -> None:
    fill(audit, 4)
    sql(storage, f"UPDATE audit_entries SET {column} = :value WHERE seq = 2", value=value)

    result = audit.verify()

    assert (result.ok, result.first_broken_seq, result.reason) == (False, 2, "HASH_MISMATCH")


@pytest.mark.parametrize("stored", ["not json", '"~invalid"', "null", "[1]", '{"a": 1}'])
def test_unreadable_lists_are_edits(audit: AuditLog, storage: Storage, stored: str) -> None:
    # The entry was written with a non-name (recorded as ~invalid): garbage written over
    # it must not read back as that same ~invalid and keep the hash intact.
    chained(audit, event(1))
    chained(
        audit, AuditEvent(caller="billing", action="GetRecord", categories=("a b",), outcome="OK")
    )
    chained(audit, event(3))
    assert audit.verify().ok
    sql(storage, "UPDATE audit_entries SET categories = :stored WHERE seq = 2", stored=stored)

    result = audit.verify()

    assert (result.first_broken_seq, result.reason) == (2, "HASH_MISMATCH")
    assert audit.query()[1].event.categories == (INVALID,)


def test_unparsable_time_on_sqlite_is_an_edit(
    sqlite_url: str, memory_kms: InMemoryKeyManager
) -> None:
    # SQLite keeps whatever text an editor writes into a DATETIME column.
    engine = make_engine(sqlite_url)
    migrate(engine)
    storage = Storage(engine)
    try:
        audit = make_audit(storage, memory_kms)
        fill(audit, 3)
        sql(storage, "UPDATE audit_entries SET at = 'yesterday' WHERE seq = 2")

        result = audit.verify()

        assert (result.first_broken_seq, result.reason) == (2, "HASH_MISMATCH")
    finally:
        engine.dispose()


def test_edited_row_with_recomputed_hash_breaks_the_next_link(
    audit: AuditLog, storage: Storage
) -> None:
    entries = [chained(audit, event(n)) for n in range(5)]
    third = entries[2]
    forged = AuditEvent(
        caller=third.event.caller,
        action=third.event.action,
        subject_id=third.event.subject_id,
        categories=third.event.categories,
        fields=third.event.fields,
        purpose="marketing",
        outcome=third.event.outcome,
        request_id=third.event.request_id,
    )
    sql(
        storage,
        "UPDATE audit_entries SET purpose = 'marketing', hash = :hash WHERE seq = 3",
        hash=entry_hash(third.prev_hash, 3, third.at, forged),
    )

    result = audit.verify()

    assert (result.first_broken_seq, result.reason) == (4, "PREV_HASH_MISMATCH")


def test_deleted_middle_row_names_the_next(audit: AuditLog, storage: Storage) -> None:
    fill(audit, 5)
    sql(storage, "DELETE FROM audit_entries WHERE seq = 3")

    result = audit.verify()

    assert (result.ok, result.first_broken_seq, result.reason) == (False, 4, "SEQ_GAP")
    assert result.checked == 2


def test_deleted_first_row_is_found(audit: AuditLog, storage: Storage) -> None:
    fill(audit, 3)
    sql(storage, "DELETE FROM audit_entries WHERE seq = 1")

    assert audit.verify().first_broken_seq == 2


def test_deleted_and_renumbered_rows_break_the_link(audit: AuditLog, storage: Storage) -> None:
    fill(audit, 5)
    sql(storage, "DELETE FROM audit_entries WHERE seq = 3")
    for seq in (4, 5):
        sql(storage, "UPDATE audit_entries SET seq = :new WHERE seq = :old", new=seq - 1, old=seq)

    result = audit.verify()

    assert (result.first_broken_seq, result.reason) == (3, "PREV_HASH_MISMATCH")


_CONTENT = (
    "at",
    "caller",
    "action",
    "subject_id",
    "categories",
    "fields",
    "purpose",
    "outcome",
    "request_id",
    "prev_hash",
    "hash",
)


@pytest.mark.parametrize(("first", "second"), [(2, 4), (3, 4), (1, 5)])
@pytest.mark.parametrize("with_hashes", [True, False], ids=["whole-rows", "fields-only"])
def test_swapped_rows_name_the_first(
    audit: AuditLog, storage: Storage, first: int, second: int, with_hashes: bool
) -> None:
    fill(audit, 5)
    columns = _CONTENT if with_hashes else _CONTENT[:-2]
    with storage.engine.begin() as connection:
        rows = {
            seq: connection.execute(
                text(f"SELECT {', '.join(columns)} FROM audit_entries WHERE seq = :seq"),
                {"seq": seq},
            ).one()
            for seq in (first, second)
        }
        assignments = ", ".join(f"{column} = :{column}" for column in columns)
        for seq, other in ((first, second), (second, first)):
            connection.execute(
                text(f"UPDATE audit_entries SET {assignments} WHERE seq = :seq"),
                {**rows[other]._asdict(), "seq": seq},
            )

    result = audit.verify()

    assert not result.ok
    assert result.first_broken_seq == first
    assert result.checked == first - 1


# --- checkpoints ----------------------------------------------------------------------


def test_checkpoint_signs_the_head(audit: AuditLog, memory_kms: InMemoryKeyManager) -> None:
    fill(audit, 4)
    head = audit.query()[-1]

    checkpoint = audit.checkpoint()

    assert checkpoint is not None
    assert (checkpoint.seq, checkpoint.hash, checkpoint.key_id) == (4, head.hash, SIGNING_KEY)
    assert checkpoint.message == checkpoint_message(4, head.hash)
    assert memory_kms.verify(SIGNING_KEY, checkpoint.message, checkpoint.signature)
    # Anyone with the public key checks it without the KMS.
    assert verify_offline(audit.public_key(), checkpoint.message, checkpoint.signature)
    assert audit.checkpoints() == [checkpoint]
    result = audit.verify()
    assert result.ok and result.checkpoint_seq == 4


def test_checkpoint_of_a_signed_head_is_reused(
    audit: AuditLog, memory_kms: InMemoryKeyManager
) -> None:
    fill(audit, 2)
    first = audit.checkpoint()
    calls = memory_kms.calls

    assert audit.checkpoint() == first
    assert memory_kms.calls == calls
    chained(audit, event())
    second = audit.checkpoint()
    assert second is not None and second.seq == 3
    assert [c.seq for c in audit.checkpoints()] == [3, 2]


def test_a_head_another_replica_signed_first_keeps_their_checkpoint(
    audit: AuditLog, storage: Storage, memory_kms: InMemoryKeyManager
) -> None:
    fill(audit, 3)
    other = AuditLog(storage, memory_kms, ticking_clock(timedelta(hours=1)), SIGNING_KEY)
    real_sign = audit._signing_key.sign
    theirs: list[Checkpoint | None] = []

    def sign_after_the_other_replica(seq: int, head_hash: str) -> bytes:
        theirs.append(other.checkpoint())  # stores its checkpoint of the same head first
        return real_sign(seq, head_hash)

    audit._signing_key.sign = sign_after_the_other_replica  # type: ignore[method-assign]

    ours = audit.checkpoint()

    assert theirs[0] is not None and ours == theirs[0]
    assert audit.checkpoints() == [theirs[0]]
    assert audit.verify().ok


def test_truncated_tail_after_a_checkpoint_is_found(audit: AuditLog, storage: Storage) -> None:
    fill(audit, 6)
    checkpoint = audit.checkpoint()
    assert checkpoint is not None
    sql(storage, "DELETE FROM audit_entries WHERE seq >= 5")

    result = audit.verify()

    assert (result.ok, result.reason) == (False, "CHECKPOINT_ENTRY_MISSING")
    assert result.first_broken_seq == checkpoint.seq == 6
    assert result.checked == 4
    with pytest.raises(AuditChainBroken):
        audit.checkpoint()


def test_truncation_after_the_newest_checkpoint_is_invisible(
    audit: AuditLog, storage: Storage
) -> None:
    # The documented limit: entries newer than the newest checkpoint have no witness.
    fill(audit, 3)
    audit.checkpoint()
    fill(audit, 3)
    sql(storage, "DELETE FROM audit_entries WHERE seq >= 5")

    assert audit.verify().ok


def test_rewritten_chain_is_caught_by_the_checkpoint(audit: AuditLog, storage: Storage) -> None:
    entries = [chained(audit, event(n)) for n in range(5)]
    audit.checkpoint()
    # Rewrite entry 2 and recompute every hash after it: the chain is consistent again.
    prev_hash = entries[0].hash
    for entry in entries[1:]:
        recorded = entry.event
        if entry.seq == 2:
            recorded = AuditEvent(
                caller="support",
                action=recorded.action,
                subject_id=recorded.subject_id,
                categories=recorded.categories,
                fields=recorded.fields,
                purpose=recorded.purpose,
                outcome=recorded.outcome,
                request_id=recorded.request_id,
            )
        digest = entry_hash(prev_hash, entry.seq, entry.at, recorded)
        sql(
            storage,
            "UPDATE audit_entries SET caller = :caller, prev_hash = :prev, hash = :hash "
            "WHERE seq = :seq",
            caller=recorded.caller,
            prev=prev_hash,
            hash=digest,
            seq=entry.seq,
        )
        prev_hash = digest

    result = audit.verify()

    assert (result.ok, result.first_broken_seq, result.reason) == (
        False,
        5,
        "CHECKPOINT_MISMATCH",
    )


def test_forged_checkpoint_signature_fails(audit: AuditLog, storage: Storage) -> None:
    fill(audit, 3)
    checkpoint = audit.checkpoint()
    assert checkpoint is not None
    forged = bytearray(checkpoint.signature)
    forged[10] ^= 0x01
    with storage.engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_checkpoints SET signature = :signature WHERE seq = 3"),
            {"signature": bytes(forged)},
        )

    result = audit.verify()

    assert (result.ok, result.first_broken_seq, result.reason) == (
        False,
        3,
        "CHECKPOINT_SIGNATURE_INVALID",
    )


def test_checkpoint_signed_by_another_key_fails(audit: AuditLog, storage: Storage) -> None:
    # The attacker rewrites the head and signs it with a key of their own.
    fill(audit, 3)
    audit.checkpoint()
    rogue_kms = InMemoryKeyManager()
    rogue = AuditLog(storage, rogue_kms, ticking_clock(), SIGNING_KEY)
    rogue.ensure_signing_key()
    head = audit.query()[-1]
    with storage.engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_checkpoints SET signature = :signature WHERE seq = 3"),
            {"signature": rogue_kms.sign(SIGNING_KEY, checkpoint_message(3, head.hash))},
        )

    result = audit.verify()

    assert (result.first_broken_seq, result.reason) == (3, "CHECKPOINT_SIGNATURE_INVALID")


def test_checkpoint_refuses_to_sign_a_broken_chain(audit: AuditLog, storage: Storage) -> None:
    fill(audit, 3)
    audit.checkpoint()
    fill(audit, 3)
    sql(storage, "UPDATE audit_entries SET outcome = 'OK_REALLY' WHERE seq = 5")

    with pytest.raises(AuditChainBroken) as caught:
        audit.checkpoint()

    assert caught.value.metadata == {"seq": "5"}
    assert [c.seq for c in audit.checkpoints()] == [3]


def test_checkpoint_rechecks_the_previously_signed_entry(audit: AuditLog, storage: Storage) -> None:
    fill(audit, 3)
    audit.checkpoint()
    chained(audit, event())
    sql(storage, "UPDATE audit_entries SET purpose = 'marketing' WHERE seq = 3")

    with pytest.raises(AuditChainBroken):
        audit.checkpoint()


def test_checkpoint_needs_the_signing_key(storage: Storage, memory_kms: InMemoryKeyManager) -> None:
    audit = AuditLog(storage, memory_kms, ticking_clock(), SIGNING_KEY)
    chained(audit, event())

    with pytest.raises(FailedPrecondition) as caught:
        audit.checkpoint()
    assert caught.value.reason == "AUDIT_SIGNING_KEY_MISSING"

    audit.ensure_signing_key()
    audit.ensure_signing_key()  # idempotent
    assert audit.checkpoint() is not None


def test_checkpoint_when_the_kms_is_down(audit: AuditLog, memory_kms: InMemoryKeyManager) -> None:
    fill(audit, 2)
    memory_kms.unavailable = True

    with pytest.raises(Unavailable):
        audit.checkpoint()
    # Appends do not need the KMS.
    chained(audit, event())


def test_verify_with_the_signing_key_gone(audit: AuditLog, memory_kms: InMemoryKeyManager) -> None:
    fill(audit, 2)
    audit.checkpoint()
    memory_kms.destroy_key(SIGNING_KEY)

    result = audit.verify()

    assert (result.ok, result.reason, result.first_broken_seq) == (
        False,
        "CHECKPOINT_KEY_MISSING",
        2,
    )


def test_checkpoints_with_the_local_keystore(storage: Storage, tmp_path: Path) -> None:
    keystore = LocalKeystore(tmp_path / "keystore" / "keys.db")
    try:
        audit = make_audit(storage, keystore)
        fill(audit, 3)
        checkpoint = audit.checkpoint()
        assert checkpoint is not None
        assert verify_offline(
            keystore.public_key(SIGNING_KEY), checkpoint.message, checkpoint.signature
        )
        assert audit.verify().ok

        sql(storage, "DELETE FROM audit_entries WHERE seq = 3")
        assert audit.verify().reason == "CHECKPOINT_ENTRY_MISSING"
    finally:
        keystore.close()


def test_checkpoints_with_openbao(storage: Storage, vault_kms: VaultTransitKeyManager) -> None:
    audit = make_audit(storage, vault_kms)
    fill(audit, 3)

    checkpoint = audit.checkpoint()

    assert checkpoint is not None
    assert checkpoint.signature.startswith(b"vault:v1:")
    assert verify_offline(audit.public_key(), checkpoint.message, checkpoint.signature)
    assert audit.verify().ok
    sql(storage, "UPDATE audit_checkpoints SET signature = :s", s=b"vault:v1:" + b"A" * 88)
    assert audit.verify().reason == "CHECKPOINT_SIGNATURE_INVALID"


# --- incremental verification ---------------------------------------------------------


def rechain_from(storage: Storage, audit: AuditLog, seq: int, caller: str = "support") -> None:
    """Rewrite entry ``seq`` and recompute every hash after it, as an attacker with write
    access to the database would: the chain is consistent again."""
    entries = audit.query(limit=10_000)
    prev_hash = GENESIS_HASH if seq == 1 else entries[seq - 2].hash
    for entry in entries[seq - 1 :]:
        recorded = replace(entry.event, caller=caller) if entry.seq == seq else entry.event
        digest = entry_hash(prev_hash, entry.seq, entry.at, recorded)
        sql(
            storage,
            "UPDATE audit_entries SET caller = :caller, prev_hash = :prev, hash = :hash "
            "WHERE seq = :seq",
            caller=recorded.caller,
            prev=prev_hash,
            hash=digest,
            seq=entry.seq,
        )
        prev_hash = digest


def another_replica(storage: Storage, kms: KeyManager) -> AuditLog:
    """A second AuditLog in this process that never verified anything: what a restarted
    server, or another replica, starts from."""
    return AuditLog(storage, kms, ticking_clock(), SIGNING_KEY)


def test_incremental_verify_walks_only_from_the_newest_checkpoint(audit: AuditLog) -> None:
    fill(audit, 10)
    audit.checkpoint()
    fill(audit, 5)

    incremental = audit.verify(full=False)
    full = audit.verify(full=True)

    # The checkpointed entry (its hash recomputed, its signature checked), then 11..15.
    assert (incremental.ok, incremental.checked, incremental.full) == (True, 6, False)
    assert incremental.checkpoint_seq == 10
    assert (full.ok, full.checked, full.full) == (True, 15, True)


def test_incremental_verify_without_a_checkpoint_walks_everything(audit: AuditLog) -> None:
    fill(audit, 4)

    result = audit.verify(full=False)

    assert (result.ok, result.checked, result.full) == (True, 4, True)


def test_incremental_verify_catches_a_rechained_rewrite_before_the_checkpoint(
    audit: AuditLog, storage: Storage, memory_kms: InMemoryKeyManager
) -> None:
    fill(audit, 8)
    audit.checkpoint()
    fill(audit, 2)
    rechain_from(storage, audit, 3)

    # This process and one that never saw the chain both find it: the checkpointed
    # entry no longer hashes to what was signed.
    for log in (audit, another_replica(storage, memory_kms)):
        result = log.verify(full=False)
        assert (result.ok, result.first_broken_seq, result.reason) == (
            False,
            8,
            "CHECKPOINT_MISMATCH",
        )


def test_an_unchained_edit_before_the_checkpoint_takes_a_full_walk(
    audit: AuditLog, storage: Storage
) -> None:
    # The documented limit of the incremental check: an edit before the checkpoint
    # that nobody re-chained leaves the checkpointed entry's hash as it was.
    fill(audit, 6)
    audit.checkpoint()
    fill(audit, 2)
    sql(storage, "UPDATE audit_entries SET purpose = 'marketing' WHERE seq = 3")

    assert audit.verify(full=False).ok
    full = audit.verify(full=True)
    assert (full.ok, full.first_broken_seq, full.reason) == (False, 3, "HASH_MISMATCH")


def test_incremental_verify_finds_the_checkpointed_entry_missing(
    audit: AuditLog, storage: Storage, memory_kms: InMemoryKeyManager
) -> None:
    fill(audit, 6)
    audit.checkpoint()
    sql(storage, "DELETE FROM audit_entries WHERE seq >= 5")

    result = another_replica(storage, memory_kms).verify(full=False)

    assert (result.ok, result.first_broken_seq, result.reason) == (
        False,
        6,
        "CHECKPOINT_ENTRY_MISSING",
    )


def test_incremental_verify_checks_the_checkpoint_signature(
    audit: AuditLog, storage: Storage
) -> None:
    fill(audit, 3)
    audit.checkpoint()
    sql(storage, "UPDATE audit_checkpoints SET signature = :s", s=b"\x01" + b"\x00" * 64)

    result = audit.verify(full=False)

    assert (result.first_broken_seq, result.reason) == (3, "CHECKPOINT_SIGNATURE_INVALID")


def test_the_server_that_verified_a_checkpoint_notices_its_deletion(
    audit: AuditLog, storage: Storage, memory_kms: InMemoryKeyManager
) -> None:
    fill(audit, 5)
    audit.checkpoint()
    fill(audit, 5)
    audit.checkpoint()
    assert audit.verify(full=False).ok
    sql(storage, "DELETE FROM audit_checkpoints WHERE seq = 10")

    result = audit.verify(full=False)

    assert (result.ok, result.first_broken_seq, result.reason) == (
        False,
        10,
        "CHECKPOINT_DELETED",
    )
    # It will not sign over the gap either; a process that never saw seq 10's
    # checkpoint (restarted) has nothing to go by: hence the exported copies.
    with pytest.raises(AuditChainBroken):
        audit.checkpoint()
    assert another_replica(storage, memory_kms).verify(full=True).ok


def test_a_rechained_rewrite_with_its_checkpoints_deleted_is_caught_by_the_exported_copy(
    audit: AuditLog, storage: Storage, memory_kms: InMemoryKeyManager
) -> None:
    fill(audit, 5)
    first = audit.checkpoint()
    fill(audit, 5)
    second = audit.checkpoint()
    fill(audit, 3)
    exported = audit.checkpoints_after(0)
    assert [c.seq for c in exported] == [5, 10] and (first, second) == tuple(exported)

    sql(storage, "DELETE FROM audit_checkpoints")
    rechain_from(storage, audit, 7)
    restarted = another_replica(storage, memory_kms)

    # Without the copy, the rewritten chain verifies clean.
    assert restarted.verify(full=True).ok
    assert restarted.verify(full=False).ok
    for mode in (False, True):
        result = restarted.verify(full=mode, exported=exported)
        assert (result.ok, result.first_broken_seq, result.reason) == (
            False,
            10,
            "CHECKPOINT_MISMATCH",
        )
        assert "between seq 6 and seq 10" in result.detail
        assert result.exported_checked == 1  # seq 5 still matches


def test_a_truncated_tail_with_its_checkpoints_deleted_is_caught_by_the_exported_copy(
    audit: AuditLog, storage: Storage, memory_kms: InMemoryKeyManager
) -> None:
    fill(audit, 4)
    audit.checkpoint()
    fill(audit, 4)
    audit.checkpoint()
    fill(audit, 2)
    exported = audit.checkpoints_after(0)

    sql(storage, "DELETE FROM audit_checkpoints")
    sql(storage, "DELETE FROM audit_entries WHERE seq >= 7")
    restarted = another_replica(storage, memory_kms)

    assert restarted.verify(full=True).ok
    result = restarted.verify(full=False, exported=exported)
    assert (result.ok, result.first_broken_seq, result.reason) == (
        False,
        8,
        "CHECKPOINT_ENTRY_MISSING",
    )


def test_an_exported_copy_that_matches_verifies(audit: AuditLog) -> None:
    fill(audit, 3)
    audit.checkpoint()
    fill(audit, 3)
    audit.checkpoint()
    fill(audit, 1)

    result = audit.verify(full=False, exported=audit.checkpoints_after(0))

    assert (result.ok, result.exported_checked) == (True, 2)
    assert "2 exported checkpoints match" in result.detail


def test_an_altered_exported_copy_is_told_apart_from_a_broken_chain(audit: AuditLog) -> None:
    fill(audit, 3)
    audit.checkpoint()
    fill(audit, 3)
    genuine = audit.checkpoints_after(0)
    # A copy edited to accuse the chain: its hash no longer matches its signature.
    accusing = replace(genuine[0], hash="f" * 64)
    # A copy forged to vouch for the chain: right hash, signed by nobody.
    vouching = replace(genuine[0], seq=6, hash=audit.query()[-1].hash)
    rogue = replace(genuine[0], key_id="rogue")

    for copy in ([accusing], [*genuine, vouching], [rogue]):
        result = audit.verify(full=False, exported=copy)
        assert (result.ok, result.reason) == (False, "EXPORTED_CHECKPOINT_INVALID")


def test_exported_checkpoints_are_checked_for_shape(audit: AuditLog) -> None:
    fill(audit, 2)
    checkpoint = audit.checkpoint()
    assert checkpoint is not None
    for bad in (
        [replace(checkpoint, seq=0)],
        [replace(checkpoint, hash="not-a-hash")],
        [checkpoint, replace(checkpoint, hash="0" * 64)],
        [checkpoint] * (MAX_EXPORTED_CHECKPOINTS + 1),
    ):
        with pytest.raises(InvalidArgument) as caught:
            audit.verify(exported=bad)
        assert caught.value.field == "exported"
    assert audit.verify(exported=[checkpoint, checkpoint]).ok  # the same one twice


def test_checkpoints_after_pages_oldest_first(audit: AuditLog) -> None:
    for _ in range(3):
        fill(audit, 2)
        audit.checkpoint()

    assert [c.seq for c in audit.checkpoints_after(0)] == [2, 4, 6]
    assert [c.seq for c in audit.checkpoints_after(2, limit=1)] == [4]
    assert all(c.key_version == 1 for c in audit.checkpoints_after(0))
    with pytest.raises(InvalidArgument):
        audit.checkpoints_after(0, limit=0)


def test_full_walks_are_throttled(storage: Storage, memory_kms: InMemoryKeyManager) -> None:
    clock = FakeClock(START)
    throttle = Throttle(timedelta(seconds=60), clock, "a full walk of the audit chain")
    audit = AuditLog(storage, memory_kms, clock, SIGNING_KEY, full_walks=throttle)
    audit.ensure_signing_key()
    fill(audit, 3)

    assert audit.verify(full=False).full  # no checkpoint yet: a full walk, counted
    with pytest.raises(RateLimited) as caught:
        audit.verify(full=True)
    assert caught.value.retry_after == timedelta(seconds=60)
    with pytest.raises(RateLimited):
        audit.verify(full=False)

    audit.checkpoint()
    for _ in range(3):  # from the checkpoint on: not throttled
        assert not audit.verify(full=False).full

    clock.set(START + timedelta(seconds=60))
    assert audit.verify(full=True).ok


# --- concurrency ----------------------------------------------------------------------


def test_concurrent_appends_keep_a_single_chain(audit: AuditLog) -> None:
    threads, per_thread = 8, 25
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def appender(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                audit.append(event(n * 1000 + i, caller=f"caller-{n}"))
        except BaseException as e:  # reported below, with the thread's error
            errors.append(e)

    workers = [threading.Thread(target=appender, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    entries = audit.query(limit=1000)
    assert [e.seq for e in entries] == list(range(1, threads * per_thread + 1))
    assert len({e.event.request_id for e in entries}) == threads * per_thread
    result = audit.verify()
    assert result.ok and result.checked == threads * per_thread


def test_appends_waiting_on_a_write_share_the_next_commit(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: while one append writes, the others queue and go in one
    transaction; each caller's entry is recorded."""
    real_write = audit._write
    first = threading.Event()
    queued: list[bool] = []

    def held_first_write(events):  # type: ignore[no-untyped-def]
        if not first.is_set():  # holds until the 11 others have queued behind it
            first.set()
            queued.append(audit._group.wait_until_queued(11, QUEUE_TIMEOUT))
        return real_write(events)

    monkeypatch.setattr(audit, "_write", held_first_write)
    results: dict[int, str] = {}

    def appender(n: int) -> None:
        audit.append(event(n))
        results[n] = "recorded"

    workers = [threading.Thread(target=appender, args=(n,)) for n in range(12)]
    workers[0].start()
    assert first.wait(QUEUE_TIMEOUT)
    for worker in workers[1:]:
        worker.start()
    for worker in workers:
        worker.join()

    assert queued == [True]
    assert results == {n: "recorded" for n in range(12)}
    assert audit.transactions == 2  # the first alone, the 11 that queued together
    assert sorted(e.event.request_id for e in audit.query()) == sorted(
        f"req-{n}" for n in range(12)
    )
    assert audit.verify().ok


def test_a_failed_group_commit_fails_every_waiter(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = audit._write
    started = threading.Event()
    queued: list[bool] = []
    calls = itertools.count()

    def failing_second_write(events):  # type: ignore[no-untyped-def]
        if next(calls) == 0:  # holds until the 5 others have queued behind it
            started.set()
            queued.append(audit._group.wait_until_queued(5, QUEUE_TIMEOUT))
            return real_write(events)
        raise Unavailable("audit log write failed")

    monkeypatch.setattr(audit, "_write", failing_second_write)
    outcomes: dict[int, str] = {}

    def appender(n: int) -> None:
        try:
            audit.append(event(n))
            outcomes[n] = "ok"
        except Unavailable:
            outcomes[n] = "unavailable"

    workers = [threading.Thread(target=appender, args=(n,)) for n in range(6)]
    workers[0].start()
    assert started.wait(QUEUE_TIMEOUT)
    for worker in workers[1:]:
        worker.start()
    for worker in workers:
        worker.join()

    assert queued == [True]
    assert next(calls) == 2  # two writes: the first alone, the five together (failed)
    assert outcomes == {0: "ok", **{n: "unavailable" for n in range(1, 6)}}
    assert [e.seq for e in audit.query(limit=10)] == [1]
    monkeypatch.undo()
    chained(audit, event(99))  # the log is usable again: no writer left stuck
    assert audit.verify().ok


def test_concurrent_appends_from_two_audit_logs(storage: Storage) -> None:
    # Two replicas: separate AuditLog objects (and engines) over one database.
    second_engine = make_engine(storage.engine.url.render_as_string(hide_password=False))
    replicas = [
        AuditLog(storage, InMemoryKeyManager(), ticking_clock(), SIGNING_KEY),
        AuditLog(Storage(second_engine), InMemoryKeyManager(), ticking_clock(), SIGNING_KEY),
    ]
    try:
        workers = [
            threading.Thread(target=lambda log=log: [log.append(event(i)) for i in range(30)])
            for log in replicas
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        result = replicas[0].verify()
        assert result.ok and result.checked == 60
    finally:
        second_engine.dispose()


# --- recording, then sealing ----------------------------------------------------------


def _pending_rows(storage: Storage) -> list[Any]:
    with storage.engine.connect() as c:
        return list(c.execute(text("SELECT * FROM audit_pending ORDER BY id")))


def _chain_length(storage: Storage) -> int:
    with storage.engine.connect() as c:
        return int(c.execute(text("SELECT count(*) FROM audit_entries")).scalar_one())


def test_an_append_is_recorded_and_joins_the_chain_when_sealed(
    audit: AuditLog, storage: Storage
) -> None:
    audit.append_many([event(1), event(2)])
    audit.append(event(3))

    assert [row.request_id for row in _pending_rows(storage)] == ["req-1", "req-2", "req-3"]
    assert _chain_length(storage) == 0 and audit.pending() == 3

    assert audit.seal() == 3
    assert _pending_rows(storage) == [] and audit.pending() == 0
    entries = audit.query()
    assert [(e.seq, e.event.request_id) for e in entries] == [
        (1, "req-1"),
        (2, "req-2"),
        (3, "req-3"),
    ]
    assert entries[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in entries[1:]] == [e.hash for e in entries[:-1]]
    assert audit.seal() == 0 and audit.seal_if_pending() == 0
    assert audit.verify().ok


def test_reads_of_the_chain_seal_first(audit: AuditLog, storage: Storage) -> None:
    audit.append(event(1))
    assert [e.event.request_id for e in audit.query()] == ["req-1"]
    audit.append(event(2))
    assert audit.verify().checked == 2
    audit.append(event(3))
    checkpoint = audit.checkpoint()
    assert checkpoint is not None and checkpoint.seq == 3
    assert _pending_rows(storage) == []


def test_sealing_goes_in_batches(
    audit: AuditLog, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vault.audit.chain.SEAL_BATCH", 4)
    audit.append_many([event(n) for n in range(10)])
    transactions: list[int] = []
    real = storage.seal_pending_audit_entries

    def counted(chained, limit):  # type: ignore[no-untyped-def]
        sealed = real(chained, limit)
        transactions.append(sealed)
        return sealed

    monkeypatch.setattr(storage, "seal_pending_audit_entries", counted)
    assert audit.seal() == 10
    assert transactions == [4, 4, 2]
    assert [e.event.request_id for e in audit.query()] == [f"req-{n}" for n in range(10)]


def test_a_value_planted_in_a_pending_row_is_sealed_as_invalid(
    audit: AuditLog, storage: Storage
) -> None:
    audit.append(event(1))
    sql(
        storage,
        "UPDATE audit_pending SET purpose = 'jane@example.org', fields = :fields, "
        "subject_id = 'not a subject'",
        fields='["email", "+33 6 12 34 56 78"]',
    )
    audit.seal()

    (entry,) = audit.query()
    assert entry.event.purpose == INVALID and entry.event.subject_id == INVALID
    assert entry.event.fields == ("email", INVALID)
    assert audit.verify(full=True).ok


def test_a_pending_row_that_cannot_be_read_does_not_stop_the_seal(
    audit: AuditLog, storage: Storage
) -> None:
    audit.append(event(1))
    sql(storage, "UPDATE audit_pending SET categories = 'not json'")
    audit.append(event(2))
    assert audit.seal() == 2
    first, second = audit.query()
    assert first.event.categories == (INVALID,)
    assert second.event.categories == ("contact", "billing")
    assert audit.verify(full=True).ok


def test_a_failed_seal_moves_nothing(audit: AuditLog, storage: Storage) -> None:
    audit.append_many([event(1), event(2)])

    def broken(head, pending):  # type: ignore[no-untyped-def]
        raise Unavailable("audit log seal failed: OperationalError")

    with pytest.raises(Unavailable):
        storage.seal_pending_audit_entries(broken)
    assert len(_pending_rows(storage)) == 2 and _chain_length(storage) == 0
    assert audit.seal() == 2


def test_a_row_recorded_while_a_seal_runs_waits_for_the_next(pg_url: str) -> None:
    """The sealer deletes the pending rows it read, by id: a row another appender
    commits while the seal is running (PostgreSQL: appenders do not wait for the chain
    lock) stays pending, whatever its id, and is sealed next time."""
    engine = make_engine(pg_url)
    migrate(engine)
    storage = Storage(engine)
    audit = AuditLog(storage, InMemoryKeyManager(), ticking_clock(), SIGNING_KEY)
    other = AuditLog(Storage(make_engine(pg_url)), InMemoryKeyManager(), ticking_clock(), "")
    try:
        audit.append(event(1))
        real = audit._chained

        def chained_while_another_records(head, pending):  # type: ignore[no-untyped-def]
            other.append(event(2))  # committed while the seal holds the chain lock
            return real(head, pending)

        audit._chained = chained_while_another_records  # type: ignore[method-assign]
        assert storage.seal_pending_audit_entries(audit._chained) == 1
        assert [row.request_id for row in _pending_rows(storage)] == ["req-2"]
        audit._chained = real  # type: ignore[method-assign]
        assert audit.seal() == 1
        assert [e.event.request_id for e in audit.query()] == ["req-1", "req-2"]
        assert audit.verify(full=True).ok
    finally:
        other._storage.engine.dispose()
        engine.dispose()


def test_replicas_record_and_seal_side_by_side(storage: Storage) -> None:
    """Two replicas (own engines) record from 4 threads each while both seal in a loop:
    one chain, every entry once, in each appender's order."""
    second_engine = make_engine(storage.engine.url.render_as_string(hide_password=False))
    replicas = [
        AuditLog(storage, InMemoryKeyManager(), ticking_clock(), SIGNING_KEY),
        AuditLog(Storage(second_engine), InMemoryKeyManager(), ticking_clock(), SIGNING_KEY),
    ]
    appending = threading.Event()
    appending.set()
    errors: list[BaseException] = []

    def appender(log: AuditLog, n: int) -> None:
        try:
            for i in range(20):
                log.append(event(n * 100 + i, caller=f"caller-{n}"))
        except BaseException as e:
            errors.append(e)

    def sealer(log: AuditLog) -> None:
        try:
            while appending.is_set():
                log.seal()
        except BaseException as e:
            errors.append(e)

    appenders = [threading.Thread(target=appender, args=(replicas[n % 2], n)) for n in range(8)]
    sealers = [threading.Thread(target=sealer, args=(log,)) for log in replicas]
    try:
        for thread in appenders + sealers:
            thread.start()
        for thread in appenders:
            thread.join()
        appending.clear()
        for thread in sealers:
            thread.join()
        assert errors == []
        entries = replicas[1].query(limit=1000)
        assert [e.seq for e in entries] == list(range(1, 161))
        for n in range(8):
            mine = [e.event.request_id for e in entries if e.event.caller == f"caller-{n}"]
            assert mine == [f"req-{n * 100 + i}" for i in range(20)]
        assert replicas[0].verify(full=True).ok
    finally:
        second_engine.dispose()


# --- queries --------------------------------------------------------------------------


def test_query_filters(audit: AuditLog) -> None:
    a1 = chained(audit, event(1, subject_id=SUBJECT_A, caller="billing"))
    b1 = chained(audit, event(2, subject_id=SUBJECT_B, caller="support"))
    a2 = chained(audit, event(3, subject_id=SUBJECT_A, caller="support"))
    none = chained(audit, event(4, subject_id=None, caller="retention-job"))

    assert audit.query(subject_id=SUBJECT_A) == [a1, a2]
    assert audit.query(caller="support") == [b1, a2]
    assert audit.query(subject_id=SUBJECT_A, caller="support") == [a2]
    assert audit.query(since=b1.at) == [b1, a2, none]
    assert audit.query(until=a2.at) == [a1, b1]
    assert audit.query(since=b1.at, until=none.at) == [b1, a2]
    assert audit.query(limit=2) == [a1, b1]
    assert audit.query(limit=2, after_seq=2) == [a2, none]
    assert audit.query(subject_id="c" * 26) == []


def test_query_validates_its_arguments(audit: AuditLog) -> None:
    for limit in (0, -1, 10_001):
        with pytest.raises(InvalidArgument) as caught:
            audit.query(limit=limit)
        assert caught.value.field == "limit"
    with pytest.raises(InvalidArgument) as caught:
        audit.query(since=datetime(2026, 1, 1))
    assert caught.value.field == "since"


# --- no personal data -----------------------------------------------------------------


def test_values_that_are_not_names_are_never_stored(audit: AuditLog, storage: Storage) -> None:
    canaries = ["alice@example.com", "+33 6 12 34 56 78", "Alice Martin"]
    entry = chained(
        audit,
        AuditEvent(
            caller="billing",
            action="GetRecord",
            subject_id=canaries[0],
            categories=("contact", canaries[2]),
            fields=(canaries[1],),
            purpose=canaries[0],
            outcome="OK",
            request_id=canaries[2],
        ),
    )

    assert entry.event.subject_id == INVALID
    assert entry.event.categories == ("contact", INVALID)
    assert entry.event.fields == (INVALID,)
    assert entry.event.purpose == entry.event.request_id == INVALID
    with storage.engine.connect() as connection:
        dump = repr(connection.execute(text("SELECT * FROM audit_entries")).all())
    for canary in canaries:
        assert canary not in dump
    assert audit.verify().ok


def test_event_keeps_names_as_they_are() -> None:
    recorded = AuditEvent(
        caller="control-panel",
        action="/oubli.v1.RecordService/GetRecord",
        subject_id=SUBJECT_A,
        categories=["contact"],  # type: ignore[arg-type]
        fields=("email",),
        purpose="service",
        outcome="PERMISSION_DENIED",
        request_id="3f1c2a7e-0d7e-4c55-9a35-1f0c9e0e2b11",
    )
    assert recorded.action == "/oubli.v1.RecordService/GetRecord"
    assert recorded.categories == ("contact",)
    assert recorded.outcome == "PERMISSION_DENIED"


# --- the database is down -------------------------------------------------------------


@pytest.fixture
def unreachable_audit(memory_kms: InMemoryKeyManager) -> Iterator[AuditLog]:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    yield AuditLog(Storage(engine), memory_kms, ticking_clock(), SIGNING_KEY)
    engine.dispose()


def test_append_fails_when_the_database_is_unreachable(unreachable_audit: AuditLog) -> None:
    with pytest.raises(Unavailable) as caught:
        unreachable_audit.append(event())
    assert caught.value.message == "audit log write failed: OperationalError"


@pytest.mark.parametrize(
    ("operation", "failure"),
    [
        # Reads of the chain seal what was recorded first.
        ("query", "seal"),
        ("verify", "seal"),
        ("checkpoint", "seal"),
        ("seal", "seal"),
        ("checkpoints", "read"),
        ("pending", "read"),
    ],
)
def test_reads_fail_when_the_database_is_unreachable(
    unreachable_audit: AuditLog, operation: str, failure: str
) -> None:
    with pytest.raises(Unavailable) as caught:
        getattr(unreachable_audit, operation)()
    assert caught.value.message == f"audit log {failure} failed: OperationalError"


def test_append_fails_when_the_sqlite_file_is_gone(
    tmp_path: Path, memory_kms: InMemoryKeyManager
) -> None:
    # A database without the audit table (never migrated): the write fails, loudly.
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(Unavailable):
            AuditLog(Storage(engine), memory_kms, ticking_clock(), SIGNING_KEY).append(event())
    finally:
        engine.dispose()
