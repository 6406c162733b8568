"""Streaming export of one big subject (100 000 records of 1 KiB) through a real oubli
server with real OpenBao; items/s per record, and the server's memory growth.

The subject is filled through the ``writer`` server, and the export is measured on a
fresh server process on the same database and Transit mount: its peak resident memory
(VmHWM, since the process started) then reflects the export alone, not the fill.
Memory growth = peak after the exports - resident memory (VmRSS) before them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from benchmarks.helpers import (
    CATEGORY,
    FIELD,
    MESSAGE,
    Deployment,
    MeteredServer,
    Sizes,
    client_for,
    new_record,
    store,
)
from oubli_client import OubliClient

pytestmark = pytest.mark.timeout(3600)  # the full-size fill

#: How each record's line starts in the export document (vault/usecases/export.py).
MARK = b'{"record_id": '


@pytest.fixture(scope="module")
def big_subject(writer: MeteredServer, sizes: Sizes) -> str:
    """A subject with ``sizes.export_records`` records, 1 000 per batch put."""
    with client_for(writer) as client:
        subject_id = client.create_subject().subject_id
        stored = store(client, (new_record(subject_id) for _ in range(sizes.export_records)))
    assert len(stored) == sizes.export_records
    return subject_id


@pytest.fixture(scope="module")
def exporter(oubli_deployment: Deployment, big_subject: str) -> Iterator[MeteredServer]:
    """A fresh server process that has done nothing but start."""
    server = oubli_deployment.server("exporter")
    yield server
    server.stop()


def consume(client: OubliClient, subject_id: str) -> tuple[int, int, bytes]:
    """Read the whole stream: (records, bytes, the document's last bytes)."""
    records = size = 0
    tail = last = b""
    for chunk in client.stream_export(subject_id):
        window = tail + chunk  # a record's mark may straddle two chunks
        records += window.count(MARK)
        tail = window[-(len(MARK) - 1) :]  # too short to hold a whole mark
        size += len(chunk)
        last = (last + chunk[-64:])[-64:]
    return records, size, last


def check_document(client: OubliClient, subject_id: str, expected: int) -> None:
    """Untimed: every record of the streamed document, line by line (bounded memory);
    and the whole document as JSON when it is small."""
    pending = b""
    records = 0
    document: list[bytes] = []
    for chunk in client.stream_export(subject_id):
        if expected <= 10_000:
            document.append(chunk)
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.startswith(MARK):
                record = json.loads(line.rstrip(b","))
                assert record["fields"] == {FIELD: MESSAGE}
                assert record["version"] == 1
                records += 1
    assert records == expected
    if document:
        parsed = json.loads(b"".join(document))
        assert parsed["format"] == "oubli.export.v1"
        assert parsed["subject"]["subject_id"] == subject_id
        assert len(parsed["categories"][CATEGORY]["records"]) == expected


def test_oubli_stream_export(  # type: ignore[no-untyped-def]
    benchmark, exporter: MeteredServer, big_subject: str, sizes: Sizes
) -> None:
    with client_for(exporter) as client:
        rss_before, peak_before = exporter.memory_mb()
        runs: list[tuple[int, int, bytes]] = []
        benchmark.pedantic(
            lambda: runs.append(consume(client, big_subject)), rounds=sizes.export_rounds
        )
        _, peak = exporter.memory_mb()
        benchmark.extra_info.update(
            items=sizes.export_records,
            baseline="naive_decrypt",
            memory_growth_mb=round(peak - rss_before, 1),
            rss_before_mb=round(rss_before, 1),
            peak_mb=round(peak, 1),
            peak_before_mb=round(peak_before, 1),
            export_mb=round(runs[-1][1] / 2**20, 1) if runs else None,
        )
        assert runs
        for records, size, last in runs:
            assert records == sizes.export_records
            assert size > sizes.export_records * len(MESSAGE)
            assert last.endswith(b"]}}}\n")
        check_document(client, big_subject, sizes.export_records)
