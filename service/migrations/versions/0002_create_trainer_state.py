"""Create the trainer_state table (the exactly-once watermark of each shard's counters).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trainer_state",
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_entry_id", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("shard", name="pk_trainer_state"),
    )


def downgrade() -> None:
    op.drop_table("trainer_state")
