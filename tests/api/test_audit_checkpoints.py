"""VerifyAudit's incremental and full walks, and checkpoints kept outside the database,
end to end through gRPC and the CLI, on SQLite + local keystore and PostgreSQL + the
real OpenBao (Transit ed25519)."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from kms.signatures import verify_offline
from oubli_client import OubliClient
from oubli_client.errors import ResourceExhausted
from tests.clock import FakeClock
from tests.stack import TEST_TOKEN, Stack, stack_fixture
from vault.app.cli import app
from vault.audit.chain import AuditLog
from vault.audit.entries import GENESIS_HASH, checkpoint_message, entry_hash
from vault.clock import utc_now

START = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
FULL_WALK_PAUSE = timedelta(seconds=300)  # ServerConfig's default


@pytest.fixture(params=["sqlite+local", "postgresql+vault"])
def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, FakeClock]]:
    """The ``stack`` fixture's two stacks, with a clock the test moves."""
    clock = FakeClock(START)
    for stack in stack_fixture(request, tmp_path, clock=clock):
        yield stack, clock


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner(env={"OUBLI_TOKEN": TEST_TOKEN}).invoke(app, list(args))
    return result.exit_code, result.stdout


def add_entries(client: OubliClient, subject_id: str, changes: int) -> None:
    """1 audit entry per change (OK, written in the record's own transaction)."""
    for n in range(changes):
        client.create_record(subject_id, "usage", {"page": f"/{n}"}, "web")


def another_replica(stack: Stack) -> AuditLog:
    """Signs checkpoints the measured server never verifies itself (so it has nothing
    in memory to go by, like a server started after the checkpoints were deleted)."""
    return AuditLog(stack.storage, stack.kms, utc_now, stack.server.audit.audit.signing_key_id)


def rechain_from(stack: Stack, seq: int) -> None:
    """Rewrite entry ``seq`` and recompute every hash after it (write access to the
    database, no access to the signing key)."""
    entries = another_replica(stack).query(limit=10_000)
    prev_hash = GENESIS_HASH if seq == 1 else entries[seq - 2].hash
    with stack.storage.engine.begin() as c:
        for entry in entries[seq - 1 :]:
            event = replace(entry.event, caller="support") if entry.seq == seq else entry.event
            digest = entry_hash(prev_hash, entry.seq, entry.at, event)
            c.execute(
                text(
                    "UPDATE audit_entries SET caller = :caller, prev_hash = :prev, hash = :hash "
                    "WHERE seq = :seq"
                ),
                {"caller": event.caller, "prev": prev_hash, "hash": digest, "seq": entry.seq},
            )
            prev_hash = digest


def delete_checkpoints(stack: Stack) -> None:
    with stack.storage.engine.begin() as c:
        c.execute(text("DELETE FROM audit_checkpoints"))


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_verify_is_incremental_and_full_walks_are_rate_limited(
    clocked: tuple[Stack, FakeClock],
) -> None:
    stack, clock = clocked
    client = stack.client
    sid = client.create_subject().subject_id
    add_entries(client, sid, 3)

    # No checkpoint yet: the default verification walks from seq 1, and counts as full.
    assert client.verify_audit().full
    with pytest.raises(ResourceExhausted) as caught:
        client.verify_audit(full=True)
    assert caught.value.reason == "RATE_LIMITED"
    assert caught.value.retry_after == FULL_WALK_PAUSE.total_seconds()

    checkpoint = stack.server.audit.audit.checkpoint()
    assert checkpoint is not None
    add_entries(client, sid, 1)
    for _ in range(3):  # from the checkpoint on: cheap, never limited
        result = client.verify_audit()
        assert (result.ok, result.full, result.checkpoint_seq) == (True, False, checkpoint.seq)
    # The checkpointed entry, the change's, and the verifications' own.
    assert result.checked == 1 + 1 + 2

    clock.set(START + FULL_WALK_PAUSE)
    full = client.verify_audit(full=True)
    assert full.ok and full.full and full.checked > result.checked
    code, out = cli("audit", "verify", "--full", "--target", stack.target)
    assert code == 2  # the pause starts again after each full walk
    code, out = cli("audit", "verify", "--target", stack.target)
    assert code == 0 and json.loads(out)["full"] is False


