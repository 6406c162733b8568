"""``oubli audit query`` and ``oubli subject find`` against a real in-process server, on
SQLite + local keystore and PostgreSQL + the real OpenBao."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.clock import FakeClock
from tests.stack import TEST_TOKEN, Stack, stack_fixture
from vault.app.cli import app

START = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
runner = CliRunner(env={"OUBLI_TOKEN": TEST_TOKEN})


@pytest.fixture(params=["sqlite+local", "postgresql+vault"])
def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, FakeClock]]:
    """The ``stack`` fixture's two stacks, with a clock the test moves."""
    clock = FakeClock(START)
    for stack in stack_fixture(request, tmp_path, clock=clock):
        yield stack, clock


def audit_query(stack: Stack, *args: str) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["audit", "query", "--target", stack.target, *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_audit_query_prints_the_entries_as_json_lines(clocked: tuple[Stack, FakeClock]) -> None:
    stack, clock = clocked
    first = stack.client.create_subject().subject_id
    record = stack.client.create_record(first, "contact", {"email": "first@example.org"})
    clock.advance(hours=1)
    second = stack.client.create_subject().subject_id
    stack.client.get_record(first, record.record_id, "billing")

    entries = audit_query(stack)
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    assert {e["at"] for e in entries} == {"2026-05-04T09:00:00Z", "2026-05-04T10:00:00Z"}
    read = [e for e in entries if e["action"] == "RecordService.GetRecord"]
    assert read == [
        {
            "seq": read[0]["seq"],
            "at": "2026-05-04T10:00:00Z",
            "caller": "test-admin",
            "action": "RecordService.GetRecord",
            "subject_id": first,
            "categories": ["contact"],
            "fields": ["email"],
            "purpose": "billing",
            "outcome": "OK",
        }
    ]
    for entry in entries:  # names and ids only, never a value
        assert "first@example.org" not in json.dumps(entry)

    of_first = audit_query(stack, "--subject", first)
    assert of_first and {e["subject_id"] for e in of_first} == {first}
    assert {e["subject_id"] for e in audit_query(stack, "--subject", second)} == {second}
    assert {e["caller"] for e in audit_query(stack, "--caller", "test-admin")} == {"test-admin"}
    assert audit_query(stack, "--caller", "someone-else") == []
    assert len(audit_query(stack, "--limit", "2")) == 2

    # Times without an offset are UTC; since is inclusive, until exclusive.
    last = entries[-1]["seq"]
    since = [e for e in audit_query(stack, "--since", "2026-05-04T10:00:00") if e["seq"] <= last]
    assert since == [e for e in entries if e["at"] == "2026-05-04T10:00:00Z"]
    until = audit_query(stack, "--until", "2026-05-04T10:00:00")
    assert until and until == [e for e in entries if e["at"] == "2026-05-04T09:00:00Z"]
    assert audit_query(stack, "--since", "2026-05-04 10:00:01") == []


def test_audit_query_refuses_a_bad_filter(clocked: tuple[Stack, FakeClock]) -> None:
    stack, _ = clocked
    result = runner.invoke(app, ["audit", "query", "--target", stack.target, "--limit", "1001"])
    assert result.exit_code == 1
    assert "audit query failed:" in result.output and "INVALID_ARGUMENT" in result.output


def test_subject_find_prints_the_matching_ids(clocked: tuple[Stack, FakeClock]) -> None:
    stack, _ = clocked
    ada = stack.client.create_subject().subject_id
    bob = stack.client.create_subject().subject_id
    stack.client.create_record(
        ada, "contact", {"email": "ada.lovelace@example.org", "phone": "+33 6 12 34 56 78"}
    )
    stack.client.create_record(bob, "contact", {"email": "bob@example.org"})

    def find(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["subject", "find", "--target", stack.target, *args])
        return result.exit_code, result.output

    assert find("--email", "Ada.Lovelace@Example.org", "--purpose", "billing") == (0, f"{ada}\n")
    assert find("--phone", "0033 6 12-34-56-78", "--purpose", "billing") == (0, f"{ada}\n")
    assert find("--email", "bob@example.org", "--purpose", "billing") == (0, f"{bob}\n")
    assert find("--email", "nobody@example.org", "--purpose", "billing") == (0, "")
    code, output = find("--email", "not an address", "--purpose", "billing")
    assert code == 1 and output.startswith("error:")
    assert "not an address" not in output  # the typed value is not echoed back
    code, _ = find("--email", "bob@example.org")  # a lookup states its purpose
    assert code == 2

    stack.client.shred_subject(ada)
    assert find("--email", "ada.lovelace@example.org", "--purpose", "billing") == (0, "")
