"""Records by (subject id, record id) pairs — their primary key — in one statement.

A batch get names up to 1 000 records of as many subjects. Looking them up by record id
alone (``record_id IN (...)``) reads rows of other subjects that happen to share nothing
but must be filtered in Python, and a long ``OR`` of pairs is a statement the planner
expands term by term. Here the pairs are a relation joined on the primary key:

- PostgreSQL: ``unnest(:subject_ids, :record_ids)``, two array parameters, one statement
  built once whatever the batch size;
- SQLite: a ``VALUES`` list of the pairs (one statement text per list length, cached).

Both keep the readers' rule that a record under a destroyed bucket is not readable
(:func:`vault.storage.statements.live_bucket_or_none`).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, String, and_, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY

from vault.storage.statements import RECORDS, live_bucket_or_none
from vault.vocabulary import BucketState

#: Pairs per SQLite statement: two parameters each, well under SQLite's 32 766.
SQLITE_PAIRS = 1000

_KEYS = (
    func.unnest(
        bindparam("subject_ids", type_=ARRAY(String)),
        bindparam("record_ids", type_=ARRAY(String)),
    )
    .table_valued("subject_id", "record_id")
    .render_derived(name="k")
)
_PG_BY_KEYS = (
    select(RECORDS)
    .join(
        _KEYS,
        and_(RECORDS.c.subject_id == _KEYS.c.subject_id, RECORDS.c.record_id == _KEYS.c.record_id),
    )
    .where(live_bucket_or_none())
)


@functools.lru_cache(maxsize=64)
def _sqlite_by_keys(count: int) -> Any:
    """The SQLite statement for ``count`` pairs, bound as :s<i>, :r<i>."""
    columns = ", ".join(f"r.{c.name}" for c in RECORDS.c)
    pairs = ", ".join(f"(:s{i}, :r{i})" for i in range(count))
    return text(
        f"SELECT {columns} FROM records AS r"  # noqa: S608 - names and placeholders only
        f" JOIN (VALUES {pairs}) AS k ON r.subject_id = k.column1 AND r.record_id = k.column2"
        " WHERE r.bucket_id IS NULL OR EXISTS (SELECT 1 FROM retention_buckets AS b"
        f" WHERE b.bucket_id = r.bucket_id AND b.state = '{BucketState.ACTIVE.value}')"
    ).columns(*RECORDS.c)


def rows_by_keys(connection: Connection, keys: Collection[tuple[str, str]]) -> Iterator[Any]:
    """The readable record rows among (subject_id, record_id) ``keys`` (each once)."""
    wanted: Sequence[tuple[str, str]] = sorted(set(keys))
    if not wanted:
        return
    if connection.dialect.name == "postgresql":
        subject_ids = [subject_id for subject_id, _ in wanted]
        record_ids = [record_id for _, record_id in wanted]
        yield from connection.execute(
            _PG_BY_KEYS, {"subject_ids": subject_ids, "record_ids": record_ids}
        )
        return
    for start in range(0, len(wanted), SQLITE_PAIRS):
        chunk = wanted[start : start + SQLITE_PAIRS]
        params: dict[str, str] = {}
        for i, (subject_id, record_id) in enumerate(chunk):
            params[f"s{i}"] = subject_id
            params[f"r{i}"] = record_id
        yield from connection.execute(_sqlite_by_keys(len(chunk)), params)
