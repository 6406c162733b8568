"""Bearer tokens (``bearer_tokens``): lookup by hash on every call, and the writes of
the lifecycle commands (vault.access.tokens decides what to write)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, insert, or_, select, update

from vault.storage.base import Repository
from vault.storage.engine import sqlite_writer, translate_db_errors
from vault.storage.prepared import PreparedRead
from vault.storage.statements import chunks
from vault.storage.tables import BearerTokenRow

TOKENS = cast(Table, BearerTokenRow.__table__)
#: Read on every call: compiled once, run on the driver's cursor (vault.storage.prepared).
_FIND = PreparedRead(select(TOKENS).where(TOKENS.c.token_hash == bindparam("token_hash")))


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A token's row without its hash."""

    token_id: str
    caller: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    replaced_by: str | None
    last_used_at: datetime | None
    source: str


def _stored_token(row: Any) -> StoredToken:
    return StoredToken(
        row.token_id,
        row.caller,
        row.created_at,
        row.expires_at,
        row.revoked_at,
        row.replaced_by,
        row.last_used_at,
        row.source,
    )


def _row(token: StoredToken, token_hash: str) -> dict[str, Any]:
    return {
        "token_id": token.token_id,
        "caller": token.caller,
        "token_hash": token_hash,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
        "replaced_by": token.replaced_by,
        "last_used_at": token.last_used_at,
        "source": token.source,
    }


class BearerTokenRepository(Repository):
    """The ``bearer_tokens`` table. Built from the engine alone: the ``oubli token``
    commands use it without the rest of the storage."""

    # --- reads --------------------------------------------------------------------------

    def token_by_hash(self, token_hash: str) -> StoredToken | None:
        """The token whose hash is ``token_hash``, whatever its status (one indexed read)."""
        row = _FIND.first(self.engine, {"token_hash": token_hash})
        return None if row is None else _stored_token(row)

    def token(self, token_id: str) -> StoredToken | None:
        with translate_db_errors(), self.engine.connect() as c:
            row = c.execute(select(TOKENS).where(TOKENS.c.token_id == token_id)).first()
        return None if row is None else _stored_token(row)

    def tokens(self, caller: str | None = None) -> list[StoredToken]:
        """Every token (of ``caller``), by caller, then oldest first."""
        query = select(TOKENS).order_by(TOKENS.c.caller, TOKENS.c.created_at, TOKENS.c.token_id)
        if caller is not None:
            query = query.where(TOKENS.c.caller == caller)
        with translate_db_errors(), self.engine.connect() as c:
            return [_stored_token(row) for row in c.execute(query)]

    def active_token_ids(
        self, now: datetime, *, caller: str | None = None, token_id: str | None = None
    ) -> list[str]:
        """Ids of the tokens (of ``caller``, or the one ``token_id``) neither revoked nor
        expired at ``now``."""
        with translate_db_errors(), self.engine.connect() as c:
            return [row.token_id for row in c.execute(_active(now, caller, token_id))]

    def known_hashes(self, hashes: Collection[str]) -> set[str]:
        """Those of ``hashes`` that some token has."""
        known: set[str] = set()
        with translate_db_errors(), self.engine.connect() as c:
            for chunk in chunks(sorted(hashes)):
                query = select(TOKENS.c.token_hash).where(TOKENS.c.token_hash.in_(chunk))
                known.update(c.execute(query).scalars())
        return known

    # --- writes -------------------------------------------------------------------------

    def insert_token(self, token: StoredToken, token_hash: str) -> None:
        """Raises AlreadyExists when the id or the hash is taken."""
        with self._writing() as c:
            c.execute(insert(TOKENS), [_row(token, token_hash)])

    def note_token_use(self, token_id: str, now: datetime, unless_since: datetime) -> None:
        """Stamp ``last_used_at`` with ``now``, unless it was stamped after ``unless_since``
        (by another replica meanwhile)."""
        statement = (
            update(TOKENS)
            .where(
                TOKENS.c.token_id == token_id,
                or_(TOKENS.c.last_used_at.is_(None), TOKENS.c.last_used_at <= unless_since),
            )
            .values(last_used_at=now)
        )
        with self._writing() as c:
            c.execute(statement)

    def revoke_token(self, token_id: str, now: datetime) -> bool:
        """Revoke a token not revoked yet; False if it was."""
        statement = (
            update(TOKENS)
            .where(TOKENS.c.token_id == token_id, TOKENS.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        with self._writing() as c:
            return bool(c.execute(statement).rowcount)

    def replace_tokens(
        self,
        new: StoredToken,
        new_hash: str,
        replaced: Sequence[str],
        now: datetime,
        expire_by: datetime | None,
    ) -> None:
        """In one transaction: insert ``new``; of the ``replaced`` tokens, those still
        active at ``now`` (read again, locked) get ``replaced_by`` (unless they have
        one) and expire by ``expire_by`` at the latest (an earlier expiry stays), or,
        when ``expire_by`` is None, are revoked at ``now``."""
        with self._writing() as c:
            c.execute(insert(TOKENS), [_row(new, new_hash)])
            # SQLite: the write lock is held already.
            still = _active(now).where(TOKENS.c.token_id.in_(replaced)).with_for_update()
            for row in c.execute(still).all():
                ending: dict[str, Any] = {
                    "replaced_by": func.coalesce(TOKENS.c.replaced_by, new.token_id)
                }
                if expire_by is None:
                    ending["revoked_at"] = now
                elif row.expires_at is None or row.expires_at > expire_by:
                    ending["expires_at"] = expire_by
                c.execute(update(TOKENS).where(TOKENS.c.token_id == row.token_id).values(ending))

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One write transaction; on SQLite it takes the write lock first, so that what
        it reads is still true when it writes."""
        with translate_db_errors(), sqlite_writer(self.engine), self.engine.begin() as c:
            if c.dialect.name == "sqlite":
                c.exec_driver_sql("BEGIN IMMEDIATE")
            yield c


def _active(now: datetime, caller: str | None = None, token_id: str | None = None) -> Any:
    """Tokens (of ``caller``, or the one ``token_id``) neither revoked nor expired at ``now``."""
    query = select(TOKENS.c.token_id, TOKENS.c.expires_at).where(
        TOKENS.c.revoked_at.is_(None),
        or_(TOKENS.c.expires_at.is_(None), TOKENS.c.expires_at > now),
    )
    if caller is not None:
        query = query.where(TOKENS.c.caller == caller)
    if token_id is not None:
        query = query.where(TOKENS.c.token_id == token_id)
    return query
