"""(d) A shred acknowledged by one replica is refused at once by the two others."""

from __future__ import annotations

import pytest

from oubli_client import OubliClient
from oubli_client.errors import NotFound
from tests.cluster.topology import Drill

pytestmark = [pytest.mark.openbao, pytest.mark.postgres]


def test_a_shred_on_one_replica_is_refused_at_once_on_the_others(drill: Drill) -> None:
    clients = [OubliClient(r.target, token=r.token, max_attempts=1) for r in drill.replicas]
    try:
        writer, *readers = clients
        subject = writer.create_subject()
        record = writer.create_record(subject.subject_id, "contact", {"email": "d@drill.test"})
        for reader in readers:  # each replica now holds the subject's DEK in its cache
            assert reader.get_record(subject.subject_id, record.record_id, "service").fields
        writer.shred_subject(subject.subject_id)
        # Right after the acknowledgement: no wait, no retry.
        for reader in readers:
            with pytest.raises(NotFound) as refused:
                reader.get_record(subject.subject_id, record.record_id, "service")
            assert refused.value.reason == "SUBJECT_SHREDDED"
            with pytest.raises(NotFound):
                reader.create_record(subject.subject_id, "usage", {"page": "/"})
            assert reader.get_subject(subject.subject_id).state == "shredded"
    finally:
        for client in clients:
            client.close()
