"""Create the accuracy_hours table: hourly train and feedback scores of each context.

A table of its own, so that the contexts table's rows do not grow with the history.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _count(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "accuracy_hours",
        sa.Column("context_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        _count("train_seen"),
        _count("train_correct"),
        _count("feedback_seen"),
        _count("feedback_correct"),
        sa.PrimaryKeyConstraint("context_index", "hour", name="pk_accuracy_hours"),
    )


def downgrade() -> None:
    op.drop_table("accuracy_hours")
