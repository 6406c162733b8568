"""(b) One oubli replica is cut off from OpenBao (its "kms" cable pulled; it keeps the
database): calls that need the KMS fail UNAVAILABLE there, the other replicas serve,
and the cut replica serves again once the cable is back.
"""

from __future__ import annotations

import time

import pytest

from oubli_client import OubliClient
from oubli_client.errors import Unavailable
from tests.cluster.health import health_of, wait_for_health
from tests.cluster.topology import Drill

pytestmark = [pytest.mark.openbao, pytest.mark.postgres]

RECOVERY_BOUND = 30.0


def test_a_replica_cut_off_from_openbao_fails_unavailable_and_the_others_serve(
    drill: Drill, capsys: pytest.CaptureFixture[str]
) -> None:
    *healthy, cut = drill.replicas
    clients = {r.host: OubliClient(r.target, token=r.token, max_attempts=1) for r in drill.replicas}
    try:
        for client in clients.values():
            client.create_subject()
        drill.network.set_link(cut.host, "kms", up=False)
        cut_at = time.monotonic()
        try:
            for _ in range(3):
                with pytest.raises(Unavailable):
                    clients[cut.host].create_subject()
            for replica in healthy:
                subject = clients[replica.host].create_subject()
                clients[replica.host].create_record(
                    subject.subject_id, "contact", {"email": "b@drill.test"}
                )
            # Readiness (vault/app/readiness.py) probes the KMS every 2 s: the cut replica
            # turns NOT_SERVING, so a load balancer stops sending it calls; the others stay
            # SERVING. Liveness stays up: the process is fine, only its KMS is out of reach.
            not_serving_after = wait_for_health(cut, "NOT_SERVING", cut_at)
            assert all(health_of(r) == "SERVING" for r in healthy)
            assert health_of(cut, "oubli.liveness") == "SERVING"
        finally:
            drill.network.set_link(cut.host, "kms", up=True)
        plugged_at = time.monotonic()
        while True:
            try:
                clients[cut.host].create_subject()
                break
            except Unavailable:
                assert time.monotonic() - plugged_at < RECOVERY_BOUND, "the replica stayed cut"
                time.sleep(0.1)
        recovered_after = time.monotonic() - plugged_at
        serving_after = wait_for_health(cut, "SERVING", plugged_at)
    finally:
        for client in clients.values():
            client.close()
    with capsys.disabled():
        print(
            f"\n(b) {cut.host} cut off from OpenBao for {plugged_at - cut_at:.2f} s: "
            f"calls UNAVAILABLE there, served by {', '.join(r.host for r in healthy)}; "
            f"its health NOT_SERVING {not_serving_after:.2f} s after the cut; "
            f"served again {recovered_after:.2f} s and SERVING {serving_after:.2f} s after "
            "the cable was back"
        )
