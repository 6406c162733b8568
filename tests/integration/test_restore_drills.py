"""Restore drills: what an operator's disaster recovery does to an erased subject.

Each drill runs real ``oubli serve`` processes over a real OpenBao on raft storage (its
backup: ``sys/storage/raft/snapshot``, what ``bao operator raft snapshot save`` /
``restore`` call) and a real database (SQLite: an online copy with the backup API;
PostgreSQL: ``pg_dump`` / ``pg_restore`` of a database of the test's own), with the
erasure ledger apart from both (SQLite: the default ``DATA_DIR/ledger/erasures.db``;
PostgreSQL: a ledger database of its own).

The story: subjects A (to be erased) and B (kept), each with contact data, A also with
an identity and a legal-hold invoice; a backup of the database and of the KMS; A is
shredded; the server stops; then one of

(a) the database is restored from the backup, the KMS is live;
(b) the KMS is restored from the snapshot, the database is live;
(c) both are restored;
(d) the ledger is lost;

and ``oubli serve`` starts again, with no manual step in between. In (a)-(c) the first
call already finds A erased (the restore fence ran before the port answered), no RPC
that could return A's data returns any of it but what the legal hold keeps for the
purposes it is kept for, B reads back intact, and in (b) and (c) A's Transit key is gone
from OpenBao again. In (d) the server refuses to start, naming the ledger and both
positions, until the operator passes ``--accept-ledger-behind``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from kms.vault_transit import VaultTransitKeyManager
from oubli_client import OubliClient
from oubli_client.errors import OubliClientError, Unavailable
from tests.conftest import PG_ADMIN_URL
from tests.integration.processes import ServerProcess
from vault.app.openbao_process import OpenBaoRaftServer

#: The drills, by what is restored.
OLD_DATABASE = "a-old-database-live-kms"
OLD_KMS = "b-live-database-old-kms"
OLD_BOTH = "c-old-database-old-kms"
LOST_LEDGER = "d-lost-ledger"

#: pg_dump's and pg_restore's environment: the shared server on 127.0.0.1.
PG_CLIENT_ENV = {**os.environ, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}

#: Purposes the catalog keeps a held invoice for after its subject's erasure.
HELD_PURPOSES = ("accounting", "legal_claims")


def _admin_sql(*statements: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            for statement in statements:
                c.execute(text(statement))
    finally:
        admin.dispose()


@pytest.fixture(scope="module")
def raft_openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoRaftServer]:
    """One OpenBao on raft storage for the drills, each on a Transit mount of its own.
    A drill's snapshot restore rolls back the whole node, the mounts of the drills run
    before it included: they are done by then."""
    directory = tmp_path_factory.mktemp("openbao-raft")
    with OpenBaoRaftServer(directory / "raft", log_path=directory / "openbao.log") as bao:
        yield bao


@pytest.fixture
def ledger_database() -> Iterator[str]:
    """An empty PostgreSQL database of the test's own for the erasure ledger."""
    name = f"oubli_ledger_{secrets.token_hex(6)}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    yield name
    _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class People:
    """What the drill stores, and the strings that must never come back for A."""

    a: str = ""
    b: str = ""
    a_email: str = field(default_factory=lambda: f"erased-{secrets.token_hex(4)}@example.org")
    a_name: str = field(default_factory=lambda: f"Erased{secrets.token_hex(4)}")
    a_invoice_number: str = field(default_factory=lambda: f"INV-A-{secrets.token_hex(4)}")
    b_email: str = field(default_factory=lambda: f"kept-{secrets.token_hex(4)}@example.org")
    b_invoice_number: str = field(default_factory=lambda: f"INV-B-{secrets.token_hex(4)}")
    a_records: dict[str, str] = field(default_factory=dict)
    b_records: dict[str, str] = field(default_factory=dict)

    @property
    def a_erasable(self) -> tuple[str, ...]:
        """A's plaintext that erasure removes everywhere (the invoice may be held)."""
        return (self.a_email, self.a_name)

    def populate(self, client: OubliClient) -> None:
        self.a = client.create_subject().subject_id
        self.b = client.create_subject().subject_id
        self.a_records = {
            "contact": client.create_record(
                self.a, "contact", {"email": self.a_email, "phone": "+33 1 23 45 67 89"}
            ).record_id,
            "identity": client.create_record(
                self.a, "identity", {"given_name": self.a_name, "family_name": "Doe"}
            ).record_id,
            "billing": client.create_record(
                self.a,
                "billing",
                {"invoice_number": self.a_invoice_number, "amount": "120.00", "currency": "EUR"},
            ).record_id,
        }
        self.b_records = {
            "contact": client.create_record(self.b, "contact", {"email": self.b_email}).record_id,
            "billing": client.create_record(
                self.b,
                "billing",
                {"invoice_number": self.b_invoice_number, "amount": "80.00", "currency": "EUR"},
            ).record_id,
        }


