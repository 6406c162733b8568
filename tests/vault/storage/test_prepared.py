"""Prepared reads return what Core returns, on SQLite and PostgreSQL, and fail as Core does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, select

from tests.memory_kms import InMemoryKeyManager
from vault.errors import Unavailable
from vault.storage import Storage
from vault.storage.prepared import PreparedRead
from vault.storage.statements import SUBJECT_AND_RECORD, SUBJECT_BY_ID, SUBJECTS
from vault.usecases.service import VaultService


def _core(storage: Storage, prepared: PreparedRead, params: dict[str, Any]) -> Any:
    with storage.engine.connect() as c:
        return c.execute(prepared.statement, params).first()


def test_prepared_reads_return_what_core_returns(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Callable[..., VaultService]
) -> None:
    vault = make_vault(storage, memory_kms)
    subject_id = vault.create_subject().subject_id
    record_id = vault.create_record(subject_id, "support", {"message": "m"}, "c").record_id
    vault.close_account(subject_id)  # closed_at, scheduled_shred_at: times, not None
    cases = [
        (SUBJECT_AND_RECORD, {"subject_id": subject_id, "record_id": record_id}),
        (SUBJECT_AND_RECORD, {"subject_id": subject_id, "record_id": "0" * 26}),  # no record
        (SUBJECT_BY_ID, {"subject_id": subject_id}),
    ]
    for prepared, params in cases:
        core = _core(storage, prepared, params)
        got = prepared.first(storage.engine, params)
        assert got is not None and core is not None
        assert tuple(got) == tuple(core)
        assert got._fields == tuple(core._mapping.keys())
        assert got.created_at.tzinfo is not None  # the column types' processing ran
    assert SUBJECT_BY_ID.first(storage.engine, {"subject_id": "0" * 26}) is None


def test_a_traced_engine_reads_through_core(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Callable[..., VaultService]
) -> None:
    """A listener on the engine's transactions (tracing's spans) still sees the read."""
    subject_id = make_vault(storage, memory_kms).create_subject().subject_id
    begun: list[object] = []
    event.listen(storage.engine, "begin", begun.append)
    row = SUBJECT_BY_ID.first(storage.engine, {"subject_id": subject_id})
    assert row is not None and row.subject_id == subject_id
    assert begun


def test_driver_errors_become_unavailable(storage: Storage) -> None:
    broken = PreparedRead(select(SUBJECTS).where(SUBJECTS.c.subject_id == "x"))
    compiled = broken._for(storage.engine)
    compiled.sql = "SELECT * FROM no_such_table"
    with pytest.raises(Unavailable, match="database error"):
        broken.first(storage.engine, {})
    # The connection went back to the pool usable: the next read works.
    assert SUBJECT_BY_ID.first(storage.engine, {"subject_id": "0" * 26}) is None


def test_expanding_parameters_are_refused(storage: Storage) -> None:
    from sqlalchemy import bindparam

    prepared = PreparedRead(
        select(SUBJECTS).where(SUBJECTS.c.subject_id.in_(bindparam("ids", expanding=True)))
    )
    with pytest.raises(ValueError, match="expanding"):
        prepared.first(storage.engine, {"ids": ["a"]})
