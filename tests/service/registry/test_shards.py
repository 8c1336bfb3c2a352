"""Shards: new contexts join the least-loaded shard, a capacity is never overshot."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.registry.errors import ShardsFull
from service.registry.queries import retire_context
from service.registry.registration import create_context, create_contexts
from service.registry.shards import ShardPlan, live_per_shard
from tests.service.registry.helpers import all_rows, run_concurrently

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


def _register(session: Session, keys: list[str], plan: ShardPlan) -> list[int]:
    rows = [
        create_context(session=session, key=key, kind="complex", shards=plan)[0] for key in keys
    ]
    session.commit()
    return [row.shard for row in rows]


def test_new_contexts_go_to_the_least_loaded_shard_ties_to_the_lowest(
    registry_session: Session,
) -> None:
    plan = ShardPlan(count=3)
    assert _register(registry_session, [f"t{i}" for i in range(7)], plan) == [0, 1, 2, 0, 1, 2, 0]
    assert live_per_shard(registry_session, 3) == [3, 2, 2]


def test_retired_contexts_leave_room_and_a_batch_is_spread_one_by_one(
    registry_session: Session,
) -> None:
    plan = ShardPlan(count=3)
    _register(registry_session, ["a", "b", "c"], plan)
    assert retire_context(session=registry_session, key="b") is True
    registry_session.commit()

    results = create_contexts(
        session=registry_session,
        kind="complex",
        items=[("d", None, None), ("e", None, None), ("a", None, None), ("f", None, None)],
        shards=plan,
    )
    registry_session.commit()
    assert [(row.key, row.shard, created) for row, created in results] == [
        ("d", 1, True),
        ("e", 0, True),
        ("a", 0, False),
        ("f", 1, True),
    ]
    assert live_per_shard(registry_session, 3) == [2, 2, 1]


def test_raising_the_count_sends_new_contexts_to_the_new_shards_and_moves_none(
    registry_session: Session,
) -> None:
    assert _register(registry_session, ["a", "b", "c", "d"], ShardPlan(count=2)) == [0, 1, 0, 1]
    assert _register(registry_session, ["e", "f", "g"], ShardPlan(count=4)) == [2, 3, 2]
    assert [(row.key, row.shard) for row in all_rows(registry_session)][:4] == [
        ("a", 0),
        ("b", 1),
        ("c", 0),
        ("d", 1),
    ]


def test_registration_past_the_total_capacity_is_refused_and_writes_nothing(
    registry_session: Session,
) -> None:
    plan = ShardPlan(count=2, capacity=2)
    _register(registry_session, ["a", "b", "c"], plan)
    with pytest.raises(ShardsFull) as refused:
        create_contexts(
            session=registry_session,
            kind="complex",
            items=[("d", None, None), ("e", None, None)],
            shards=plan,
        )
    registry_session.rollback()
    assert str(refused.value).startswith(
        "all 2 shards are full at 2 live contexts each, with no room for 2 new contexts; "
        "raise PSP_SHARDS__COUNT"
    )
    assert [row.key for row in all_rows(registry_session)] == ["a", "b", "c"]

    assert _register(registry_session, ["d"], plan) == [1]
    with pytest.raises(ShardsFull, match=r"^all 2 shards are full .* room for a new context;"):
        create_context(session=registry_session, key="e", kind="complex", shards=plan)
    registry_session.rollback()
    # A key that is live already takes no room.
    row, created = create_context(session=registry_session, key="a", kind="complex", shards=plan)
    assert (row.shard, created) == (0, False)


def test_concurrent_registrations_never_overshoot_the_capacity(
    registry_session_factory: sessionmaker[Session],
) -> None:
    plan = ShardPlan(count=2, capacity=3)
    counter = iter(range(1000))
    lock = threading.Lock()

    def job() -> int | None:
        with lock:
            key = f"tenant-{next(counter)}"
        with registry_session_factory() as session:
            try:
                row, _ = create_context(session=session, key=key, kind="complex", shards=plan)
            except ShardsFull:
                return None
            session.commit()
            return row.shard

    shards = run_concurrently(10, job)
    assert sorted(s for s in shards if s is not None) == [0, 0, 0, 1, 1, 1]
    assert shards.count(None) == 4
    with registry_session_factory() as session:
        assert live_per_shard(session, 2) == [3, 3]