def test_export_checkpoints_writes_a_private_file_that_verifies_offline(
    clocked: tuple[Stack, FakeClock], tmp_path: Path, umask_022: None
) -> None:
    stack, _ = clocked
    sid = stack.client.create_subject().subject_id
    replica = another_replica(stack)
    for _ in range(3):
        add_entries(stack.client, sid, 1)
        replica.checkpoint()
    existing = tmp_path / "checkpoints.jsonl"
    existing.write_text("old\n")
    existing.chmod(0o644)

    code, _ = cli("audit", "export-checkpoints", "-o", str(existing), "--target", stack.target)

    assert code == 0
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in existing.read_text().splitlines()]
    assert len(lines) >= 3  # at least the three checkpoints made above: none is vacuous
    assert [line["seq"] for line in lines] == [c.seq for c in replica.checkpoints_after(0)]
    for line in lines:
        assert line["key_id"] == replica.signing_key_id and line["key_version"] == 1
        signature = base64.b64decode(line["signature"])
        public_key = base64.b64decode(line["public_key"])
        # Anyone holding the file checks it without the KMS (Transit's or the keystore's).
        assert verify_offline(public_key, checkpoint_message(line["seq"], line["hash"]), signature)
    fresh = tmp_path / "new.jsonl"
    code, _ = cli("audit", "export-checkpoints", "-o", str(fresh), "--target", stack.target)
    assert code == 0 and stat.S_IMODE(fresh.stat().st_mode) == 0o600
    code, out = cli("audit", "export-checkpoints", "--target", stack.target)
    assert code == 0 and len(out.splitlines()) == 3


def test_export_refuses_a_forged_checkpoint_in_the_database(
    clocked: tuple[Stack, FakeClock], tmp_path: Path
) -> None:
    stack, _ = clocked
    add_entries(stack.client, stack.client.create_subject().subject_id, 1)
    another_replica(stack).checkpoint()
    with stack.storage.engine.begin() as c:
        c.execute(text("UPDATE audit_checkpoints SET hash = :h"), {"h": "e" * 64})
    output = tmp_path / "checkpoints.jsonl"

    code, _ = cli("audit", "export-checkpoints", "-o", str(output), "--target", stack.target)

    assert code == 1 and not output.exists()


def test_deleted_checkpoints_and_a_rechained_rewrite_are_caught_by_the_export(
    clocked: tuple[Stack, FakeClock], tmp_path: Path
) -> None:
    stack, clock = clocked
    client = stack.client
    sid = client.create_subject().subject_id
    replica = another_replica(stack)
    add_entries(client, sid, 3)
    first = replica.checkpoint()
    add_entries(client, sid, 3)
    second = replica.checkpoint()
    add_entries(client, sid, 2)
    assert first is not None and second is not None
    export = tmp_path / "checkpoints.jsonl"
    assert cli("audit", "export-checkpoints", "-o", str(export), "--target", stack.target)[0] == 0

    delete_checkpoints(stack)
    rechain_from(stack, first.seq + 3)

    # Today's hole: without the copy, the rewritten chain verifies clean, full walk too.
    assert client.verify_audit(full=True).ok
    clock.set(START + FULL_WALK_PAUSE)  # no checkpoint left: every walk is a full one
    code, out = cli("audit", "verify", "--checkpoints", str(export), "--target", stack.target)

    assert code == 1
    result = json.loads(out)
    assert (result["first_broken_seq"], result["reason"]) == (second.seq, "CHECKPOINT_MISMATCH")
    assert f"between seq {first.seq + 1} and seq {second.seq}" in result["detail"]
    assert result["exported_checked"] == 1


def test_a_truncated_tail_is_caught_by_the_export(clocked: tuple[Stack, FakeClock]) -> None:
    stack, clock = clocked
    client = stack.client
    sid = client.create_subject().subject_id
    add_entries(client, sid, 4)
    checkpoint = another_replica(stack).checkpoint()
    add_entries(client, sid, 2)
    assert checkpoint is not None
    exported = client.list_audit_checkpoints().checkpoints  # the copy, kept elsewhere

    # The newest entries go, down past the exported checkpoint, and the checkpoints too.
    another_replica(stack).seal()  # what is cut is the chain's tail
    delete_checkpoints(stack)
    with stack.storage.engine.begin() as c:
        c.execute(text("DELETE FROM audit_entries WHERE seq >= :s"), {"s": checkpoint.seq - 2})

    assert client.verify_audit(full=True).ok
    clock.set(START + FULL_WALK_PAUSE)
    verdict = client.verify_audit(exported=exported)

    assert (verdict.ok, verdict.first_broken_seq, verdict.reason) == (
        False,
        checkpoint.seq,
        "CHECKPOINT_ENTRY_MISSING",
    )


@pytest.mark.parametrize(
    "content",
    [
        '{"seq": 1}\n',
        "not json\n",
        '{"seq": 1, "hash": "a", "at": "x", "signature": "!", "key_id": "k", "key_version": 1}\n',
    ],
)
def test_an_unreadable_checkpoints_file_stops_verify_before_any_call(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "checkpoints.jsonl"
    path.write_text(content)
    # Nothing listens on port 9: the file is refused before any call is made.
    result = CliRunner().invoke(
        app, ["audit", "verify", "--checkpoints", str(path), "--target", "127.0.0.1:9"]
    )
    assert result.exit_code == 2
    assert "invalid checkpoints file: line 1" in result.stderr
