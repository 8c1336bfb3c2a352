"""Create the contexts table.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "contexts",
        sa.Column(
            "index",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("power", sa.Double(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("examples_seen", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "prequential_correct", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("prequential_seen", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("shard", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("index", name="pk_contexts"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "uq_contexts_key_live",
        "contexts",
        ["key"],
        unique=True,
        sqlite_where=sa.text("retired_at IS NULL"),
        postgresql_where=sa.text("retired_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_contexts_key_live", table_name="contexts")
    op.drop_table("contexts")
