"""Repository: the engine, sessions and connections every repository shares; each
transaction translates database errors (vault.storage.engine). Also the readiness probe's
``ping`` and the metrics' ``pool_status`` (vault/app/readiness.py, vault/app/metrics.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import (
    Connection,
    Engine,
    QueuePool,
    text,
)
from sqlalchemy.orm import Session, sessionmaker

from vault.errors import Unavailable
from vault.storage.engine import sqlite_writer, translate_db_errors


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """The connection pool's use now (read at each metrics scrape)."""

    #: Connections the pool keeps open (``pool_size``).
    size: int
    #: Connections lent out to transactions now.
    checked_out: int
    #: Open connections beyond ``size`` now (0 when within it).
    overflow: int
    #: The most connections allowed beyond ``size``.
    max_overflow: int


def begin_immediate(connection: Connection) -> None:
    """``BEGIN IMMEDIATE`` on a SQLite connection's driver connection: the write lock
    from the transaction's start. Sent to the driver itself, as Core's
    ``exec_driver_sql`` would send it, without an execution context and a result for a
    statement that has neither parameters nor rows (every write transaction runs it).

    Raises:
        Unavailable: the lock was not had (``database is locked`` after the busy
            timeout), or the database failed; the driver's exception is the cause.
    """
    try:
        connection.connection.dbapi_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
    except sqlite3.Error as e:
        raise Unavailable(f"database error: {type(e).__name__}") from e


class Repository:
    """What every repository shares: the engine and its transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with translate_db_errors(), self._sessions.begin() as session:
            yield session

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A Core transaction (no Session): the hot paths' reads and batch writes. Same
        error translation as :meth:`_session`."""
        with translate_db_errors(), self.engine.begin() as connection:
            yield connection

    def ping(self) -> None:
        """One trivial round trip (``SELECT 1``) to the database.

        Raises:
            Unavailable: the database cannot be reached.
        """
        with self._connection() as connection:
            connection.execute(text("SELECT 1"))

    def pool_status(self) -> PoolStatus | None:
        """The connection pool's use now; None for a pool that keeps no such counts
        (an in-memory SQLite database's). No round trip to the database."""
        pool = self.engine.pool
        if not isinstance(pool, QueuePool):
            return None
        return PoolStatus(
            size=pool.size(),
            checked_out=pool.checkedout(),
            # QueuePool counts from -size: connections opened beyond size are its excess.
            overflow=max(0, pool.overflow()),
            max_overflow=pool._max_overflow,
        )

    @contextmanager
    def _write_connection(self) -> Iterator[Connection]:
        """A Core transaction that reads then writes on one consistent state: on SQLite
        it holds the write lock from its start (``BEGIN IMMEDIATE``, queued behind this
        process's other writers by :func:`sqlite_writer`); elsewhere a plain transaction
        whose statements take their own row locks."""
        with sqlite_writer(self.engine), self._connection() as connection:
            if connection.dialect.name == "sqlite":
                begin_immediate(connection)
            yield connection

    @contextmanager
    def _write_session(self) -> Iterator[Session]:
        """:meth:`_write_connection` as an ORM session."""
        with sqlite_writer(self.engine), self._session() as session:
            connection = session.connection()
            if connection.dialect.name == "sqlite":
                begin_immediate(connection)
            yield session
