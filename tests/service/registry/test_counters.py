"""The contexts' training counters, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.registry.counters import add_training_counts
from service.registry.models import ContextRow
from service.registry.queries import get_context
from service.registry.registration import create_context
from tests.service.registry.helpers import run_concurrently

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


def test_add_training_counts_adds_to_the_counters(registry_session: Session) -> None:
    a, b, c = (
        create_context(session=registry_session, key=key, kind="complex")[0]
        for key in ("a", "b", "c")
    )
    registry_session.commit()

    add_training_counts(session=registry_session, counts={a.index: (10, 7), b.index: (5, 0)})
    add_training_counts(session=registry_session, counts={a.index: (3, 3), 10**12: (1, 1)})
    add_training_counts(session=registry_session, counts={})
    registry_session.commit()

    # Rows loaded before the update show the new values, not stale ones.
    assert (a.examples_seen, a.prequential_seen, a.prequential_correct) == (13, 13, 10)
    assert (b.examples_seen, b.prequential_seen, b.prequential_correct) == (5, 5, 0)
    assert (c.examples_seen, c.prequential_seen, c.prequential_correct) == (0, 0, 0)
    assert a.prequential_accuracy == pytest.approx(10 / 13)
    assert c.prequential_accuracy is None

    registry_session.expire_all()
    fresh = get_context(session=registry_session, key="a")
    assert fresh is not None
    assert (fresh.examples_seen, fresh.prequential_seen, fresh.prequential_correct) == (13, 13, 10)


def test_add_training_counts_refuses_impossible_counts(registry_session: Session) -> None:
    row, _ = create_context(session=registry_session, key="a", kind="complex")
    with pytest.raises(ValueError, match="correct <= examples"):
        add_training_counts(session=registry_session, counts={row.index: (2, 3)})
    with pytest.raises(ValueError, match="correct <= examples"):
        add_training_counts(session=registry_session, counts={row.index: (-1, 0)})
    registry_session.commit()
    registry_session.expire_all()
    assert registry_session.get(ContextRow, row.index).examples_seen == 0  # type: ignore[union-attr]


def test_concurrent_counter_updates_are_not_lost(
    registry_session_factory: sessionmaker[Session],
) -> None:
    with registry_session_factory() as session:
        row, _ = create_context(session=session, key="a", kind="complex")
        session.commit()
        index = row.index

    def job() -> None:
        for _ in range(10):
            with registry_session_factory() as session:
                add_training_counts(session=session, counts={index: (2, 1)})
                session.commit()

    run_concurrently(4, job)
    with registry_session_factory() as session:
        fresh = session.get(ContextRow, index)
        assert fresh is not None
        assert (fresh.examples_seen, fresh.prequential_seen, fresh.prequential_correct) == (
            80,
            80,
            40,
        )
