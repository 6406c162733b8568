"""Batch put, batch get (warm and cold) and shred through a real oubli server with
real OpenBao, 1 KiB records; items/s per record (puts, gets) or per subject (shreds).

Cold means the measured server never unwrapped the subjects' DEKs: a second server on
the same database and Transit mount (``writer``) creates them, and each round reads
fresh ones. The measured server's ``oubli_kms_calls_total`` is read around each cold
batch: Transit's batch decrypt is per key, so expect about one call per cold subject.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from benchmarks.helpers import (
    CATEGORY,
    FIELD,
    MESSAGE,
    PURPOSE,
    MeteredServer,
    Sizes,
    client_for,
    create_subjects,
    new_record,
    subjects_with_records,
)
from oubli_client import OubliClient, Record, ShredReceipt

pytestmark = pytest.mark.timeout(3600)  # full-size fills (thousands of subjects)


@pytest.fixture(scope="module")
def client(oubli_server: MeteredServer) -> Iterator[OubliClient]:
    with client_for(oubli_server) as c:
        yield c


@pytest.fixture(scope="module")
def writer_client(writer: MeteredServer) -> Iterator[OubliClient]:
    with client_for(writer) as c:
        yield c


class KmsCounter:
    """Reads the measured server's KMS call counter before each round (pedantic's
    setup) and once after the last: nothing else calls the server in between, so the
    differences are the rounds' KMS calls."""

    def __init__(self, server: MeteredServer) -> None:
        self.server = server
        self.readings: list[int] = []

    def read(self) -> None:
        self.readings.append(self.server.kms_calls())

    def per_round(self) -> list[int]:
        return [b - a for a, b in zip(self.readings, self.readings[1:], strict=False)]


def counted(call: Callable[..., Any]) -> tuple[Callable[..., Any], list[Any]]:
    """``call``, keeping every result (to check all rounds, not only the last)."""
    results: list[Any] = []

    def run(*args: Any) -> Any:
        result = call(*args)
        results.append(result)
        return result

    return run, results


def assert_records(results: list[Any], expected: list[Record]) -> None:
    assert len(results) == len(expected)
    for got, want in zip(results, expected, strict=True):
        assert isinstance(got, Record), got
        assert (got.subject_id, got.record_id) == (want.subject_id, want.record_id)
        assert got.fields == {FIELD: MESSAGE}


# --- put ------------------------------------------------------------------------------


def test_oubli_batch_put(benchmark, client: OubliClient, sizes: Sizes) -> None:  # type: ignore[no-untyped-def]
    """One BatchCreateRecords of 1 000 records spread over 100 subjects per call."""
    subjects = create_subjects(client, sizes.put_subjects)
    batch = [new_record(subjects[i % len(subjects)]) for i in range(sizes.put_records)]
    benchmark.extra_info.update(items=len(batch), baseline="naive_encrypt")
    run, results = counted(client.batch_create_records)
    benchmark(run, batch)
    assert results
    for stored in results:
        assert [r.subject_id for r in stored] == [r.subject_id for r in batch]
        assert all(r.version == 1 and r.category == CATEGORY for r in stored)
    last = results[-1]
    assert len({r.record_id for r in last}) == len(batch)
    reads = [(r.subject_id, r.record_id, PURPOSE) for r in last]
    assert_records(client.batch_get_records(reads), last)


# --- get ------------------------------------------------------------------------------


def test_oubli_batch_get_warm(  # type: ignore[no-untyped-def]
    benchmark,
    client: OubliClient,
    writer_client: OubliClient,
    oubli_server: MeteredServer,
    sizes: Sizes,
) -> None:
    """1 000 records of 1 000 subjects, all read once just before timing (DEKs cached).

    The writer creates them, so that every DEK enters the measured server's cache (60 s
    TTL from insertion) in that one read, not during a fill that may take longer."""
    records = subjects_with_records(writer_client, sizes.get_records, 1)
    reads = [(r.subject_id, r.record_id, PURPOSE) for r in records]
    assert_records(client.batch_get_records(reads), records)  # warms the DEK cache
    before = oubli_server.kms_calls()
    run, results = counted(client.batch_get_records)
    benchmark(run, reads)
    kms_calls = oubli_server.kms_calls() - before
    benchmark.extra_info.update(
        items=len(reads),
        baseline="naive_decrypt",
        kms_calls=round(kms_calls / len(results), 1),  # per batch; 0 while cached (60 s)
    )
    for result in results:
        assert_records(result, records)


