"""Prepared reads: the hottest single-row reads, compiled once, run on the DBAPI connection.

A Core ``connection.execute(statement)`` costs ~240 000 CPU instructions of SQLAlchemy
machinery per call (cache key, compiled-cache lookup, parameter construction, execution
context, result metadata, transaction and pool bookkeeping) against ~20 000 for the
driver's own ``cursor.execute`` of the same SQL. For the few reads every call makes
(the caller's token, the subject and its record), :class:`PreparedRead` keeps the SQL
SQLAlchemy compiled for the engine's dialect, the order of its parameters and the type
processors of its binds and columns, and runs it on a connection of the same pool with
the driver's cursor: same SQL, same parameters, same values out, a tenth of the work.

Equivalence with ``engine.connect()`` + ``execute(...).first()``: one statement, no
write, so no transaction is needed beyond the statement's own (SQLite reads in
autocommit; on PostgreSQL the driver's implicit transaction is rolled back when the
connection goes back to the pool, as Core's would be). Driver errors are translated as
:func:`vault.storage.engine.translate_db_errors` translates SQLAlchemy's. When the
engine is traced (vault/app/tracing.py listens to its transactions), the read goes
through Core instead, so that it still has its ``db.transaction`` span.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Engine, Select

from vault.errors import Unavailable
from vault.storage.engine import translate_db_errors


class _Compiled:
    """One statement compiled for one dialect, with what running it by hand needs."""

    __slots__ = ("bind_processors", "defaults", "positional", "row", "row_processors", "sql")

    def __init__(self, statement: Select[Any], engine: Engine) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        for bind in compiled.binds.values():
            if bind.expanding:
                raise ValueError("a prepared read takes no expanding (IN list) parameters")
        self.sql: str = compiled.string
        #: The parameters' names in their order (positional paramstyles: SQLite's qmark).
        self.positional: tuple[str, ...] | None = (
            tuple(compiled.positiontup or ()) if dialect.positional else None
        )
        #: Values the statement carries itself (literals compared against, e.g. a state).
        self.defaults: dict[str, Any] = {
            name: bind.value
            for name, bind in compiled.binds.items()
            if not bind.required and bind.callable is None
        }
        self.bind_processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self.bind_processors[name] = process
        columns = list(statement.selected_columns)
        self.row: Any = namedtuple("Row", [c.key for c in columns])  # type: ignore[misc]
        self.row_processors: list[tuple[int, Callable[[Any], Any]]] = []
        for i, column in enumerate(columns):
            process = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if process is not None:
                self.row_processors.append((i, process))

    def parameters(self, params: Mapping[str, Any]) -> Any:
        values = {**self.defaults, **params}
        for name, process in self.bind_processors.items():
            values[name] = process(values[name])
        if self.positional is not None:
            return tuple(values[name] for name in self.positional)
        return values

    def make_row(self, raw: Any) -> Any:
        values = list(raw)
        for i, process in self.row_processors:
            values[i] = process(values[i])
        return self.row._make(values)


class PreparedRead:
    """A single-statement read, compiled once per engine and run on the driver's cursor.

    :meth:`first` returns the first row (attributes named as the statement's columns and
    labels, values as Core would return them) or None.
    """

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self._compiled: dict[Engine, _Compiled] = {}
        self._lock = threading.Lock()

    def _for(self, engine: Engine) -> _Compiled:
        found = self._compiled.get(engine)
        if found is None:
            with self._lock:
                found = self._compiled.setdefault(engine, _Compiled(self.statement, engine))
        return found

    def first(self, engine: Engine, params: Mapping[str, Any]) -> Any | None:
        """Raises:
        Unavailable: the database could not be read.
        """
        if engine.dispatch.begin:  # traced (or otherwise watched): Core, with its events
            with translate_db_errors(), engine.connect() as c:
                return c.execute(self.statement, dict(params)).first()
        compiled = self._for(engine)
        dialect = engine.dialect
        try:  # the pool hands out the driver's errors of a connect or a pre-ping as they are
            with translate_db_errors():
                connection = engine.raw_connection()
        except dialect.loaded_dbapi.Error as e:
            raise Unavailable(f"database error: {type(e).__name__}") from e
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(compiled.sql, compiled.parameters(params))
                raw = cursor.fetchone()
            finally:
                cursor.close()
        except dialect.loaded_dbapi.Error as e:
            if dialect.is_disconnect(e, connection.dbapi_connection, None):
                connection.invalidate(e)  # not back into the pool: Core does the same
            raise Unavailable(f"database error: {type(e).__name__}") from e
        finally:
            connection.close()  # back to the pool, which rolls back what is open
        return None if raw is None else compiled.make_row(raw)
