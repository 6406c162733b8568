"""rights and retention

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_ledger",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("subject_id", sa.String(length=26), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_key_ledger")),
    )
    with op.batch_alter_table("key_ledger", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_key_ledger_subject_id"), ["subject_id"], unique=False)
    op.create_table(
        "retention_buckets",
        sa.Column("bucket_id", sa.String(length=96), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("destroy_at", sa.DateTime(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("bucket_id", name=op.f("pk_retention_buckets")),
        sa.UniqueConstraint("key_id", name=op.f("uq_retention_buckets_key_id")),
    )
    with op.batch_alter_table("retention_buckets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retention_buckets_destroy_at"), ["destroy_at"], unique=False
        )

    op.create_table(
        "rights_requests",
        sa.Column("request_id", sa.String(length=26), nullable=False),
        sa.Column("subject_id", sa.String(length=26), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=False),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_rights_requests")),
    )
    with op.batch_alter_table("rights_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rights_requests_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_rights_requests_subject_id"), ["subject_id"], unique=False
        )

    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("key_scheme", sa.String(length=8), server_default="subject", nullable=False)
        )
        batch_op.add_column(sa.Column("bucket_id", sa.String(length=96), nullable=True))
        batch_op.add_column(sa.Column("retain_until", sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_records_bucket_id"), ["bucket_id"], unique=False)

    with op.batch_alter_table("subjects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("restricted", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("objections", sa.Text(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("consents", sa.Text(), server_default="{}", nullable=False))
        batch_op.add_column(sa.Column("closed_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("scheduled_shred_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("hold_bucket_id", sa.String(length=96), nullable=True))
        batch_op.add_column(sa.Column("hold_until", sa.DateTime(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_subjects_scheduled_shred_at"), ["scheduled_shred_at"], unique=False
        )

    with op.batch_alter_table("shred_receipts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("records_retained", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("retained_until", sa.DateTime(), nullable=True))

    # The shred ledger now lives in key_ledger: carry over every key destroyed so far.
    op.execute(
        "INSERT INTO key_ledger (key_id, kind, recorded_at, subject_id) "
        "SELECT key_id, 'subject', shredded_at, subject_id FROM shred_receipts"
    )


def downgrade() -> None:
    with op.batch_alter_table("shred_receipts", schema=None) as batch_op:
        batch_op.drop_column("retained_until")
        batch_op.drop_column("records_retained")
    with op.batch_alter_table("subjects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subjects_scheduled_shred_at"))
        batch_op.drop_column("hold_until")
        batch_op.drop_column("hold_bucket_id")
        batch_op.drop_column("scheduled_shred_at")
        batch_op.drop_column("closed_at")
        batch_op.drop_column("consents")
        batch_op.drop_column("objections")
        batch_op.drop_column("restricted")

    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_records_bucket_id"))
        batch_op.drop_column("retain_until")
        batch_op.drop_column("bucket_id")
        batch_op.drop_column("key_scheme")

    with op.batch_alter_table("rights_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rights_requests_subject_id"))
        batch_op.drop_index(batch_op.f("ix_rights_requests_status"))

    op.drop_table("rights_requests")
    with op.batch_alter_table("retention_buckets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retention_buckets_destroy_at"))

    op.drop_table("retention_buckets")
    op.drop_table("key_ledger")
