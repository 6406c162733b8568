"""The engine: SQLite or PostgreSQL URL -> SQLAlchemy engine, the one translation of
database errors, SQLite's single writer, migrations to head."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    Engine,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError

from vault.errors import AlreadyExists, Unavailable
from vault.private_files import create_private_file, tighten


def make_engine(url: str) -> Engine:
    """Engine with the settings oubli relies on for each backend.

    A SQLite database file is created 0600 before SQLite opens it (its ``-wal`` and
    ``-shm`` then get the same mode); an existing one open to others is tightened.
    """
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            # Pooled: opening a connection (and its PRAGMAs) per transaction cost more
            # than the transaction itself (put 2.9 -> 1.3 ms, get 1.4 -> 0.5 ms).
            pool_size=16,
            max_overflow=16,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # Deleted ciphertext of a shredded subject is overwritten, not left in
            # free pages (it is useless without the key, but there is no reason to keep it).
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


#: Where a connection keeps its open transaction's span (Connection.info).
_SPAN = "oubli.span"


def trace_transactions(engine: Engine, tracer: Any) -> None:
    """One span per transaction on ``engine`` (vault/app/tracing.py), a child of the
    span current when it begins (the RPC's; background work outside any RPC — readiness
    probes, checkpoints — is not traced). Its attributes are the dialect and commit or
    rollback: never SQL text, never parameters. ``tracer`` is an OpenTelemetry Tracer
    (imported only when tracing is on)."""
    from opentelemetry import trace

    system = engine.dialect.name

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        if not trace.get_current_span().is_recording():
            return
        connection.info[_SPAN] = tracer.start_span(
            "db.transaction", attributes={"db.system": system}
        )

    def _end(outcome: str) -> Any:
        def end(connection: Any) -> None:
            span = connection.info.pop(_SPAN, None)
            if span is not None:
                span.set_attribute("oubli.db.outcome", outcome)
                span.end()

        return end

    event.listen(engine, "commit", _end("commit"))
    event.listen(engine, "rollback", _end("rollback"))


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (parsed, not prefix-matched:
    ``sqlite+pysqlite:///f.db?timeout=5`` is ``f.db``); None for another database or an
    in-memory one. ValueError when ``url`` is not a database URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError("not a valid SQLAlchemy URL") from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _private_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return  # in memory, or a URI whose options SQLite interprets: left to SQLite
    path = Path(database)
    if path.parent.is_dir():  # else SQLite reports the missing directory, as before
        create_private_file(path)
        tighten(Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm"))


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """The database seam's one translation of SQLAlchemy errors into domain errors
    (the exception class only: a driver's message may quote a value)."""
    try:
        yield
    except IntegrityError as e:
        raise AlreadyExists("a row with the same unique key exists") from e
    except DBAPIError as e:
        raise Unavailable(f"database error: {type(e.orig).__name__}") from e
    except SQLAlchemyError as e:
        raise Unavailable(f"database error: {type(e).__name__}") from e


_WRITERS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_WRITERS_GUARD = threading.Lock()


@contextmanager
def sqlite_writer(engine: Engine) -> Iterator[None]:
    """Queue this process's SQLite writers on a lock before ``BEGIN IMMEDIATE``.

    SQLite has one write lock; a writer that finds it taken sleeps in its busy handler
    (1, 2, 5, 10 … ms) and polls again, so concurrent writers of one process — audit
    appends beside record inserts — lose milliseconds each. Waiting on a lock here
    wakes them the moment the writer before them commits. Other processes still meet
    at SQLite's own lock. A no-op for other databases.
    """
    if engine.dialect.name != "sqlite":
        yield
        return
    with _WRITERS_GUARD:
        lock = _WRITERS.setdefault(engine, threading.Lock())
    with lock:
        yield


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (no-op when already there)."""
    config = AlembicConfig()
    config.set_main_option(
        "script_location", str(resources.files("vault.storage").joinpath("migrations"))
    )
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as e:
        raise Unavailable(f"database migration failed: {type(e).__name__}") from e
