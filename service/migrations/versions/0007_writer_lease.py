"""Add the writer lease to trainer_state: each shard's fencing token, holder and expiry.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "trainer_state",
        sa.Column("writer_token", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "trainer_state",
        sa.Column("writer_owner", sa.String(200), server_default=sa.text("''"), nullable=False),
    )
    op.add_column(
        "trainer_state", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("trainer_state") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("writer_owner")
        batch.drop_column("writer_token")
