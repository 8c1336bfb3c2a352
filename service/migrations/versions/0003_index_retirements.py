"""Index the retirement times of deleted contexts.

Every serving process polls for contexts retired since its last look, so that a delete made
through another process stops its key from answering there too. The index is partial: live
rows (retired_at IS NULL) are not in it and pay no bytes for it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_contexts_retired_at",
        "contexts",
        ["retired_at"],
        sqlite_where=sa.text("retired_at IS NOT NULL"),
        postgresql_where=sa.text("retired_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_contexts_retired_at", table_name="contexts")
