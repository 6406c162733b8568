"""The ``oubli`` command line: dev stack, subject commands, configuration errors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from oubli_client import NewRecord, OubliClient
from oubli_client.errors import OubliClientError
from oubli_client.v1 import vault_pb2 as pb
from tests.clock import FakeClock
from tests.integration.processes import ServerProcess
from tests.stack import TEST_TOKEN, Stack, stack_fixture
from vault.app.cli import _stream_to_file, app
from vault.usecases.export import EXPORT_PAGE

runner = CliRunner(env={"OUBLI_TOKEN": TEST_TOKEN})
RETENTION_START = datetime(2026, 3, 10, 14, 30, tzinfo=UTC)


@pytest.mark.openbao  # `oubli dev` starts its own OpenBao
def test_dev_starts_openbao_and_serves(tmp_path: Path) -> None:
    with (
        ServerProcess(tmp_path, "dev") as server,
        OubliClient(server.target, token=server.token) as client,
    ):
        subject = client.create_subject()
        client.create_record(subject.subject_id, "contact", {"email": "dev@example.org"})
        receipt = client.shred_subject(subject.subject_id)
        assert receipt.kms_backend == "vault-transit"
        code = server.stop()
    assert code == 0
    assert '"kms": "vault-transit"' in server.log()


def test_subject_commands_export_and_shred(stack: Stack, tmp_path: Path) -> None:
    subject = stack.client.create_subject()
    stack.client.create_record(subject.subject_id, "identity", {"given_name": "Zoé"})
    out = tmp_path / "export.json"
    result = runner.invoke(
        app, ["subject", "export", subject.subject_id, "--target", stack.target, "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["categories"]["identity"]["records"][0]["fields"]["given_name"] == "Zoé"

    refused = runner.invoke(
        app, ["subject", "shred", subject.subject_id, "--target", stack.target], input="n\n"
    )
    assert refused.exit_code == 1
    assert stack.client.get_subject(subject.subject_id).state == "active"

    result = runner.invoke(
        app, ["subject", "shred", subject.subject_id, "--target", stack.target, "--yes"]
    )
    assert result.exit_code == 0, result.output
    receipt = json.loads(result.stdout)
    assert receipt["subject_id"] == subject.subject_id
    assert receipt["records_retained"] == 0 and receipt["retained_until"] is None
    assert not stack.kms.key_exists(receipt["key_id"])

    again = runner.invoke(app, ["subject", "export", subject.subject_id, "--target", stack.target])
    assert again.exit_code == 1
    assert "SUBJECT_SHREDDED" in again.output


def test_subject_shred_prints_the_receipt_with_its_legal_hold(stack: Stack) -> None:
    """The fields docs/operations.md lists, the legal hold's two included; the residual
    risk on stderr."""
    sid = stack.client.create_subject().subject_id
    stack.client.create_record(sid, "contact", {"email": "held@example.org"})
    stack.client.create_record(sid, "billing", {"invoice_number": "F-1"}, "billing")
    result = runner.invoke(app, ["subject", "shred", sid, "--target", stack.target, "--yes"])
    assert result.exit_code == 0, result.output
    receipt = json.loads(result.stdout)
    assert set(receipt) == {
        "format",
        "subject_id",
        "key_id",
        "shred_time",
        "records_deleted",
        "records_retained",
        "retained_until",
        "kms_backend",
        "residual_copies_expire_time",
        "ledger_position",
        "signing_key_id",
        "signature",
    }
    assert receipt["records_deleted"] == 1 and receipt["records_retained"] == 1
    assert receipt["retained_until"].endswith("Z")
    assert receipt["ledger_position"] >= 1
    assert "residual risk: " in result.stderr
    assert stack.client.get_subject(sid).state == "held"


def test_audit_query_converts_a_time_with_an_offset_to_utc(stack: Stack) -> None:
    """--since with an offset is that instant, not its wall-clock digits read as UTC."""
    sid = stack.client.create_subject().subject_id
    query = ["audit", "query", "--subject", sid, "--target", stack.target]
    listed = runner.invoke(app, query)
    assert listed.exit_code == 0, listed.output
    first = json.loads(listed.stdout.splitlines()[0])
    at = datetime.fromisoformat(first["at"].replace("Z", "+00:00"))
    plus_two = timezone(timedelta(hours=2))
    # One hour before the entry, written at +02:00: its digits read as UTC would be an
    # hour after it, and the entry would be left out.
    before = (at - timedelta(hours=1)).astimezone(plus_two).isoformat()
    after = (at + timedelta(hours=1)).astimezone(plus_two).isoformat()
    since_before = runner.invoke(app, [*query, "--since", before])
    assert since_before.exit_code == 0, since_before.output
    assert first["seq"] in [json.loads(line)["seq"] for line in since_before.stdout.splitlines()]
    since_after = runner.invoke(app, [*query, "--since", after])
    assert since_after.exit_code == 0, since_after.output
    assert since_after.stdout == ""


def _without_export_time(document: bytes) -> bytes:
    return re.sub(rb'"exported_at": "[^"]*"', b'"exported_at": null', document, count=1)


def test_subject_export_streams_the_servers_document(stack: Stack, tmp_path: Path) -> None:
    subject = stack.client.create_subject()
    sid = subject.subject_id
    stack.client.batch_create_records(
        [NewRecord(sid, "identity", {"given_name": "Zoé"})]
        + [NewRecord(sid, "support", {"message": f"ticket {n}"}) for n in range(EXPORT_PAGE + 20)]
    )
    result = runner.invoke(app, ["subject", "export", sid, "--target", stack.target])
    assert result.exit_code == 0, result.output
    raw = stack.client._subjects.ExportSubject(
        pb.ExportSubjectRequest(subject_id=sid, purpose="portability"),
        metadata=(("authorization", f"Bearer {TEST_TOKEN}"),),
    ).json
    # the server's document as it is: compact JSON, one record per line, ending in "\n"
    assert _without_export_time(result.stdout_bytes) == _without_export_time(raw)
    assert result.stdout.endswith("}}\n")
    lines = result.stdout.splitlines()
    assert sum('"record_id"' in line for line in lines) == EXPORT_PAGE + 21
    document = json.loads(result.stdout)
    assert len(document["categories"]["support"]["records"]) == EXPORT_PAGE + 20

    out = tmp_path / "billing.json"
    result = runner.invoke(
        app,
        [
            "subject",
            "export",
            sid,
            "--target",
            stack.target,
            "-o",
            str(out),
            "--purpose",
            "billing",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(out.read_bytes())["categories"]) == ["identity"]
    assert result.stdout == ""


def test_subject_export_refused_writes_nothing(stack: Stack, tmp_path: Path) -> None:
    subject = stack.client.create_subject()
    stack.client.shred_subject(subject.subject_id)
    exports = tmp_path / "exports"
    exports.mkdir()
    kept = exports / "kept.json"
    kept.write_text("previous export\n")
    for out in (kept, exports / "new.json"):
        result = runner.invoke(
            app, ["subject", "export", subject.subject_id, "--target", stack.target, "-o", str(out)]
        )
        assert result.exit_code == 1
        assert "SUBJECT_SHREDDED" in result.output
    assert kept.read_text() == "previous export\n"
    assert [p.name for p in exports.iterdir()] == ["kept.json"]


def test_an_export_failing_midway_leaves_the_file_untouched(tmp_path: Path) -> None:
    def failing() -> Iterator[bytes]:
        yield b'{"format": "oubli.export.v1", '
        raise OubliClientError(grpc.StatusCode.UNAVAILABLE, "gone")

    out = tmp_path / "export.json"
    out.write_text("previous export\n")
    with pytest.raises(OubliClientError):
        _stream_to_file(failing(), out)
    assert out.read_text() == "previous export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["export.json"]  # no partial file left
    _stream_to_file(iter([b"{}", b"\n"]), out)
    assert out.read_text() == "{}\n"
    link = tmp_path / "link.json"  # e.g. -o /dev/stdout: written through, not replaced
    link.symlink_to(out)
    _stream_to_file(iter([b"[]", b"\n"]), link)
    assert link.is_symlink() and out.read_text() == "[]\n"


def test_subject_create_prints_an_id(stack: Stack) -> None:
    result = runner.invoke(app, ["subject", "create", "--target", stack.target])
    assert result.exit_code == 0
    assert stack.client.get_subject(result.stdout.strip()).state == "active"


def test_serve_rejects_bad_configuration(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path), "--kms", "vault"])
    assert result.exit_code == 2
    assert "Vault address and token" in result.output
    same = tmp_path / "same.db"
    result = runner.invoke(
        app, ["serve", "--database-url", f"sqlite:///{same}", "--keystore", str(same)]
    )
    assert result.exit_code == 2
    assert "keystore must not be the data database" in result.output


def test_retention_run_with_nothing_due_destroys_nothing(stack: Stack) -> None:
    subject = stack.client.create_subject()
    stack.client.create_record(subject.subject_id, "technical_logs", {"event": "login"}, "web")
    dry = runner.invoke(app, ["retention", "run", "--dry-run", "--target", stack.target])
    assert dry.exit_code == 0, dry.output
    summary = json.loads(dry.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] is True and summary["buckets_destroyed"] == 0
    real = runner.invoke(app, ["retention", "run", "--target", stack.target])
    assert real.exit_code == 0, real.output
    assert json.loads(real.stdout.strip().splitlines()[-1])["records_destroyed"] == 0


@pytest.fixture(params=["sqlite+local", "postgresql+vault"])
def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, FakeClock]]:
    """The ``stack`` fixture's two stacks (PostgreSQL with the real OpenBao), with a
    clock the test moves."""
    clock = FakeClock(RETENTION_START)
    stacks = stack_fixture(request, tmp_path, clock=clock)
    yield next(stacks), clock
    next(stacks, None)  # stops the server


def test_retention_run_dry_run_lists_and_run_destroys_what_is_due(
    clocked: tuple[Stack, FakeClock],
) -> None:
    stack, clock = clocked
    client = stack.client
    closed = client.create_subject().subject_id
    client.create_record(closed, "contact", {"email": "closed@example.org"})
    client.close_account(closed)
    logged = client.create_subject().subject_id
    log = client.create_record(logged, "technical_logs", {"event": "login"}, "web")
    bucket_id = stack.storage.record(logged, log.record_id).bucket_id  # type: ignore[union-attr]
    bucket = stack.storage.bucket(bucket_id)
    subject_key = stack.storage.subject(closed).key_id
    assert bucket is not None
    clock.advance(months=13)  # past the closed account's erasure and the log's bucket

    dry = runner.invoke(app, ["retention", "run", "--dry-run", "--target", stack.target])

    assert dry.exit_code == 0, dry.output
    *lines, last = dry.stdout.strip().splitlines()
    assert lines == [
        f"would destroy subject {closed} (1 records)",
        f"would destroy bucket {bucket_id} (1 records)",
    ]
    summary = json.loads(last)
    assert summary["dry_run"] is True
    assert (summary["subjects_erased"], summary["buckets_destroyed"]) == (1, 1)
    assert (summary["records_destroyed"], summary["failures"]) == (2, 0)
    # Nothing was destroyed.
    assert stack.kms.key_exists(subject_key) and stack.kms.key_exists(bucket.key_id)
    assert client.get_subject(closed).state == "closed"
    assert client.get_record(logged, log.record_id, "security").fields == {"event": "login"}

    real = runner.invoke(app, ["retention", "run", "--target", stack.target])

    assert real.exit_code == 0, real.output
    *lines, last = real.stdout.strip().splitlines()
    assert lines == [
        f"destroyed subject {closed} (1 records)",
        f"destroyed bucket {bucket_id} (1 records)",
    ]
    summary = json.loads(last)
    assert summary["dry_run"] is False
    assert (summary["subjects_erased"], summary["buckets_destroyed"]) == (1, 1)
    assert (summary["records_destroyed"], summary["failures"]) == (2, 0)
    assert not stack.kms.key_exists(subject_key) and not stack.kms.key_exists(bucket.key_id)
    assert client.get_subject(closed).state == "shredded"
    assert client.list_records(logged, purpose="security") == []

    again = runner.invoke(app, ["retention", "run", "--target", stack.target])
    assert again.exit_code == 0, again.output
    [last] = again.stdout.strip().splitlines()  # nothing left to do
    assert json.loads(last)["records_destroyed"] == 0


def test_retention_run_fails_loudly_when_the_server_is_unreachable() -> None:
    from vault.app.openbao_process import free_port

    result = runner.invoke(app, ["retention", "run", "--target", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "retention run failed" in result.output
