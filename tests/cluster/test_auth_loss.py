"""(e) The replicas lose their Vault authentication under a bounded write load: every
replica's AppRole secret id is destroyed and every token AppRole gave out is revoked
(the operator, with the root token). Every replica fails closed: calls that need the KMS
answer UNAVAILABLE (never INTERNAL) and health turns NOT_SERVING (liveness stays up).
New secret ids written to the replicas' files (and the role unlocked: OpenBao's user
lockout locks it after 5 failed logins, see Drill.restore_credentials): every replica
logs in again by itself (no restart), serves, and says SERVING. Both times are measured.
"""

from __future__ import annotations

import time

import grpc
import pytest

from oubli_client import OubliClient
from oubli_client.errors import OubliClientError
from tests.cluster.health import health_of, wait_for_health
from tests.cluster.load import WriteLoad
from tests.cluster.topology import Drill

pytestmark = [pytest.mark.openbao, pytest.mark.postgres]

#: The longest any replica may take to fail closed, or to serve again.
BOUND = 30.0


def outcome(client: OubliClient) -> str:
    """A new subject (a new Transit key: always a KMS call, never a cached DEK)."""
    try:
        client.create_subject()
    except OubliClientError as e:
        return e.code.name
    return "OK"


def wait_for_outcome(client: OubliClient, wanted: str, since: float) -> float:
    """Seconds from ``since`` until a call on ``client`` answers ``wanted`` (bounded);
    meanwhile every answer is OK or UNAVAILABLE."""
    while (seen := outcome(client)) != wanted:
        assert seen in ("OK", "UNAVAILABLE"), f"answered {seen}"
        assert time.monotonic() - since < BOUND, f"never answered {wanted}"
        time.sleep(0.05)
    return time.monotonic() - since


def test_replicas_that_lose_vault_auth_fail_closed_and_recover_by_themselves(
    drill: Drill, capsys: pytest.CaptureFixture[str]
) -> None:
    replicas = drill.replicas
    probes = {r.host: OubliClient(r.target, token=r.token, max_attempts=1) for r in replicas}
    load = WriteLoad(replicas, per_writer=300, pause=0.1).start()
    try:
        # Serving on AppRole before the fault.
        started = time.monotonic()
        for replica in replicas:
            while load.successes_after(replica.host, started) == 0:
                assert time.monotonic() - started < BOUND, f"{replica.host} never wrote"
                time.sleep(0.05)
        assert all(health_of(r) == "SERVING" for r in replicas)

        drill.take_credentials_away()
        revoked_at = time.monotonic()
        unavailable_after = {
            r.host: wait_for_outcome(probes[r.host], "UNAVAILABLE", revoked_at) for r in replicas
        }
        not_serving_after = {
            r.host: wait_for_health(r, "NOT_SERVING", revoked_at, BOUND) for r in replicas
        }
        for replica in replicas:
            assert health_of(replica, "oubli.liveness") == "SERVING"
            assert {outcome(probes[replica.host]) for _ in range(3)} == {"UNAVAILABLE"}

        was_locked = drill.restore_credentials()
        restored_at = time.monotonic()
        served_after = {
            r.host: wait_for_outcome(probes[r.host], "OK", restored_at) for r in replicas
        }
        serving_after = {
            r.host: wait_for_health(r, "SERVING", restored_at, BOUND) for r in replicas
        }
        # The load's writers, too, write again on every replica.
        for replica in replicas:
            while load.successes_after(replica.host, restored_at) == 0:
                assert time.monotonic() - restored_at < BOUND, f"{replica.host}'s writer stuck"
                time.sleep(0.05)
    finally:
        load.stop()
        for probe in probes.values():
            probe.close()

    codes = {f.code for f in load.failures}
    assert codes <= {grpc.StatusCode.UNAVAILABLE}, f"failures other than UNAVAILABLE: {codes}"
    assert load.failures, "the load saw no failure: the credentials were not taken away"
    # Every acknowledged write reads back (through another replica).
    readers = {r.host: OubliClient(r.target, token=r.token) for r in replicas}
    try:
        hosts = [r.host for r in replicas]
        for n, w in enumerate(load.written):
            other = hosts[(hosts.index(w.replica) + 1 + n % 2) % len(hosts)]
            got = readers[other].get_record(w.subject_id, w.record_id, "service")
            assert got.fields == w.fields
    finally:
        for reader in readers.values():
            reader.close()

    def span(figures: dict[str, float]) -> str:
        return f"{min(figures.values()):.2f}-{max(figures.values()):.2f} s"

    with capsys.disabled():
        print(
            f"\n(e) Vault auth taken away for {restored_at - revoked_at:.2f} s under load: "
            f"UNAVAILABLE on every replica {span(unavailable_after)} after the revocation, "
            f"health NOT_SERVING {span(not_serving_after)}; new secret ids (and the role "
            f"{'unlocked: OpenBao had locked it' if was_locked else 'never locked'}): served again "
            f"{span(served_after)}, SERVING {span(serving_after)} after they were written; "
            f"{len(load.written)} writes acknowledged (all read back), "
            f"{len(load.failures)} UNAVAILABLE, none otherwise"
        )
