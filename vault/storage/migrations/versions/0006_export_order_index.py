"""records: index (subject, category, record id) for paged, streamed exports

An export walks a subject's records category by category in record-id order, a page at
a time; with (subject_id, category) alone every page re-sorted the whole category.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index("ix_records_subject_category")
        batch_op.create_index(
            "ix_records_subject_category_record", ["subject_id", "category", "record_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index("ix_records_subject_category_record")
        batch_op.create_index("ix_records_subject_category", ["subject_id", "category"])