def test_oubli_batch_get_cold(  # type: ignore[no-untyped-def]
    benchmark,
    client: OubliClient,
    writer_client: OubliClient,
    oubli_server: MeteredServer,
    sizes: Sizes,
) -> None:
    """1 000 records of 1 000 subjects the measured server has never seen, per round."""
    rounds = [
        subjects_with_records(writer_client, sizes.get_records, 1) for _ in range(sizes.cold_rounds)
    ]
    pending = iter(rounds)
    kms = KmsCounter(oubli_server)
    expected: list[list[Record]] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        records = next(pending)
        expected.append(records)
        kms.read()
        return ([(r.subject_id, r.record_id, PURPOSE) for r in records],), {}

    run, results = counted(client.batch_get_records)
    benchmark.pedantic(run, setup=setup, rounds=sizes.cold_rounds)
    kms.read()
    per_round = kms.per_round()
    benchmark.extra_info.update(
        items=sizes.get_records, baseline="naive_decrypt", kms_calls=per_round
    )
    assert results and len(results) == len(expected)
    for result, records in zip(results, expected, strict=True):
        assert_records(result, records)
    # Cold for real: every batch had to unwrap its subjects' DEKs through Transit.
    assert all(calls > 0 for calls in per_round), per_round


# --- shred ----------------------------------------------------------------------------


def assert_receipts(results: list[Any], subject_ids: list[str], records: int) -> None:
    assert len(results) == len(subject_ids)
    for receipt, subject_id in zip(results, subject_ids, strict=True):
        assert isinstance(receipt, ShredReceipt), receipt
        assert receipt.subject_id == subject_id
        assert receipt.records_deleted == records


def doomed_subjects(writer_client: OubliClient, count: int) -> list[str]:
    """``count`` subjects with 2 records each, made by the writer."""
    records = subjects_with_records(writer_client, count, 2)
    return [r.subject_id for r in records[:count]]


def test_oubli_batch_shred(  # type: ignore[no-untyped-def]
    benchmark,
    client: OubliClient,
    writer_client: OubliClient,
    oubli_server: MeteredServer,
    sizes: Sizes,
) -> None:
    """One BatchShredSubjects of 1 000 subjects (2 records each) per round."""
    batches = [doomed_subjects(writer_client, sizes.shred_batch) for _ in range(sizes.shred_rounds)]
    pending = iter(batches)
    used: list[list[str]] = []
    kms = KmsCounter(oubli_server)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        used.append(next(pending))
        kms.read()
        return (used[-1],), {}

    run, results = counted(client.shred_subjects)
    benchmark.pedantic(run, setup=setup, rounds=sizes.shred_rounds)
    kms.read()
    benchmark.extra_info.update(items=sizes.shred_batch, kms_calls=kms.per_round())
    assert results and len(results) == len(used)
    for result, subject_ids in zip(results, used, strict=True):
        assert_receipts(result, subject_ids, 2)
    assert client.get_subject(used[0][0]).state == "shredded"


def test_oubli_unary_shred(  # type: ignore[no-untyped-def]
    benchmark, client: OubliClient, writer_client: OubliClient, sizes: Sizes
) -> None:
    """One ShredSubject per round (2 records), for comparison with the batch."""
    pending = iter(doomed_subjects(writer_client, sizes.unary_shreds))
    used: list[str] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        used.append(next(pending))
        return (used[-1],), {}

    benchmark.extra_info["items"] = 1
    run, results = counted(client.shred_subject)
    # The smoke run (--benchmark-disable) runs one round whatever ``rounds`` says.
    benchmark.pedantic(run, setup=setup, rounds=sizes.unary_shreds)
    assert results
    assert_receipts(results, used, 2)
    assert client.get_subject(used[-1]).state == "shredded"
