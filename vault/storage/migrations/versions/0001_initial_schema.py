"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shred_receipts",
        sa.Column("subject_id", sa.String(length=26), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("kms_backend", sa.String(length=32), nullable=False),
        sa.Column("records_deleted", sa.Integer(), nullable=False),
        sa.Column("shredded_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subject_id", name=op.f("pk_shred_receipts")),
    )
    op.create_table(
        "subjects",
        sa.Column("subject_id", sa.String(length=26), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subject_id", name=op.f("pk_subjects")),
        sa.UniqueConstraint("key_id", name=op.f("uq_subjects_key_id")),
    )
    op.create_table(
        "records",
        sa.Column("subject_id", sa.String(length=26), nullable=False),
        sa.Column("record_id", sa.String(length=26), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("singleton", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.subject_id"], name=op.f("fk_records_subject_id_subjects")
        ),
        sa.PrimaryKeyConstraint("subject_id", "record_id", name=op.f("pk_records")),
        sa.UniqueConstraint("subject_id", "singleton", name="uq_records_subject_singleton"),
    )
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_records_subject_category", ["subject_id", "category"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index("ix_records_subject_category")

    op.drop_table("records")
    op.drop_table("subjects")
    op.drop_table("shred_receipts")
