"""The retention job over 10 000 due subjects (closed accounts past their scheduled
erasure, one record each) through a real oubli server with real OpenBao; items/s per
subject erased (one Transit key destroyed per subject).

The ``writer`` server creates and closes the subjects; they are made due by moving
their scheduled erasure into the past in the database (closure schedules it 6 months
ahead); then the measured server runs RunRetention once, consuming the stream to its
summary.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select, update

from benchmarks.helpers import (
    BATCH,
    FILL_THREADS,
    Deployment,
    MeteredServer,
    Sizes,
    chunks,
    client_for,
    subjects_with_records,
)
from oubli_client import RetentionAction, RetentionSummary
from vault.storage.tables import SubjectRow

pytestmark = pytest.mark.timeout(3600)  # the full-size fill: 10 000 subjects


def make_due(database_url: str, subject_ids: list[str]) -> None:
    """Move the subjects' scheduled erasure one day into the past."""
    past = datetime.now(UTC) - timedelta(days=1)
    engine = create_engine(database_url)
    try:
        with engine.begin() as db:
            for ids in chunks(subject_ids, BATCH):
                done = db.execute(
                    update(SubjectRow)
                    .where(SubjectRow.state == "closed", SubjectRow.subject_id.in_(ids))
                    .values(scheduled_shred_at=past)
                )
                assert done.rowcount == len(ids)
        with engine.connect() as db:
            due = db.scalar(
                select(func.count())
                .select_from(SubjectRow)
                .where(SubjectRow.state == "closed", SubjectRow.scheduled_shred_at <= past)
            )
        # Only ours: the job takes at most 10 000 due subjects per run.
        assert due == len(subject_ids)
    finally:
        engine.dispose()


def test_oubli_retention_run(  # type: ignore[no-untyped-def]
    benchmark,
    oubli_server: MeteredServer,
    writer: MeteredServer,
    oubli_deployment: Deployment,
    sizes: Sizes,
) -> None:
    count = sizes.retention_subjects
    with client_for(writer) as writer_client:
        subject_ids = [r.subject_id for r in subjects_with_records(writer_client, count, 1)]
        with ThreadPoolExecutor(FILL_THREADS) as pool:
            closed = list(pool.map(writer_client.close_account, subject_ids))
    assert all(s.state == "closed" for s in closed)
    make_due(oubli_deployment.database_url, subject_ids)

    with client_for(oubli_server, timeout=600) as client:
        before = oubli_server.kms_calls()
        actions: list[RetentionAction] = []

        def run() -> RetentionSummary:
            summary = None
            for message in client.run_retention():
                if isinstance(message, RetentionSummary):
                    summary = message
                else:
                    actions.append(message)
            assert summary is not None, "the stream ended without its summary"
            return summary

        summary = benchmark.pedantic(run, rounds=1)
        kms_calls = oubli_server.kms_calls() - before
        benchmark.extra_info.update(items=summary.subjects_erased, kms_calls=kms_calls)
        assert summary.failures == 0, [a for a in actions if a.error][:5]
        assert not summary.dry_run
        assert summary.subjects_erased == count
        assert summary.records_destroyed == count
        erased = {a.target for a in actions if a.kind == "erase_subject" and not a.error}
        assert erased == set(subject_ids)
        assert client.get_subject(subject_ids[0]).state == "shredded"
        assert client.get_subject(subject_ids[-1]).state == "shredded"
