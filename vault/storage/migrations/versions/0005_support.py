"""support access with consent: one grant per ticket (seed 002)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "support_grants",
        sa.Column("grant_id", sa.String(length=26), nullable=False),
        sa.Column("subject_id", sa.String(length=26), nullable=False),
        sa.Column("ticket_record_id", sa.String(length=26), nullable=False),
        sa.Column("granted_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("ended_reason", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("grant_id", name=op.f("pk_support_grants")),
    )
    with op.batch_alter_table("support_grants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_support_grants_subject_id"), ["subject_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("support_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_support_grants_subject_id"))
    op.drop_table("support_grants")
