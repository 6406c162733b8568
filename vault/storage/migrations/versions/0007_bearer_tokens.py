"""bearer tokens in the data database: expiry, revocation, rotation

Token hashes lived in a per-replica TOML file; a revocation then had to reach every
replica's copy. In the database every replica sees it on its next call. The tokens
file, if any, is imported by the server at start (vault.access.tokens.TokenRegistry.import_file).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bearer_tokens",
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("caller", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=71), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("replaced_by", sa.String(length=32), nullable=True),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_bearer_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_bearer_tokens_token_hash")),
    )
    with op.batch_alter_table("bearer_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bearer_tokens_caller"), ["caller"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("bearer_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bearer_tokens_caller"))
    op.drop_table("bearer_tokens")
