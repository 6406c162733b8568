"""OubliClient.export_to_file: the document whole, readable by its owner only, or no
file at all."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from oubli_client import NotFound, OubliClient, Unavailable
from tests.stack import TEST_TOKEN


def test_the_export_lands_whole_and_private(server_target: str, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "export.json"
    out.parent.mkdir()
    with OubliClient(server_target, token=TEST_TOKEN) as client:
        subject_id = client.create_subject().subject_id
        client.create_record(subject_id, "contact", {"email": "file@example.org"})
        size = client.export_to_file(subject_id, out)
        unary = client.export_subject(subject_id)
    document = json.loads(out.read_bytes())
    assert size == out.stat().st_size
    assert document["categories"]["contact"]["records"][0]["fields"] == {
        "email": "file@example.org"
    }
    assert document["subject"]["subject_id"] == unary["subject"]["subject_id"] == subject_id
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["export.json"]  # no temporary left


def test_a_failed_export_leaves_the_old_file_and_no_temporary(
    server_target: str, tmp_path: Path
) -> None:
    out = tmp_path / "exports" / "export.json"
    out.parent.mkdir()
    out.write_text("the previous export")
    with OubliClient(server_target, token=TEST_TOKEN) as client:
        subject_id = client.create_subject().subject_id
        client.shred_subject(subject_id)
        with pytest.raises(NotFound) as raised:
            client.export_to_file(subject_id, out)
    assert raised.value.reason == "SUBJECT_SHREDDED"
    assert out.read_text() == "the previous export"
    assert [p.name for p in out.parent.iterdir()] == ["export.json"]


def test_a_stream_cut_midway_is_exported_again_from_the_start(tmp_path: Path) -> None:
    """UNAVAILABLE after the first chunks: the whole export is fetched again, and the
    file holds the second stream only."""
    streams = [[b'{"partial": ', Unavailable(grpc.StatusCode.UNAVAILABLE, "cut")], [b"{}"]]

    def stream_export(*_: object, **__: object) -> Iterator[bytes]:
        for item in streams.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item

    sleeps: list[float] = []
    client = OubliClient("127.0.0.1:1", sleep=sleeps.append)
    client.stream_export = stream_export  # type: ignore[method-assign]
    out = tmp_path / "export.json"
    assert client.export_to_file("s", out) == 2
    assert out.read_bytes() == b"{}" and len(sleeps) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["export.json"]
