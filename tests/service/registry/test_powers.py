"""One-power powers: the smallest free integer when chosen, and always `min_power_gap` apart."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.registry.errors import ContextParameterTaken, InvalidContextParameters
from service.registry.queries import retire_context
from service.registry.registration import create_context, create_contexts
from tests.service.registry.helpers import run_concurrently

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


def test_onepower_chooses_the_smallest_unused_integer_power(registry_session: Session) -> None:
    def auto(key: str) -> float | None:
        row, created = create_context(session=registry_session, key=key, kind="onepower")
        assert created
        return row.power

    assert [auto("a"), auto("b"), auto("c")] == [0.0, 1.0, 2.0]
    assert all(isinstance(value, float) for value in (auto("d"),))  # 3.0
    create_context(session=registry_session, key="five", kind="onepower", power=5.0)
    create_context(session=registry_session, key="half", kind="onepower", power=8.5)
    create_context(session=registry_session, key="neg", kind="onepower", power=-1.0)
    create_context(session=registry_session, key="huge", kind="onepower", power=1e300)
    registry_session.commit()
    assert [auto("e"), auto("f"), auto("g")] == [4.0, 6.0, 7.0]


def test_onepower_fills_gaps_and_never_reuses_retired_powers(registry_session: Session) -> None:
    create_context(session=registry_session, key="two", kind="onepower", power=2.0)
    create_context(session=registry_session, key="zero", kind="onepower", power=0.0)
    registry_session.commit()
    assert retire_context(session=registry_session, key="zero") is True
    registry_session.commit()

    row, _ = create_context(session=registry_session, key="x", kind="onepower")
    assert row.power == 1.0
    row, _ = create_context(session=registry_session, key="y", kind="onepower")
    assert row.power == 3.0


def test_bulk_onepower_avoids_explicit_powers_of_the_batch(registry_session: Session) -> None:
    create_context(session=registry_session, key="old", kind="onepower", power=0.0)
    results = create_contexts(
        session=registry_session,
        kind="onepower",
        items=[("a", None, None), ("b", None, 2.0), ("c", None, None), ("d", None, 5.5)],
    )
    registry_session.commit()
    assert [row.power for row, _ in results] == [1.0, 2.0, 3.0, 5.5]
    assert all(created for _, created in results)


def test_concurrent_onepower_creates_choose_distinct_powers(
    registry_session_factory: sessionmaker[Session],
) -> None:
    counter = iter(range(1000))
    lock = threading.Lock()

    def job() -> float | None:
        with lock:
            key = f"tenant-{next(counter)}"
        with registry_session_factory() as session:
            row, _ = create_context(session=session, key=key, kind="onepower")
            session.commit()
            return row.power

    powers = run_concurrently(8, job)
    assert sorted(p for p in powers if p is not None) == [float(i) for i in range(8)]


def test_powers_closer_than_the_gap_are_refused(registry_session: Session) -> None:
    create_context(session=registry_session, key="one", kind="onepower", power=1.0)
    registry_session.commit()
    with pytest.raises(ContextParameterTaken, match="closer than 1"):
        create_context(session=registry_session, key="near", kind="onepower", power=1.5)
    with pytest.raises(InvalidContextParameters, match="closer than 1"):
        create_contexts(
            session=registry_session,
            kind="onepower",
            items=[("p", None, 4.0), ("q", None, 4.25)],
        )
    row, created = create_context(
        session=registry_session, key="near", kind="onepower", power=1.5, min_power_gap=0.5
    )
    assert created and row.power == 1.5
    far, _ = create_context(session=registry_session, key="auto", kind="onepower")
    assert far.power == 0.0
    nxt, _ = create_context(session=registry_session, key="auto2", kind="onepower")
    assert nxt.power == 3.0  # 2.0 lies within 1 of 1.5
