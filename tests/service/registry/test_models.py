"""The contexts table itself: what a row costs on PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select, text

from service.registry.database import make_engine, make_session_factory
from service.registry.parameters import MAX_BULK_CONTEXTS
from service.registry.queries import count_live_contexts
from service.registry.registration import create_contexts


def test_postgresql_row_costs_at_most_200_bytes(migrated_postgres_database_url: str) -> None:
    engine = make_engine(migrated_postgres_database_url)
    rows = 20_000
    try:
        factory = make_session_factory(engine)
        with factory() as session:
            for start in range(0, rows, MAX_BULK_CONTEXTS):
                create_contexts(
                    session=session,
                    kind="complex",
                    items=[
                        (f"tenant-{i:08d}", None, None)
                        for i in range(start, min(start + MAX_BULK_CONTEXTS, rows))
                    ],
                )
            session.commit()
            assert count_live_contexts(session=session) == rows
            total = session.scalar(select(func.pg_total_relation_size(text("'contexts'"))))
            heap = session.scalar(select(func.pg_relation_size(text("'contexts'"))))
            assert total is not None and heap is not None
    finally:
        engine.dispose()
    per_row = total / rows
    print(
        f"\nPostgreSQL: {per_row:.1f} bytes per row incl. indexes "
        f"({heap / rows:.1f} heap, {(total - heap) / rows:.1f} indexes) for keys of 15 characters"
    )
    assert per_row <= 200
