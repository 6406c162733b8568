"""The ``oubli`` command line: dev stack, subject commands, configuration errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from clients.oubli_client import OubliClient
from tests.integration.processes import ServerProcess
from tests.stack import TEST_TOKEN, Stack
from vault.cli import app

runner = CliRunner(env={"OUBLI_TOKEN": TEST_TOKEN})


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
    assert not stack.kms.key_exists(receipt["key_id"])

    again = runner.invoke(app, ["subject", "export", subject.subject_id, "--target", stack.target])
    assert again.exit_code == 1
    assert "SUBJECT_SHREDDED" in again.output


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


def test_retention_run_dry_run_and_run(stack: Stack) -> None:
    subject = stack.client.create_subject()
    stack.client.create_record(subject.subject_id, "technical_logs", {"event": "login"}, "web")
    dry = runner.invoke(app, ["retention", "run", "--dry-run", "--target", stack.target])
    assert dry.exit_code == 0, dry.output
    summary = json.loads(dry.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] is True and summary["buckets_destroyed"] == 0
    real = runner.invoke(app, ["retention", "run", "--target", stack.target])
    assert real.exit_code == 0, real.output
    assert json.loads(real.stdout.strip().splitlines()[-1])["records_destroyed"] == 0


def test_retention_run_fails_loudly_when_the_server_is_unreachable() -> None:
    from kms.openbao_process import free_port

    result = runner.invoke(app, ["retention", "run", "--target", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "retention run failed" in result.output
