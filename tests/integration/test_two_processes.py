"""A shred through one server process is refused at once by another.

Both processes share the database and the KMS (real OpenBao); the second one has the
subject's DEK in its cache when the first shreds, and must still refuse.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from oubli_client import OubliClient
from oubli_client.errors import NotFound
from tests.integration.processes import ServerProcess, replica_args
from vault.app.openbao_process import OpenBaoDevServer


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_shred_on_one_replica_is_refused_by_the_other_at_once(
    backend: str, tmp_path: Path, openbao: OpenBaoDevServer, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    args = replica_args(url, openbao.address)
    env = {"VAULT_TOKEN": openbao.token}
    with (
        ServerProcess(tmp_path / "a", *args, env=env) as a,
        ServerProcess(tmp_path / "b", *args, env=env) as b,
        OubliClient(a.target, token=a.token) as client_a,
        OubliClient(b.target, token=b.token) as client_b,
    ):
        subject = client_a.create_subject()
        record = client_a.create_record(subject.subject_id, "contact", {"email": "x@y.z"})
        # B reads it: its cache now holds the subject's DEK.
        assert client_b.get_record(subject.subject_id, record.record_id, "service").fields
        client_a.shred_subject(subject.subject_id)
        with pytest.raises(NotFound) as refused:
            client_b.get_record(subject.subject_id, record.record_id, "service")
        assert refused.value.reason == "SUBJECT_SHREDDED"
        with pytest.raises(NotFound):
            client_b.create_record(subject.subject_id, "usage", {"page": "/"})
        assert client_b.get_subject(subject.subject_id).state == "shredded"
