"""Make every context's seed and power unique for the life of the registry, count refused
examples, and keep run-time API keys.

A seed (or a one-power exponent) names a model inside the shared weights: two contexts with one
seed are one model, and a retired context's seed would bring its learned weights back. The
unique indices cover live and retired rows alike, so a seed is never issued twice. NULLs are
partial (NOT NULL), so the rows of one kind pay nothing for the other kind's index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _refuse_duplicates(column: str) -> None:
    duplicates = (
        op.get_bind()
        .execute(
            sa.text(
                f"SELECT {column} FROM contexts WHERE {column} IS NOT NULL "
                f"GROUP BY {column} HAVING COUNT(*) > 1 LIMIT 5"
            )
        )
        .scalars()
        .all()
    )
    if duplicates:
        raise RuntimeError(
            f"the registry holds contexts that share a {column} ({duplicates}), which makes them "
            f"one model; delete all but one context of each {column} from the contexts table, "
            "then run the migration again"
        )


def upgrade() -> None:
    _refuse_duplicates("seed")
    _refuse_duplicates("power")
    for column in ("seed", "power"):
        op.create_index(
            f"uq_contexts_{column}",
            "contexts",
            [column],
            unique=True,
            sqlite_where=sa.text(f"{column} IS NOT NULL"),
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )
    op.add_column(
        "contexts",
        sa.Column("refused", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("salt", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=64), nullable=False),
        sa.Column("key_prefix", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    with op.batch_alter_table("contexts") as batch:
        batch.drop_column("refused")
    op.drop_index("uq_contexts_power", table_name="contexts")
    op.drop_index("uq_contexts_seed", table_name="contexts")
