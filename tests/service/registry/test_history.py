"""Each context's history stays bounded: buckets and drift events past the retention are
deleted, and so are the detectors of retired contexts, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from service.registry.accuracy import Scores, add_scores, hour_of
from service.registry.history import HistoryPolicy, forget_old_history
from service.registry.models import AccuracyHourRow, ContextDriftRow, DriftEventRow
from service.registry.store import RegistryStore

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases

RETENTION = timedelta(hours=48)


def _hours_kept(session: Session, index: int) -> list[datetime]:
    rows = session.scalars(
        select(AccuracyHourRow.hour)
        .where(AccuracyHourRow.context_index == index)
        .order_by(AccuracyHourRow.hour)
    )
    return list(rows)


def _event(index: int, at: datetime) -> DriftEventRow:
    return DriftEventRow(
        context_index=index, at=at, source="train", accuracy_before=0.9, accuracy_after=0.1, rows=50
    )


async def test_history_past_the_retention_is_forgotten(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    gone, _ = await store.create("gone", None, None)
    now = datetime.now(UTC)

    def record(session: Session) -> None:
        for hours_ago in (0, 47, 49, 500):
            add_scores(
                session=session, train={a.index: Scores(5, 4)}, at=now - timedelta(hours=hours_ago)
            )
        session.add_all([_event(a.index, now - timedelta(hours=h)) for h in (1, 60)])

    await store._run(record)
    await store.add_feedback_scores(gone.index, Scores(5, 4))
    await store.retire("gone")
    policy = HistoryPolicy(retention=RETENTION)
    await store._run(lambda s: forget_old_history(session=s, policy=policy, now=now))

    def kept(session: Session) -> tuple[list[datetime], list[datetime], list[int]]:
        events = session.scalars(select(DriftEventRow.at).order_by(DriftEventRow.at))
        detectors = session.scalars(select(ContextDriftRow.context_index))
        return _hours_kept(session, a.index), list(events), list(detectors)

    hours, events, detectors = await store._run(kept)
    # The hour that began more than 48 hours ago but ends within them is kept whole.
    assert hours == [hour_of(now - timedelta(hours=h)) for h in (47, 0)]
    assert events == [now - timedelta(hours=1)]
    assert detectors == []  # the retired context's detector went with it


async def test_writers_prune_at_most_once_an_hour(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex", history=HistoryPolicy(retention=RETENTION))
    a, _ = await store.create("a", None, None)
    old = datetime.now(UTC) - timedelta(hours=100)
    await store._run(lambda s: add_scores(session=s, train={a.index: Scores(1, 1)}, at=old))
    await store.commit_training(shard=0, last_entry_id="1-0", counts={a.index: (5, 4)})
    assert await store._run(lambda s: len(_hours_kept(s, a.index))) == 1
    # Within the same hour the next writes leave an old bucket for the next hour's pruning.
    await store._run(lambda s: add_scores(session=s, train={a.index: Scores(1, 1)}, at=old))
    await store.add_feedback_scores(a.index, Scores(5, 4))
    assert await store._run(lambda s: len(_hours_kept(s, a.index))) == 2


def test_a_policy_must_keep_something() -> None:
    with pytest.raises(ValueError, match="retention must be positive"):
        HistoryPolicy(retention=timedelta(0))
    with pytest.raises(ValueError, match="max_drift_events"):
        HistoryPolicy(max_drift_events=0)
