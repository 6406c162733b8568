"""Alembic environment: the engine comes from vault.storage (config.attributes)."""

from __future__ import annotations

from alembic import context

from vault.storage.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through vault.storage.migrate()")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
