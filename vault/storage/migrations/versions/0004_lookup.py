"""lookup by e-mail or phone: blind index and service keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_keys",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_keys")),
        sa.UniqueConstraint("key_id", name=op.f("uq_service_keys_key_id")),
    )
    op.create_table(
        "blind_index",
        sa.Column("subject_id", sa.String(length=26), nullable=False),
        sa.Column("record_id", sa.String(length=26), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("tag", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id", "record_id"],
            ["records.subject_id", "records.record_id"],
            name=op.f("fk_blind_index_subject_id_records"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("subject_id", "record_id", "kind", name=op.f("pk_blind_index")),
    )
    with op.batch_alter_table("blind_index", schema=None) as batch_op:
        batch_op.create_index("ix_blind_index_kind_tag", ["kind", "tag"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("blind_index", schema=None) as batch_op:
        batch_op.drop_index("ix_blind_index_kind_tag")
    op.drop_table("blind_index")
    op.drop_table("service_keys")
