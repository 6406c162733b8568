"""erasure ledger position: the data database's high-water mark in the erasure ledger

The erasure ledger lives outside the data database (its own file or database URL); this
one-row table records the ledger seq of the last erasure the database finished, written
in the same transaction as the finish, so that a restored database (behind the ledger)
or a lost ledger (behind the database) shows.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "erasure_ledger_position",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "seq": 0}])


def downgrade() -> None:
    op.drop_table("erasure_ledger_position")
