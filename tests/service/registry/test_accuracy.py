"""Hourly accuracy buckets: train scores with each checkpoint's counts, feedback scores, the
rolling window and the history, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from service.registry.accuracy import Scores, add_scores, hour_of, window_totals
from service.registry.store import RegistryStore

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


async def test_train_scores_arrive_once_per_checkpoint(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    b, _ = await store.create("b", None, None)
    counts = {a.index: (32, 10), b.index: (8, 8, 2)}
    assert await store.commit_training(shard=0, last_entry_id="5-0", counts=counts) is True
    # The same checkpoint again (a restart after a crash) adds nothing to the buckets either.
    assert await store.commit_training(shard=0, last_entry_id="5-0", counts=counts) is False
    await store.commit_training(shard=0, last_entry_id="6-0", counts={a.index: (8, 6)})
    train_a, feedback_a = await store.accuracy_window(a.index, 24)
    assert (train_a.seen, train_a.correct) == (40, 16) and train_a.accuracy == 16 / 40
    assert feedback_a == Scores(0, 0) and feedback_a.accuracy is None
    train_b, _ = await store.accuracy_window(b.index, 24)
    assert (train_b.seen, train_b.correct) == (8, 8)


async def test_feedback_scores_share_the_hour_with_train_scores(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    await store.commit_training(shard=0, last_entry_id="1-0", counts={a.index: (10, 4)})
    await store.add_feedback_scores(a.index, Scores(5, 3))
    await store.add_feedback_scores(a.index, Scores(5, 4))
    history = await store.accuracy_history(a.index, datetime.now(UTC) - timedelta(hours=1))
    assert len(history) == 1
    (bucket,) = history
    assert bucket.hour == hour_of(datetime.now(UTC))
    assert bucket.train == Scores(10, 4) and bucket.feedback == Scores(10, 7)
    assert bucket.feedback.accuracy == 0.7


async def test_the_window_and_the_history_count_whole_hours(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    b, _ = await store.create("b", None, None)
    now = datetime.now(UTC)

    def record(session: Session) -> None:
        for hours_ago, train in ((0, Scores(4, 4)), (2, Scores(6, 3)), (30, Scores(100, 0))):
            add_scores(session=session, train={a.index: train}, at=now - timedelta(hours=hours_ago))
        add_scores(session=session, feedback={b.index: Scores(9, 9)}, at=now)

    await store._run(record)
    train, feedback = await store.accuracy_window(a.index, 3)
    assert train == Scores(10, 7) and feedback == Scores(0, 0)
    train, _ = await store.accuracy_window(a.index, 1)
    assert train == Scores(4, 4)
    # The bucket 30 hours back is outside a 24-hour window and inside a 48-hour one.
    assert (await store.accuracy_window(a.index, 24))[0] == Scores(10, 7)
    assert (await store.accuracy_window(a.index, 48))[0] == Scores(110, 7)
    history = await store.accuracy_history(a.index, now - timedelta(hours=47))
    assert [bucket.hour for bucket in history] == [
        hour_of(now - timedelta(hours=h)) for h in (30, 2, 0)
    ]
    assert [bucket.train.seen for bucket in history] == [100, 6, 4]
    assert all(bucket.feedback == Scores(0, 0) for bucket in history)


async def test_concurrent_writers_lose_no_scores(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    await asyncio.gather(*(store.add_feedback_scores(a.index, Scores(3, 1)) for _ in range(20)))
    _, feedback = await store.accuracy_window(a.index, 1)
    assert feedback == Scores(60, 20)


def test_nothing_scored_writes_no_row(registry_session: Session) -> None:
    add_scores(session=registry_session, train={1: Scores(0, 0)}, feedback={})
    assert window_totals(session=registry_session, index=1, hours=24) == (Scores(), Scores())
