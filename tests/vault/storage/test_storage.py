"""Schema and migrations on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from vault.storage import Storage, make_engine, migrate
from vault.storage.tables import Base


def test_migrations_create_exactly_the_models(storage: Storage) -> None:
    with storage.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrate_twice_is_a_no_op(storage: Storage) -> None:
    migrate(storage.engine)
    tables = set(inspect(storage.engine).get_table_names())
    assert {"subjects", "records", "shred_receipts", "alembic_version"} <= tables


def test_sqlite_runs_in_wal_with_secure_delete(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
