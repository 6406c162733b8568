"""Crash recovery, proven by killing the server in the middle of destroying.

For each fault point (vault/fault_points.py) and each database (SQLite, PostgreSQL), with
a real OpenBao: a real ``oubli serve`` runs with ``OUBLI_FAULT_POINT`` set, the test
calls the RPC that reaches the point, and the server dies by SIGKILL there (returncode
-9, the call's connection drops). The server is started again without the variable;
once it says SERVING, and before any call repeats anything:

- no subject is ``shredding``;
- every subject whose erasure was requested is fully erased: its Transit key is gone
  from OpenBao, none of its records reads (its invoice only for the accounting
  purposes of its legal hold), and a retried shred returns the receipt of that key;
- a withdrawn consent's records are gone, the subject's other records read, the key
  it left is gone; the same for a card deleted with record-level erasure (the re-key's
  path, with one record dropped);
- a bucket due for destruction is destroyed, its records gone, its key gone;
- every other subject is untouched: its records read back, its key is there.

The start-up's restore fence (vault/usecases/restore_fence.py) completes what the crash
interrupted: no retry, no retention run, no operator.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import hvac
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import vault.fault_points
from kms.vault_transit import VaultTransitKeyManager
from oubli_client import OubliClient, RetentionSummary, ShredReceipt
from oubli_client.errors import NotFound, OubliClientError
from tests.clock import FakeClock
from tests.integration.processes import ServerProcess, replica_args
from tests.stack import vault_service
from vault.app.openbao_process import OpenBaoDevServer
from vault.crypto.bucket_keys import add_months
from vault.storage import Storage, make_engine
from vault.vocabulary import BucketState

#: (fault point, the call that reaches it). Every point, each through the RPCs whose
#: path has it: unary and batch shred, the retention job (erasures and buckets),
#: consent withdrawal (re-key), DeleteRecord of a card (record-level erasure: the re-key).
CASES = [
    ("erasure.marked", "shred"),
    ("erasure.ledger_appended", "shred"),
    ("erasure.key_destroyed", "shred"),
    ("erasure.keys_destroyed", "shred"),
    ("erasure.key_destroyed", "batch"),  # the batch's middle: one key of three destroyed
    ("erasure.ledger_appended", "retention"),
    ("rekey.committed", "withdraw"),
    ("rekey.ledger_appended", "withdraw"),
    ("rekey.key_destroyed", "withdraw"),
    ("rekey.committed", "delete_card"),
    ("retention.bucket_marked", "retention"),
    ("retention.bucket_key_destroyed", "retention"),
    ("kek_rotation.rotated", "rotate"),
    ("kek_rotation.stored", "rotate"),
    ("kek_rotation.trimmed", "rotate"),
    ("index_rotation.committed", "rotate_index"),
    ("index_rotation.ledger_appended", "rotate_index"),
]
#: The bound of each call and of the kill (a server's start has ServerProcess's own):
#: a case takes about 5 s on an idle machine, two server starts being most of it.
WAIT_SECONDS = 20.0
CONTACT = {"email": "someone@example.org"}
INVOICE = {"invoice_number": "F-1", "amount": "12.00", "currency": "EUR"}
CARD = {"card_holder": "A Person", "card_number": "4111111111111111", "card_expiry": "12/30"}


@dataclass
class Deployment:
    """One database, one Transit mount, one data directory: what a restart finds again."""

    workdir: Path
    args: list[str]
    openbao: OpenBaoDevServer
    mount: str
    storage: Storage
    admin: hvac.Client
    processes: list[ServerProcess] = field(default_factory=list)

    def start(self, fault_point: str = "") -> ServerProcess:
        # Old key versions trimmed at the first pass after a rotation (the rotate cases).
        env = {"VAULT_TOKEN": self.openbao.token, "OUBLI_KEY_TRIM_AFTER_DAYS": "0"}
        if fault_point:
            env |= {"OUBLI_FAULT_POINT": fault_point, "OUBLI_TESTING": "1"}
        server = ServerProcess(self.workdir, *self.args, env=env)
        self.processes.append(server)
        return server.start()

    def key_exists(self, key_id: str) -> bool:
        """Whether OpenBao still has the Transit key (``transit/keys/<id>``: 404 when gone)."""
        try:
            self.admin.secrets.transit.read_key(name=key_id, mount_point=self.mount)
        except hvac.exceptions.InvalidPath:
            return False
        return True

    def key_of(self, subject_id: str) -> str:
        return self.storage.subjects([subject_id])[subject_id].key_id


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, openbao: OpenBaoDevServer
) -> Iterator[Deployment]:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    args = replica_args(url, openbao.address)
    mount = args[args.index("--vault-mount") + 1]
    storage = Storage(make_engine(url))
    admin = hvac.Client(url=openbao.address, token=openbao.token)
    found = Deployment(tmp_path / "server", args, openbao, mount, storage, admin)
    try:
        yield found
    finally:
        for server in found.processes:
            if server.process is not None and server.process.poll() is None:
                server.process.kill()  # teardown: never a server left behind
            server.stop()
        admin.adapter.close()
        storage.engine.dispose()


@dataclass
class World:
    """What a case made before the kill (ids only)."""

    #: Subjects whose erasure the call requested (directly or as due), with their keys.
    erased: dict[str, str] = field(default_factory=dict)
    #: Of those, the ones with an invoice (legal hold): subject -> invoice record id.
    invoices: dict[str, str] = field(default_factory=dict)
    #: Every subject's contact record.
    contacts: dict[str, str] = field(default_factory=dict)
    #: Subjects that must come out untouched, with their keys.
    untouched: dict[str, str] = field(default_factory=dict)
    #: The consent withdrawal (or the card's deletion): subject, its card records, its
    #: key before the re-key.
    rekeyed: str = ""
    #: The re-key is a DeleteRecord of the first card (record-level erasure).
    deleted: bool = False
    cards: list[str] = field(default_factory=list)
    retired_key: str = ""
    #: The due expiry bucket: id, key, the record in it and its subject.
    bucket: str = ""
    bucket_key: str = ""
    expiring: tuple[str, str] = ("", "")
    #: A rotation of the subject keys was under way (every subject stays untouched).
    rotated: bool = False
    #: A rotation of the index key was under way: the KMS key of the generation retired.
    index_key: str = ""


def _subject(client: OubliClient, world: World, *, invoice: bool = False) -> str:
    subject_id = client.create_subject().subject_id
    world.contacts[subject_id] = client.create_record(subject_id, "contact", CONTACT).record_id
    if invoice:
        world.invoices[subject_id] = client.create_record(subject_id, "billing", INVOICE).record_id
    return subject_id


def _prepare(call: str, client: OubliClient, found: Deployment) -> World:
    world = World()
    bystander = _subject(client, world, invoice=True)
    world.untouched[bystander] = found.key_of(bystander)
    if call == "shred":
        target = _subject(client, world, invoice=True)
        world.erased[target] = found.key_of(target)
    elif call == "batch":
        for n in range(3):
            target = _subject(client, world, invoice=n == 0)
            world.erased[target] = found.key_of(target)
    elif call in ("withdraw", "delete_card"):
        world.rekeyed = _subject(client, world)
        client.grant_consent(world.rekeyed, "card_storage")
        world.cards = [
            client.create_record(world.rekeyed, "payment", CARD).record_id for _ in range(2)
        ]
        world.retired_key = found.key_of(world.rekeyed)
        world.deleted = call == "delete_card"
    elif call == "retention":
        _past_work(found, world)
    elif call == "rotate_index":
        for _ in range(2):
            subject_id = _subject(client, world)
            world.untouched[subject_id] = found.key_of(subject_id)
        [generation] = found.storage.service_keys("lookup-index")
        world.index_key = generation.key_id
    elif call == "rotate":
        world.rotated = True
        for _ in range(2):
            subject_id = _subject(client, world)
            world.untouched[subject_id] = found.key_of(subject_id)
    return world


def _past_work(found: Deployment, world: World) -> None:
    """What the retention job finds due now, written through the domain with a clock a
    year back (the server's own clock is the real one): an account closed beyond its
    erasure delay, and a usage record whose month has passed (its expiry bucket due)."""
    now = datetime.now(UTC)
    clock = FakeClock(add_months(now, -13))
    kms = VaultTransitKeyManager(
        found.openbao.address, found.openbao.token, mount_point=found.mount
    )
    try:
        past = vault_service(found.storage, kms, clock=clock)
        closed = past.create_subject().subject_id
        world.contacts[closed] = past.create_record(closed, "contact", CONTACT, "c").record_id
        past.close_account(closed)
        world.erased[closed] = found.key_of(closed)
        user = past.create_subject().subject_id
        world.contacts[user] = past.create_record(user, "contact", CONTACT, "c").record_id
        clock.set(add_months(now, -12) - timedelta(days=31))
        usage = past.create_record(user, "usage", {"page": "/"}, "c").record_id
        world.expiring = (user, usage)
        world.untouched[user] = found.key_of(user)
    finally:
        kms.close()
    [bucket] = found.storage.due_buckets(now)
    world.bucket, world.bucket_key = bucket.bucket_id, bucket.key_id


def _crash(call: str, world: World, client: OubliClient) -> None:
    """The call that reaches the fault point; the server dies under it."""
    with pytest.raises(OubliClientError):
        if call == "shred":
            [target] = world.erased
            client.shred_subject(target)
        elif call == "batch":
            client.shred_subjects(list(world.erased))
        elif call == "withdraw":
            client.withdraw_consent(world.rekeyed, "card_storage")
        elif call == "rotate_index":
            client.rotate_keys("index", force=True)
        elif call == "rotate":
            # Pass 1 rotates (trims nothing yet); pass 2 trims what pass 1 rotated.
            for _ in range(2):
                client.rotate_keys("subjects", force=True)
        elif call == "delete_card":
            client.delete_record(world.rekeyed, world.cards[0])
        else:
            list(client.run_retention(timeout=WAIT_SECONDS))


def _wait_serving(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def _check_recovered(point: str, world: World, client: OubliClient, found: Deployment) -> None:
    """What start-up alone left, before any call repeats anything."""
    subjects = [*world.contacts]
    states = {sid: client.get_subject(sid).state for sid in subjects}
    assert "shredding" not in states.values(), states
    for subject_id, key_id in world.erased.items():
        assert states[subject_id] == ("held" if subject_id in world.invoices else "shredded")
        assert not found.key_exists(key_id), (point, subject_id)
        with pytest.raises(NotFound):
            client.get_record(subject_id, world.contacts[subject_id], "service")
        if subject_id in world.invoices:  # kept, for the legal hold's purposes only
            held = client.get_record(subject_id, world.invoices[subject_id], "accounting")
            assert held.fields["invoice_number"] == "F-1"
    for subject_id, key_id in world.untouched.items():
        assert states[subject_id] == "active"
        assert found.key_exists(key_id)
        read = client.get_record(subject_id, world.contacts[subject_id], "service")
        assert read.fields == CONTACT
        if subject_id in world.invoices:
            invoice = client.get_record(subject_id, world.invoices[subject_id], "billing")
            assert invoice.fields["invoice_number"] == "F-1"
    if world.rekeyed:
        subject = client.get_subject(world.rekeyed)
        deleted = world.cards[:1] if world.deleted else world.cards
        assert subject.state == "active"
        assert ("card_storage" in subject.consents) == world.deleted
        assert not found.key_exists(world.retired_key)
        assert found.key_exists(found.key_of(world.rekeyed))
        read = client.get_record(world.rekeyed, world.contacts[world.rekeyed], "service")
        assert read.fields == CONTACT
        for card in deleted:
            with pytest.raises(NotFound):
                client.get_record(world.rekeyed, card, "billing")
        for card in world.cards[len(deleted) :]:  # the other card, under the new key
            assert client.get_record(world.rekeyed, card, "billing").fields == CARD
    if world.bucket:
        bucket = found.storage.bucket(world.bucket)
        assert bucket is not None
        if point.startswith("retention."):  # the bucket's destruction was under way
            assert bucket.state == BucketState.DESTROYED
            assert not found.key_exists(world.bucket_key)
            with pytest.raises(NotFound):
                client.get_record(*world.expiring, "service")
        else:  # the job died before the buckets: the bucket is as it was, still due
            assert bucket.state == BucketState.ACTIVE
            assert found.key_exists(world.bucket_key)


def _check_retries(world: World, client: OubliClient, found: Deployment) -> None:
    """A retry now finds the work done: a shred returns the receipt of the key it
    destroyed; the retention job erases no one, and destroys what is still due."""
    for subject_id, key_id in world.erased.items():
        receipt = client.shred_subject(subject_id)
        assert isinstance(receipt, ShredReceipt) and receipt.key_id == key_id
    if world.index_key:
        # The start-up's fence destroyed the retired generation's key: the lookup
        # finds every subject under the new one, and a new pass has nothing to do.
        assert not found.key_exists(world.index_key)
        found_ids = client.find_subject(email=CONTACT["email"], purpose="support")
        assert set(world.untouched) <= set(found_ids)
        assert client.rotate_keys("index").due == 0
    if world.rotated:
        # Two passes finish any rotation: a forced one rotates every key again, the
        # next trims; then every key holds one usable version, the one the row wraps.
        assert client.rotate_keys("subjects", force=True).failed == 0
        assert client.rotate_keys("subjects").failed == 0
        for subject_id, key_id in world.untouched.items():
            key = found.admin.secrets.transit.read_key(name=key_id, mount_point=found.mount)
            latest = key["data"]["latest_version"]
            assert key["data"]["min_decryption_version"] == latest
            assert key["data"]["min_available_version"] == latest
            read = client.get_record(subject_id, world.contacts[subject_id], "service")
            assert read.fields == CONTACT
    if world.bucket:
        *_, summary = client.run_retention(timeout=WAIT_SECONDS)
        assert isinstance(summary, RetentionSummary) and summary.failures == 0
        assert summary.subjects_erased == 0  # the interrupted erasures were done
        bucket = found.storage.bucket(world.bucket)
        assert bucket is not None and bucket.state == BucketState.DESTROYED
        assert not found.key_exists(world.bucket_key)


@pytest.mark.parametrize(("point", "call"), CASES, ids=[f"{p}-{c}" for p, c in CASES])
def test_killed_at_a_fault_point_recovers_at_start_up(
    point: str, call: str, deployment: Deployment
) -> None:
    server = deployment.start(fault_point=point)
    client = OubliClient(server.target, token=server.token, max_attempts=1, timeout=WAIT_SECONDS)
    with client:
        world = _prepare(call, client, deployment)
        _crash(call, world, client)
    assert server.process is not None
    assert server.process.wait(timeout=WAIT_SECONDS) == -9, server.log()

    restarted = deployment.start()
    _wait_serving(restarted)
    with OubliClient(restarted.target, token=restarted.token) as client:
        _check_recovered(point, world, client, deployment)
        _check_retries(world, client, deployment)


#: Points no RPC reaches yet (the index key rotation has no RPC so far): each is killed in
#: a child process running the use case, the restore fence then recovering
#: (tests/vault/usecases/test_index_rotation.py).
def test_every_fault_point_is_killed_at() -> None:
    documented = set(re.findall(r"^- ``([a-z_.]+)``", vault.fault_points.__doc__ or "", re.M))
    assert {point for point, _ in CASES} == documented
