"""Many record rows in one statement: PostgreSQL's ``COPY ... FROM STDIN (FORMAT
BINARY)``, SQLite's ``executemany`` of one prepared ``INSERT``.

Batch puts write up to 1 000 rows of ~1 KiB at once. Through SQLAlchemy's Core
``executemany`` each row's every value goes through its column type's bind processor in
Python (the times per row, twice); here a batch's distinct times are converted once
(a batch's records share their creation time) and the rows go to the driver as plain
tuples: psycopg encodes them in C into one COPY stream, sqlite3 binds them in C.

Semantics are those of the INSERT it replaces: rows land in the caller's transaction
(all or none), a duplicate primary key or profile record (``uq_records_subject_singleton``)
fails the whole statement, translated here like :func:`vault.storage.engine.translate_db_errors`
does for SQLAlchemy's errors (AlreadyExists; Unavailable for any other driver error),
the exception class only — a driver's message may quote a value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from vault.errors import AlreadyExists, Unavailable
from vault.storage.rows import StoredRecord
from vault.storage.statements import RECORDS

#: The records table's columns, in the order of each row tuple.
COLUMNS = (
    "subject_id",
    "record_id",
    "category",
    "singleton",
    "version",
    "ciphertext",
    "origin",
    "created_at",
    "updated_at",
    "key_scheme",
    "bucket_id",
    "retain_until",
)
#: PostgreSQL types of the COLUMNS for a binary COPY (varchar travels as text).
_PG_TYPES = (
    "text",
    "text",
    "text",
    "text",
    "int4",
    "bytea",
    "text",
    "timestamp",
    "timestamp",
    "text",
    "text",
    "timestamp",
)
_PG_COPY = f"COPY records ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# Built from the constant column names above, no input: not an injection vector.
_SQLITE_INSERT = (
    f"INSERT INTO records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608
)


def insert_record_rows(
    connection: Connection, records: Sequence[tuple[StoredRecord, str | None]]
) -> None:
    """Insert ``records`` (each with its singleton) in ``connection``'s transaction,
    as one COPY (PostgreSQL) or one prepared executemany (SQLite).

    Raises:
        AlreadyExists: a record id, or a profile category's one record, exists already
            (nothing of the statement is written; the caller's transaction rolls back).
    """
    if not records:
        return
    rows = list(_rows(connection, records))
    if connection.dialect.name == "postgresql":
        _copy(connection, rows)
    else:
        # Driver-level executemany: no bind processors (the values are ready), errors
        # wrapped by SQLAlchemy and translated by the caller's transaction.
        connection.exec_driver_sql(_SQLITE_INSERT, rows)


def _rows(
    connection: Connection, records: Sequence[tuple[StoredRecord, str | None]]
) -> Iterator[tuple[Any, ...]]:
    stored_time = _time_converter(connection)
    for r, singleton in records:
        yield (
            r.subject_id,
            r.record_id,
            r.category,
            singleton,
            r.version,
            r.ciphertext,
            r.origin,
            stored_time(r.created_at),
            stored_time(r.updated_at),
            str(r.key_scheme),
            r.bucket_id,
            None if r.retain_until is None else stored_time(r.retain_until),
        )


def _time_converter(connection: Connection) -> Callable[[datetime], Any]:
    """A time as the column type stores it on this database (UtcDateTime's naive UTC,
    and on SQLite its text form), each distinct value converted once."""
    process = RECORDS.c.created_at.type.bind_processor(connection.dialect)
    done: dict[datetime, Any] = {}

    def convert(value: datetime) -> Any:
        found = done.get(value)
        if found is None:
            found = done[value] = process(value) if process is not None else value
        return found

    return convert


def _copy(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    driver = connection.connection.driver_connection
    assert driver is not None  # a live connection of the transaction
    with _driver_errors(), driver.cursor() as cursor, cursor.copy(_PG_COPY) as copy:
        copy.set_types(list(_PG_TYPES))
        for row in rows:
            copy.write_row(row)


@contextmanager
def _driver_errors() -> Iterator[None]:
    """psycopg's own errors (COPY bypasses SQLAlchemy's wrapping) as domain errors."""
    import psycopg  # PostgreSQL deployments only: SQLite ones need not install it

    try:
        yield
    except psycopg.errors.IntegrityError as e:
        raise AlreadyExists("a row with the same unique key exists") from e
    except psycopg.Error as e:
        raise Unavailable(f"database error: {type(e).__name__}") from e
