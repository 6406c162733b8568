"""The erasure ledger's database: its own URL, its own schema, apart from the data database
and the KMS.

Three tables: the entries (one per destroyed key: ids only), the tip (one row, locked by
every append, so appends of all replicas are serialized) and the signed heads. Appends
go through group commit: concurrent appends share one transaction and one durable commit
(SQLite ``synchronous=FULL``; a PostgreSQL commit is durable). Optionally every new entry
is also written, fsynced, as a JSON line to a mirror directory an operator ships to
write-once storage. The chain's hashing is the caller's (``link``): this module only
stores what it is given, under the tip's lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    event,
    func,
    insert,
    select,
    update,
)

from vault.errors import Unavailable
from vault.private_files import (
    PRIVATE_FILE_MODE,
    create_private_file,
    make_private_dir,
)
from vault.storage.base import Repository
from vault.storage.engine import make_engine, sqlite_file, translate_db_errors
from vault.storage.groupcommit import GroupCommit

#: The chain's first ``prev_hash``.
GENESIS_HASH = "0" * 64

METADATA = MetaData()

ENTRIES = Table(
    "erasure_ledger_entries",
    METADATA,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    #: ISO 8601 UTC, as hashed.
    Column("at", String(40), nullable=False),
    #: subject | bucket | retired
    Column("kind", String(16), nullable=False),
    Column("key_id", String(64), nullable=False, unique=True),
    Column("subject_id", String(26), nullable=True, index=True),
    Column("bucket_id", String(64), nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

TIP = Table(
    "erasure_ledger_tip",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

SIGNED_HEADS = Table(
    "erasure_ledger_signed_heads",
    METADATA,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("at", String(40), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", LargeBinary, nullable=False),
)


@dataclass(frozen=True, slots=True)
class NewLedgerEntry:
    """A destruction to record: the key and what it protected (ids only)."""

    kind: str
    key_id: str
    subject_id: str | None = None
    bucket_id: str | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    seq: int
    at: str
    kind: str
    key_id: str
    subject_id: str | None
    bucket_id: str | None
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class SignedHead:
    seq: int
    hash: str
    at: str
    key_id: str
    signature: bytes


#: ``link(prev_seq, prev_hash, new) -> entries``: the new entries chained after the tip.
Link = Callable[[int, str, Sequence[NewLedgerEntry]], list[LedgerEntry]]


def make_ledger_engine(url: str) -> Engine:
    """The ledger's engine. A SQLite ledger's directory is made 0700 and its file 0600,
    and every commit is fsynced (``synchronous=FULL``); the tables are created if
    missing (the ledger has its own schema, outside the data database's migrations)."""
    path = sqlite_file(url)
    if path is not None:
        make_private_dir(path.parent)
        create_private_file(path)
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _durable(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

    with translate_db_errors():
        METADATA.create_all(engine)
    return engine


class LedgerRepository(Repository):
    """The ledger's rows: append (group commit), read, signed heads."""

    def __init__(self, engine: Engine, link: Link, mirror_dir: Path | None = None) -> None:
        super().__init__(engine)
        self._link = link
        self._mirror = mirror_dir
        if mirror_dir is not None:
            make_private_dir(mirror_dir)
        self._appends: GroupCommit[NewLedgerEntry, int] = GroupCommit(self._write)

    @property
    def appends(self) -> GroupCommit[NewLedgerEntry, int]:
        """The group commit (tests and the benchmark count its batches)."""
        return self._appends

    def append(self, items: Sequence[NewLedgerEntry]) -> list[int]:
        """Append ``items`` (with concurrent appends: one transaction); each one's seq.
        A key already in the ledger keeps its entry (its seq is returned)."""
        return self._appends.submit(items) if items else []

    def _write(self, items: list[NewLedgerEntry]) -> list[int]:
        written: list[LedgerEntry] = []
        with self._write_connection() as c:
            tip = c.execute(select(TIP.c.seq, TIP.c.hash).where(TIP.c.id == 1).with_for_update())
            row = tip.first()
            if row is None:
                c.execute(insert(TIP).values(id=1, seq=0, hash=GENESIS_HASH))
                seq, head = 0, GENESIS_HASH
            else:
                seq, head = int(row[0]), str(row[1])
            key_ids = sorted({item.key_id for item in items})
            known: dict[str, int] = {}
            for start in range(0, len(key_ids), 500):
                chunk = key_ids[start : start + 500]
                known.update(
                    (str(k), int(s))
                    for k, s in c.execute(
                        select(ENTRIES.c.key_id, ENTRIES.c.seq).where(ENTRIES.c.key_id.in_(chunk))
                    )
                )
            new: list[NewLedgerEntry] = []
            for item in items:
                if item.key_id not in known:
                    known[item.key_id] = -1  # appended below, once
                    new.append(item)
            if new:
                written = self._link(seq, head, new)
                c.execute(insert(ENTRIES), [asdict(entry) for entry in written])
                c.execute(
                    update(TIP)
                    .where(TIP.c.id == 1)
                    .values(seq=written[-1].seq, hash=written[-1].hash)
                )
                for entry in written:
                    known[entry.key_id] = entry.seq
        if written and self._mirror is not None:
            self._write_mirror(written)
        return [known[item.key_id] for item in items]

    def _write_mirror(self, entries: Sequence[LedgerEntry]) -> None:
        """Append ``entries`` as JSON lines to the mirror file, fsynced."""
        assert self._mirror is not None
        path = self._mirror / "erasures.jsonl"
        text = "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in entries)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
            try:
                os.write(fd, text.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise Unavailable(f"erasure ledger mirror write failed: {type(e).__name__}") from e

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest entry; (0, GENESIS_HASH) when empty."""
        with self._connection() as c:
            row = c.execute(select(TIP.c.seq, TIP.c.hash).where(TIP.c.id == 1)).first()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def entries(self, after: int = 0, page: int = 5000) -> Iterator[LedgerEntry]:
        """Every entry after seq ``after``, in order, a page at a time."""
        while True:
            with self._connection() as c:
                rows = c.execute(
                    select(ENTRIES).where(ENTRIES.c.seq > after).order_by(ENTRIES.c.seq).limit(page)
                ).all()
            for row in rows:
                yield LedgerEntry(**row._asdict())
            if len(rows) < page:
                return
            after = int(rows[-1].seq)

    def count(self) -> int:
        with self._connection() as c:
            return int(c.execute(select(func.count()).select_from(ENTRIES)).scalar() or 0)

    def add_signed_head(self, head: SignedHead) -> None:
        """Store a signed head (a head signed twice keeps its first signature)."""
        with self._connection() as c:
            if c.execute(select(SIGNED_HEADS.c.seq).where(SIGNED_HEADS.c.seq == head.seq)).first():
                return
            c.execute(insert(SIGNED_HEADS).values(**asdict(head)))

    def signed_heads(self) -> list[SignedHead]:
        with self._connection() as c:
            rows = c.execute(select(SIGNED_HEADS).order_by(SIGNED_HEADS.c.seq)).all()
        return [SignedHead(**row._asdict()) for row in rows]
