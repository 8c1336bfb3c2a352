"""Create the drift tables: each context's drift-detector state and its detected drifts.

Tables of their own, so that the contexts table's rows stay small; a context gets a state row
once its first scores arrive.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "context_drift",
        sa.Column("context_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("baseline", sa.Double(), nullable=False),
        sa.Column("cusum", sa.Double(), nullable=False),
        sa.Column("suspect_seen", sa.BigInteger(), nullable=False),
        sa.Column("suspect_correct", sa.BigInteger(), nullable=False),
        sa.Column("drifts", sa.Integer(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_drift_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("context_index", "source", name="pk_context_drift"),
    )
    op.create_table(
        "drift_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("context_index", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("accuracy_before", sa.Double(), nullable=False),
        sa.Column("accuracy_after", sa.Double(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_drift_events"),
    )
    op.create_index("ix_drift_events_context_index", "drift_events", ["context_index", "id"])


def downgrade() -> None:
    op.drop_index("ix_drift_events_context_index", table_name="drift_events")
    op.drop_table("drift_events")
    op.drop_table("context_drift")
