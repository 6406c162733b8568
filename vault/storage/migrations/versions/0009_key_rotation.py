"""key rotation: key ages, pending trims, blind-index generations

- ``subjects.dek_created_at``: when the subject's DEK was made (creation or the last
  re-key); ``kek_rotated_at``: when its KMS key got the version that wraps the DEK;
  ``kek_trim_after``: set by a rotation, the time from which the key's older versions
  may be trimmed (the backup retention after the rotation), cleared once trimmed.
- ``retention_buckets`` and ``service_keys``: the same for their KMS keys.
- ``blind_index.generation``: the index key generation a tag was computed with; during
  a rotation of the index key a record has rows of both generations.

Existing rows take their creation time as the age of their keys.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subjects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dek_created_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("kek_rotated_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("kek_trim_after", sa.DateTime(), nullable=True))
    op.execute("UPDATE subjects SET dek_created_at = created_at, kek_rotated_at = created_at")
    with op.batch_alter_table("subjects", schema=None) as batch_op:
        batch_op.create_index("ix_subjects_dek_created_at", ["dek_created_at"], unique=False)
        batch_op.create_index("ix_subjects_kek_rotated_at", ["kek_rotated_at"], unique=False)
        batch_op.create_index("ix_subjects_kek_trim_after", ["kek_trim_after"], unique=False)

    with op.batch_alter_table("retention_buckets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kek_rotated_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("kek_trim_after", sa.DateTime(), nullable=True))
    op.execute("UPDATE retention_buckets SET kek_rotated_at = created_at")

    with op.batch_alter_table("service_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rotated_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("kek_trim_after", sa.DateTime(), nullable=True))
    op.execute("UPDATE service_keys SET rotated_at = created_at")

    with op.batch_alter_table("blind_index", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("generation", sa.Integer(), nullable=False, server_default="1")
        )
        batch_op.drop_index("ix_blind_index_kind_tag")
        batch_op.drop_constraint("pk_blind_index", type_="primary")
        batch_op.create_primary_key(
            "pk_blind_index", ["subject_id", "record_id", "kind", "generation"]
        )
        batch_op.create_index(
            "ix_blind_index_kind_generation_tag", ["kind", "generation", "tag"], unique=False
        )


def downgrade() -> None:
    op.execute("DELETE FROM blind_index WHERE generation <> 1")
    with op.batch_alter_table("blind_index", schema=None) as batch_op:
        batch_op.drop_index("ix_blind_index_kind_generation_tag")
        batch_op.drop_constraint("pk_blind_index", type_="primary")
        batch_op.create_primary_key("pk_blind_index", ["subject_id", "record_id", "kind"])
        batch_op.create_index("ix_blind_index_kind_tag", ["kind", "tag"], unique=False)
        batch_op.drop_column("generation")
    with op.batch_alter_table("service_keys", schema=None) as batch_op:
        batch_op.drop_column("kek_trim_after")
        batch_op.drop_column("rotated_at")
    with op.batch_alter_table("retention_buckets", schema=None) as batch_op:
        batch_op.drop_column("kek_trim_after")
        batch_op.drop_column("kek_rotated_at")
    with op.batch_alter_table("subjects", schema=None) as batch_op:
        batch_op.drop_index("ix_subjects_kek_trim_after")
        batch_op.drop_index("ix_subjects_kek_rotated_at")
        batch_op.drop_index("ix_subjects_dek_created_at")
        batch_op.drop_column("kek_trim_after")
        batch_op.drop_column("kek_rotated_at")
        batch_op.drop_column("dek_created_at")
