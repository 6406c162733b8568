"""Canary test: planted PII never lands in a file the service writes, nor in its logs.

Runs the README's embedded default (``oubli serve``: SQLite + local keystore) as a real
process, plants distinctive values through every path a value can take (records,
rectification, bad input echoing, malformed ids, export, shred), then searches every
byte the service wrote: the data directory (database, WAL, keystore) and the log.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from oubli_client import OubliClient
from oubli_client.errors import OubliClientError
from tests.integration.processes import ServerProcess
from vault.app.openbao_process import OpenBaoDevServer

CANARIES = [
    "Canary-Éloïse-Q7Z3",
    "canary.q7z3@example.invalid",
    "+33 6 12 34 56 78 q7z3",
    "4970100000000007",  # card-number shaped
    "9 rue du Canari, 75011 Paris q7z3",
]


def _forms(value: str) -> list[bytes]:
    """The value as it could appear on disk: UTF-8, JSON-escaped, UTF-16."""
    escaped = value.encode("ascii", "backslashreplace").decode().replace("\\x", "\\u00")
    return [value.encode(), escaped.encode(), value.encode("utf-16-le")]


def _plant(client: OubliClient) -> None:
    subject = client.create_subject()
    sid = subject.subject_id
    contact = client.create_record(
        sid,
        "contact",
        {"email": CANARIES[1], "phone": CANARIES[2], "postal_address": CANARIES[4]},
    )
    client.create_record(sid, "identity", {"given_name": CANARIES[0]})
    client.grant_consent(sid, "card_storage")
    client.create_record(sid, "payment", {"card_number": CANARIES[3]}, origin="billing")
    client.update_record(sid, contact.record_id, {"email": CANARIES[1] + ".fixed"}, 1)
    client.get_record(sid, contact.record_id, "service")
    client.list_records(sid, purpose="service")
    assert CANARIES[0] in str(client.export_subject(sid))
    # Bad input that carries canaries in every position a caller controls.
    attempts = [
        lambda: client.create_record(sid, CANARIES[0], {"email": CANARIES[1]}),
        lambda: client.create_record(sid, "contact", {"favourite": CANARIES[1]}),
        lambda: client.create_record(sid, "contact", {"email": CANARIES[2] * 5000}),
        lambda: client.create_record(sid, "contact", {"email": CANARIES[1]}, origin=CANARIES[1]),
        lambda: client.get_subject(CANARIES[1]),
        lambda: client.get_record(sid, CANARIES[3], "service"),
        lambda: client.list_records(CANARIES[0], purpose="service"),
    ]
    for attempt in attempts:
        with pytest.raises(OubliClientError) as raised:
            attempt()
        for canary in CANARIES:
            assert canary not in str(raised.value)
    # Rights and retention paths: access report, objection, consent withdrawal
    # (re-keying re-encrypts every record), closure, a retention run.
    assert CANARIES[0] in str(client.access_report(sid))
    client.object_to(sid, "analytics")
    client.create_record(sid, "technical_logs", {"ip_address": CANARIES[2]}, "web")
    client.withdraw_consent(sid, "card_storage")
    client.close_account(sid)
    list(client.run_retention(dry_run=True))
    list(client.run_retention())
    # A second subject, shredded.
    other = client.create_subject()
    client.create_record(other.subject_id, "contact", {"email": "shred-" + CANARIES[1]})
    client.shred_subject(other.subject_id)


def _assert_clean(paths: list[Path]) -> int:
    checked = 0
    for path in paths:
        data = path.read_bytes()
        checked += len(data)
        for canary in CANARIES:
            for form in _forms(canary):
                assert form not in data, f"a canary value leaked into {path.name}"
    return checked


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_embedded_default_keeps_no_plaintext_anywhere(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with ServerProcess(tmp_path / "run", "serve", "--data-dir", str(data_dir)) as server:
        with OubliClient(server.target, token=server.token) as client:
            _plant(client)
        files_while_running = _files(data_dir)
        _assert_clean(files_while_running)
    assert server.log().count('"event": "rpc"') >= 15  # the log was written
    files = [*_files(data_dir), server.log_path]
    assert {p.name for p in files} >= {"oubli.db", "keys.db"}
    assert _assert_clean(files) > 10_000


def test_vault_backend_keeps_no_plaintext_anywhere(
    tmp_path: Path, openbao: OpenBaoDevServer, sqlite_url: str
) -> None:
    with (
        ServerProcess(
            tmp_path / "run",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--kms",
            "vault",
            "--vault-addr",
            openbao.address,
            "--vault-mount",
            "transit-canary",
            env={"VAULT_TOKEN": openbao.token},
        ) as server,
        OubliClient(server.target, token=server.token) as client,
    ):
        _plant(client)
    files = [*_files(tmp_path / "data"), server.log_path]
    assert _assert_clean(files) > 10_000
    assert openbao.token not in server.log()