class Drill:
    """One drill's Transit mount, database, ledger and backups; serves ``oubli`` over
    them."""

    def __init__(
        self,
        tmp: Path,
        bao: OpenBaoRaftServer,
        backend: str,
        database_url: str,
        ledger_database: str | None,
    ) -> None:
        self.tmp = tmp
        self.backend = backend
        self.database_url = database_url
        self.data_dir = tmp / "data"
        self.data_dir.mkdir(mode=0o700)
        self.ledger_database = ledger_database
        self.ledger_url = (
            make_url(PG_ADMIN_URL).set(database=ledger_database).render_as_string(False)
            if ledger_database
            else ""
        )
        self.mount = f"transit-{secrets.token_hex(4)}"
        self.bao = bao
        self.snapshot = b""
        self.dump = tmp / "database.dump"
        self.starts = 0

    def __enter__(self) -> Drill:
        self.admin = hvac.Client(url=self.bao.address, token=self.bao.token)
        self.kms = VaultTransitKeyManager(self.bao.address, self.bao.token, mount_point=self.mount)
        return self

    def __exit__(self, *exc: object) -> None:
        self.kms.close()
        self.admin.adapter.close()

    def server(self, *extra: str) -> ServerProcess:
        self.starts += 1
        env = {"VAULT_TOKEN": self.bao.token}
        if self.ledger_url:
            env["OUBLI_LEDGER_URL"] = self.ledger_url
        return ServerProcess(
            self.tmp / f"run-{self.starts}",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--database-url",
            self.database_url,
            "--kms",
            "vault",
            "--vault-addr",
            self.bao.address,
            "--vault-mount",
            self.mount,
            *extra,
            env=env,
        )

    # --- backups ----------------------------------------------------------------------

    @property
    def _sqlite_path(self) -> Path:
        return Path(self.database_url.removeprefix("sqlite:///"))

    @property
    def _database_name(self) -> str:
        return make_url(self.database_url).database or ""

    def back_up(self) -> None:
        """Last night's backups, taken while the server runs: the database (SQLite's
        online backup API / ``pg_dump``) and the KMS (a raft snapshot)."""
        if self.backend == "sqlite":
            source = sqlite3.connect(self._sqlite_path)
            target = sqlite3.connect(self.tmp / "database-backup.db")
            source.backup(target)
            source.close()
            target.close()
        else:
            subprocess.run(
                ["pg_dump", "-Fc", "-f", str(self.dump), self._database_name],
                check=True,
                timeout=60,
                env=PG_CLIENT_ENV,
            )
        self.snapshot = self.admin.sys.take_raft_snapshot().content

    def restore_database(self) -> None:
        """The database as the backup left it (the server is stopped)."""
        if self.backend == "sqlite":
            for suffix in ("-wal", "-shm"):
                Path(f"{self._sqlite_path}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(self.tmp / "database-backup.db", self._sqlite_path)
        else:
            name = self._database_name
            _admin_sql(f'DROP DATABASE "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
            subprocess.run(
                ["pg_restore", "-d", name, str(self.dump)],
                check=True,
                timeout=60,
                env=PG_CLIENT_ENV,
            )

    def restore_kms(self, key_id: str) -> None:
        """OpenBao as the raft snapshot left it: ``key_id``, destroyed since, is back
        (once OpenBao has reloaded the snapshot)."""
        self.admin.sys.restore_raft_snapshot(self.snapshot)
        deadline = time.monotonic() + 30
        while not self.kms.key_exists(key_id):
            assert time.monotonic() < deadline, "the snapshot did not bring the key back"
            time.sleep(0.1)

    def lose_ledger(self) -> None:
        """The ledger is gone: its file deleted / its database dropped and created empty
        (a new disk, or a ledger restored from before every erasure)."""
        if self.ledger_database:
            name = self.ledger_database
            _admin_sql(f'DROP DATABASE "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
        else:
            shutil.rmtree(self.data_dir / "ledger")


def _outcome(call: object) -> str:
    """What a call returned, or the error it raised, as text to search."""
    if callable(call):
        try:
            return repr(call())
        except OubliClientError as e:
            assert not isinstance(e, Unavailable), f"not serving: {e!r}"
            return repr(e)
    return repr(call)


#: The probes that may show A's invoice after A's erasure: reads for a purpose its legal
#: hold is kept for, and A's own export (which lists what is still held).
HELD_READS = (
    "GetRecord invoice accounting",
    "ListRecords accounting",
    "BatchGetRecords held",
    "ExportSubject",
    "StreamExport",
)


def _probe_a(client: OubliClient, people: People) -> dict[str, str]:
    """Every RPC that could return A's data, first call first; each one's outcome."""
    a, records = people.a, people.a_records
    reads = [(a, rid, "service") for rid in records.values()]
    held_reads = [(a, records["billing"], p) for p in HELD_PURPOSES]
    return {
        "GetRecord contact": _outcome(lambda: client.get_record(a, records["contact"], "service")),
        "GetRecord identity": _outcome(
            lambda: client.get_record(a, records["identity"], "support")
        ),
        "GetRecord invoice billing": _outcome(
            lambda: client.get_record(a, records["billing"], "billing")
        ),
        "GetRecord invoice accounting": _outcome(
            lambda: client.get_record(a, records["billing"], "accounting")
        ),
        "ListRecords service": _outcome(lambda: client.list_records(a, purpose="service")),
        "ListRecords accounting": _outcome(lambda: client.list_records(a, purpose="accounting")),
        "BatchGetRecords service": _outcome(lambda: client.batch_get_records(reads)),
        "BatchGetRecords held": _outcome(lambda: client.batch_get_records(held_reads)),
        "ExportSubject": _outcome(lambda: client.export_subject(a)),
        "StreamExport": _outcome(lambda: b"".join(client.stream_export(a, timeout=30))),
        "FindSubject email": _outcome(
            lambda: client.find_subject(email=people.a_email, purpose="service")
        ),
        "GetSubject": _outcome(lambda: client.get_subject(a)),
    }


def _assert_a_erased(
    probe: dict[str, str], people: People, reference: dict[str, str] | None = None
) -> None:
    """No probe shows A's erasable data; A's invoice only where the legal hold keeps it
    (reads for its legal purposes, A's own export) and, after a restore, only where the
    live server showed it right after the shred (``reference``)."""
    for rpc, outcome in probe.items():
        for secret in people.a_erasable:
            assert secret not in outcome, f"{rpc} served A's erased data: {outcome}"
        if people.a_invoice_number in outcome:
            assert rpc in HELD_READS, f"{rpc} served A's invoice: {outcome}"
            assert reference is None or people.a_invoice_number in reference[rpc], (
                f"{rpc} served A's invoice, which the live server did not: {outcome}"
            )
    assert people.a not in probe["FindSubject email"]
    state = re.search(r"state='(\w+)'", probe["GetSubject"])
    assert state is not None and state.group(1) in ("held", "shredded"), probe["GetSubject"]
    assert "NotFound" in probe["GetRecord contact"], probe["GetRecord contact"]


def _assert_b_intact(client: OubliClient, people: People) -> None:
    b, records = people.b, people.b_records
    assert client.get_record(b, records["contact"], "service").fields == {"email": people.b_email}
    invoice = client.get_record(b, records["billing"], "billing").fields
    assert invoice["invoice_number"] == people.b_invoice_number
    assert client.find_subject(email=people.b_email, purpose="service") == [b]
    export = json.dumps(client.export_subject(b))
    assert people.b_email in export and people.b_invoice_number in export
    assert client.get_subject(b).state == "active"


def _fence_log(server: ServerProcess) -> dict[str, dict[str, object]]:
    """The restore fence's events in the server's JSON log, by name (the last of each)."""
    events: dict[str, dict[str, object]] = {}
    for line in server.log().splitlines():
        if line.startswith("{") and '"restore_fence_' in line:
            entry = json.loads(line)
            events[entry["event"]] = entry
    return events


@pytest.mark.parametrize("case", [OLD_DATABASE, OLD_KMS, OLD_BOTH, LOST_LEDGER])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_restore_drill(
    backend: str,
    case: str,
    tmp_path: Path,
    raft_openbao: OpenBaoRaftServer,
    request: pytest.FixtureRequest,
) -> None:
    started = time.monotonic()
    if backend == "sqlite":
        database_url, ledger = f"sqlite:///{tmp_path / 'data' / 'oubli.db'}", None
    else:
        database_url = request.getfixturevalue("pg_url")
        ledger = request.getfixturevalue("ledger_database")
    people = People()
    with Drill(tmp_path, raft_openbao, backend, database_url, ledger) as drill:
        with drill.server() as live, OubliClient(live.target, token=live.token) as client:
            people.populate(client)
            drill.back_up()
            receipt = client.shred_subject(people.a)
            assert not drill.kms.key_exists(receipt.key_id)
            reference = _probe_a(client, people)
            _assert_a_erased(reference, people)

        if case == LOST_LEDGER:
            _lost_ledger_drill(drill, people)
            return
        if case in (OLD_DATABASE, OLD_BOTH):
            drill.restore_database()
        if case in (OLD_KMS, OLD_BOTH):
            drill.restore_kms(receipt.key_id)  # the erased key is back

        with (
            drill.server() as restored,
            OubliClient(restored.target, max_attempts=1, token=restored.token) as client,
        ):
            probe = _probe_a(client, people)  # the first calls after start-up
            _assert_a_erased(probe, people, reference)
            if case == OLD_BOTH:
                # A's key was back: the fence held the invoice again, as the shred had.
                held = client.get_record(people.a, people.a_records["billing"], "accounting")
                assert held.fields["invoice_number"] == people.a_invoice_number
            else:
                # (a) the old database has the invoice under A's destroyed key only: it
                # cannot be held, it goes. (b) the old snapshot predates the hold
                # bucket's key, created by the shred: the held copy is unreadable.
                assert "NotFound" in probe["GetRecord invoice accounting"]
            _assert_b_intact(client, people)
            assert not drill.kms.key_exists(receipt.key_id)
            fence = _fence_log(restored)
    # The fence did the repair, before the first call: A erased again when the database
    # was restored, A's key destroyed again when only the KMS was.
    repaired = fence["restore_fence_repaired"]
    assert repaired["subjects_erased"] == (0 if case == OLD_KMS else 1), repaired
    assert repaired["keys_destroyed"] == (0 if case == OLD_DATABASE else 1), repaired
    fence_ms = fence["restore_fence_passed"]["ms"]
    print(f"{backend} {case}: fence {fence_ms} ms, drill {time.monotonic() - started:.1f} s")


def _lost_ledger_drill(drill: Drill, people: People) -> None:
    drill.lose_ledger()
    refused = drill.server()
    with pytest.raises(RuntimeError, match="server exited early"):
        refused.start()
    assert refused.process is not None and refused.process.returncode != 0
    message = " ".join(refused.log().split())
    assert "erasure ledger is behind the database" in message, message
    assert re.search(r"ledger head seq 0, database high-water mark seq [1-9]", message), message
    assert "--accept-ledger-behind" in message
    refused.stop()

    with (
        drill.server("--accept-ledger-behind") as accepted,
        OubliClient(accepted.target, max_attempts=1, token=accepted.token) as client,
    ):
        _assert_a_erased(_probe_a(client, people), people)
        _assert_b_intact(client, people)
    # Accepted once: the fence re-recorded what the database knew; the next start serves.
    with (
        drill.server() as again,
        OubliClient(again.target, max_attempts=1, token=again.token) as client,
    ):
        _assert_a_erased(_probe_a(client, people), people)
        _assert_b_intact(client, people)
