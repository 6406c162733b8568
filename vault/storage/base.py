"""Repository: the engine, sessions and connections every repository shares; each
transaction translates database errors (vault.storage.engine)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import (
    Connection,
    Engine,
)
from sqlalchemy.orm import Session, sessionmaker

from vault.storage.engine import translate_db_errors


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
