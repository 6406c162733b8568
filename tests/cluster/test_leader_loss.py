"""(a) The OpenBao leader is killed under a bounded write load.

No acknowledged write is lost (each reads back once the cluster has recovered); while
no node is active, calls fail with UNAVAILABLE and never another code; the time to a
new active node and to writes succeeding again on every replica is measured.
"""

from __future__ import annotations

import time

import grpc
import pytest

from oubli_client import OubliClient
from tests.cluster.load import WriteLoad
from tests.cluster.topology import Drill

pytestmark = [pytest.mark.openbao, pytest.mark.postgres]

#: Bound on the whole outage: a new leader and writes on every replica within this.
RECOVERY_BOUND = 45.0


def test_killing_the_openbao_leader_loses_no_acknowledged_write(
    drill: Drill, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = drill.cluster
    assert cluster is not None
    leader = cluster.wait_for_active()
    load = WriteLoad(drill.replicas).start()
    try:
        time.sleep(1.5)  # writes acknowledged before the kill too
        assert all(load.successes_after(r.host, 0) for r in drill.replicas), load.failures
        killed_at = time.monotonic()
        leader.kill()
        new_leader = cluster.wait_for_active(timeout=RECOVERY_BOUND)
        elected_after = time.monotonic() - killed_at
        assert new_leader is not leader
        # Recovered: every replica has written 3 times since the new leader took over.
        elected_at = time.monotonic()
        deadline = killed_at + RECOVERY_BOUND
        while any(load.successes_after(r.host, elected_at) < 3 for r in drill.replicas):
            assert time.monotonic() < deadline, "writes did not resume on every replica"
            time.sleep(0.1)
    finally:
        load.stop()
    recovered = {r.host: load.recovered_at(r.host, killed_at) for r in drill.replicas}

    codes = {f.code for f in load.failures}
    assert codes <= {grpc.StatusCode.UNAVAILABLE}, [
        f for f in load.failures if f.code.name != "UNAVAILABLE"
    ]
    assert load.failures, "no call failed: the load did not reach OpenBao during the election"

    cluster.restart(leader)  # the crashed node comes back and catches up
    cluster.wait_for_voters(time.monotonic() + 30)

    clients = {r.host: OubliClient(r.target, token=r.token) for r in drill.replicas}
    try:
        for n, written in enumerate(load.written):
            # each record read back through another replica than the one that wrote it
            host = drill.replicas[n % len(drill.replicas)].host
            record = clients[host].get_record(written.subject_id, written.record_id, "service")
            assert record.fields == written.fields
    finally:
        for client in clients.values():
            client.close()

    recovery = {h: (t - killed_at if t else None) for h, t in recovered.items()}
    with capsys.disabled():
        print(
            f"\n(a) leader {leader.node_id} killed: new leader {new_leader.node_id} after "
            f"{elected_after:.2f} s; writes succeeded again after "
            + ", ".join(f"{h} {s:.2f} s" for h, s in recovery.items() if s is not None)
            + f"; {len(load.written)} acknowledged writes read back, "
            f"{len(load.failures)} calls failed UNAVAILABLE"
        )
