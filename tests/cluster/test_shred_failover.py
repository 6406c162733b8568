"""(c) A shred sent while the OpenBao leader changes.

It completes, or fails cleanly (UNAVAILABLE) and a retry completes it; afterwards the
subject's Transit key is gone on every node, each read on its own (standby nodes answer
reads from their own raft log), the restarted old leader included.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, select

from oubli_client import OubliClient
from oubli_client.errors import NotFound, Unavailable
from tests.cluster.topology import Drill
from vault.storage.tables import SubjectRow

pytestmark = [pytest.mark.openbao, pytest.mark.postgres]

SHRED_BOUND = 45.0


def key_id_of(drill: Drill, subject_id: str) -> str:
    engine = create_engine(drill.database_url)
    try:
        with engine.connect() as connection:
            key_id = connection.scalar(
                select(SubjectRow.key_id).where(SubjectRow.subject_id == subject_id)
            )
    finally:
        engine.dispose()
    assert key_id
    return str(key_id)


def test_a_shred_during_the_leader_change_completes_and_the_key_is_gone_everywhere(
    drill: Drill, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = drill.cluster
    assert cluster is not None
    clients = [OubliClient(r.target, token=r.token, max_attempts=1) for r in drill.replicas]
    try:
        writer, shredder, reader = clients
        subject = writer.create_subject()
        record = writer.create_record(subject.subject_id, "contact", {"email": "c@drill.test"})
        key_id = key_id_of(drill, subject.subject_id)
        deadline = time.monotonic() + 15
        while any(drill.transit_key_status(n, key_id) != 200 for n in cluster.nodes):
            assert time.monotonic() < deadline, "the key never reached every node"
            time.sleep(0.1)

        leader = cluster.wait_for_active()
        killed_at = time.monotonic()
        leader.kill()
        attempts: list[str] = []
        while True:  # the operator's retry: again on UNAVAILABLE, nothing else
            try:
                shredder.shred_subject(subject.subject_id)
            except Unavailable as e:
                attempts.append(e.reason or "UNAVAILABLE")
                assert time.monotonic() - killed_at < SHRED_BOUND, "the shred never completed"
                time.sleep(0.2)
                continue
            break
        shredded_after = time.monotonic() - killed_at

        for client in clients:
            with pytest.raises(NotFound) as refused:
                client.get_record(subject.subject_id, record.record_id, "service")
            assert refused.value.reason == "SUBJECT_SHREDDED"
        assert reader.get_subject(subject.subject_id).state == "shredded"

        cluster.restart(leader)
        cluster.wait_for_voters(time.monotonic() + 30)
        deadline = time.monotonic() + 15
        statuses = {n.node_id: drill.transit_key_status(n, key_id) for n in cluster.nodes}
        while any(status != 404 for status in statuses.values()):
            assert time.monotonic() < deadline, f"key still readable: {statuses}"
            time.sleep(0.2)
            statuses = {n.node_id: drill.transit_key_status(n, key_id) for n in cluster.nodes}
    finally:
        for client in clients:
            client.close()
    with capsys.disabled():
        print(
            f"\n(c) shred sent as leader {leader.node_id} was killed: "
            f"{len(attempts)} UNAVAILABLE attempt(s), completed after {shredded_after:.2f} s; "
            f"key gone on {', '.join(sorted(statuses))}"
        )
