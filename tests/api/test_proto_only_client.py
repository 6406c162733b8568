"""A client generated from proto/ alone (no oubli code) can do the whole flow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from grpc_tools import protoc

from tests.stack import TEST_TOKEN, Stack

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import collections, json, sys
    import grpc

    class Details(collections.namedtuple(
            "Details", "method timeout metadata credentials wait_for_ready compression"),
            grpc.ClientCallDetails):
        pass

    class Bearer(grpc.UnaryUnaryClientInterceptor):
        def __init__(self, token):
            self.metadata = (("authorization", "Bearer " + token),)

        def intercept_unary_unary(self, continuation, details, request):
            return continuation(Details(
                details.method, details.timeout, self.metadata, details.credentials,
                details.wait_for_ready, details.compression), request)

    from oubli.v1 import vault_pb2 as pb, vault_pb2_grpc as rpc

    channel = grpc.intercept_channel(
        grpc.insecure_channel(sys.argv[1]), Bearer(sys.argv[2]))
    subjects = rpc.SubjectServiceStub(channel)
    records = rpc.RecordServiceStub(channel)
    subject = subjects.CreateSubject(pb.CreateSubjectRequest()).subject
    made = records.CreateRecord(pb.CreateRecordRequest(
        subject_id=subject.subject_id, category="contact",
        fields={"email": "proto-only@example.org"}, origin="customer")).record
    got = records.GetRecord(pb.GetRecordRequest(
        subject_id=subject.subject_id, record_id=made.record_id, purpose="service")).record
    assert got.fields["email"] == "proto-only@example.org"
    export = json.loads(subjects.ExportSubject(
        pb.ExportSubjectRequest(subject_id=subject.subject_id, purpose="portability")).json)
    assert export["categories"]["contact"]["records"][0]["fields"]["email"] \\
        == "proto-only@example.org"
    receipt = subjects.ShredSubject(pb.ShredSubjectRequest(subject_id=subject.subject_id)).receipt
    try:
        records.GetRecord(pb.GetRecordRequest(
            subject_id=subject.subject_id, record_id=made.record_id, purpose="service"))
        raise SystemExit("read after shred succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
    print(receipt.key_id)
    """
)


def test_client_generated_from_proto_alone(stack: Stack, tmp_path: Path) -> None:
    wkt = Path(protoc.__file__).parent / "_proto"
    assert (
        protoc.main(
            [
                "protoc",
                f"-I{ROOT / 'proto'}",
                f"-I{wkt}",
                f"--python_out={tmp_path}",
                f"--grpc_python_out={tmp_path}",
                "oubli/v1/vault.proto",
            ]
        )
        == 0
    )
    script = tmp_path / "flow.py"
    script.write_text(SCRIPT)
    # The script imports only the freshly generated stubs (its own directory).
    result = subprocess.run(
        [sys.executable, str(script), stack.target, TEST_TOKEN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    key_id = result.stdout.strip()
    assert not stack.kms.key_exists(key_id)
