"""Drift detection in the registry: fed by each checkpoint's counts and each feedback call,
exactly once, with its events kept, counted and bounded, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from service.feedback.drift import DriftConfig
from service.registry.accuracy import Scores
from service.registry.database import make_session_factory
from service.registry.drift import DriftEvent, judge, observe_scores
from service.registry.history import HistoryPolicy
from service.registry.models import ContextDriftRow
from service.registry.store import RegistryStore
from tests.service.registry.helpers import run_concurrently

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases

GOOD = (50, 45)
BAD = (50, 5)


def _drifts_counted(shard: str) -> float:
    value = REGISTRY.get_sample_value("psp_context_drifts_total", {"shard": shard})
    return value or 0.0


async def _checkpoints(
    store: RegistryStore, index: int, blocks: list[tuple[int, int]], first: int = 1
) -> None:
    for number, (seen, correct) in enumerate(blocks, start=first):
        await store.commit_training(
            shard=0, last_entry_id=f"{number}-0", counts={index: (seen, correct)}
        )


async def test_a_fall_in_training_accuracy_is_recorded_counted_and_shown(
    registry_engine: Engine,
) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    b, _ = await store.create("b", None, None)
    before = _drifts_counted("0")
    await _checkpoints(store, a.index, [GOOD] * 8)
    assert (await store.context_drift(a.index, 24)).state == "stable"
    started = datetime.now(UTC)
    await _checkpoints(store, a.index, [BAD], first=9)
    drift = await store.context_drift(a.index, 24)
    assert drift.state == "drifted" and drift.drifts == 1
    assert drift.last_drift_at is not None and started <= drift.last_drift_at
    (event,) = drift.events
    assert (event.context_index, event.source, event.rows) == (a.index, "train", 50)
    assert event.accuracy_before > 0.85 and event.accuracy_after == 0.1
    assert event.at == drift.last_drift_at
    assert _drifts_counted("0") == before + 1
    # The other context saw nothing.
    quiet = await store.context_drift(b.index, 24)
    assert (quiet.state, quiet.drifts, quiet.events) == ("learning", 0, [])
    assert await store.drift_events(a.index, started - timedelta(minutes=1)) == [event]
    assert await store.drift_events(a.index, datetime.now(UTC) + timedelta(minutes=1)) == []


async def test_a_checkpoint_committed_twice_feeds_the_detector_once(
    registry_engine: Engine,
) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    await _checkpoints(store, a.index, [GOOD] * 8)
    # A restart re-commits the last checkpoint: the watermark turns it away, detector included.
    for _ in range(3):
        assert not await store.commit_training(shard=0, last_entry_id="8-0", counts={a.index: BAD})
    assert (await store.context_drift(a.index, 24)).drifts == 0
    rows = await store._run(lambda s: list(s.scalars(select(ContextDriftRow))))
    assert [(row.source, row.rows, row.cusum) for row in rows] == [("train", 400, 0.0)]


async def test_feedback_has_a_detector_of_its_own(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    before = _drifts_counted("0")
    await _checkpoints(store, a.index, [GOOD] * 8)
    for _ in range(8):
        await store.add_feedback_scores(a.index, Scores(50, 40))
    await store.add_feedback_scores(a.index, Scores(50, 2))
    drift = await store.context_drift(a.index, 24)
    assert [event.source for event in drift.events] == ["feedback"]
    assert drift.events[0].accuracy_after == 2 / 50
    assert _drifts_counted("0") == before + 1
    rows = await store._run(
        lambda s: {row.source: row.rows for row in s.scalars(select(ContextDriftRow))}
    )
    assert rows == {"train": 400, "feedback": 0}  # the feedback detector starts afresh


async def test_concurrent_feedback_feeds_every_row_to_the_detector(
    registry_engine: Engine,
) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    await asyncio.gather(*(store.add_feedback_scores(a.index, Scores(5, 4)) for _ in range(20)))

    def rows_learned(session: Session) -> int:
        return session.scalars(select(ContextDriftRow.rows)).one()

    assert await store._run(rows_learned) == 100


async def test_each_context_keeps_only_its_newest_events(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex", history=HistoryPolicy(max_drift_events=3))
    a, _ = await store.create("a", None, None)
    number = 1
    for _ in range(5):
        await _checkpoints(store, a.index, [GOOD] * 4 + [BAD], first=number)
        number += 5
    drift = await store.context_drift(a.index, 24)
    assert drift.drifts == 5
    assert len(drift.events) == 3
    assert drift.events == sorted(drift.events, key=lambda e: e.at, reverse=True)


def test_the_state_shown_puts_a_recent_drift_first() -> None:
    config = DriftConfig(warmup_rows=100, threshold=10)
    now = datetime.now(UTC)
    hour = timedelta(hours=1)

    def state(detectors: list[tuple[int, float]], last: datetime | None = None) -> str:
        return judge(detectors, last, config=config, recent=24 * hour, now=now)

    assert state([]) == "learning"
    assert state([(50, 0.0)]) == "learning"
    assert state([(50, 0.0), (500, 0.0)]) == "stable"
    assert state([(500, 5.0)]) == "falling"
    assert state([(500, 0.0)], now - 2 * hour) == "drifted"
    assert state([(500, 0.0)], now - 25 * hour) == "stable"


def test_detector_updates_take_turns_on_their_own(registry_engine: Engine) -> None:
    # Without the accuracy bucket's upsert before it, which also serialises writers.
    factory = make_session_factory(registry_engine)

    def feed() -> list[DriftEvent]:
        with factory.begin() as session:
            return observe_scores(
                session=session,
                source="feedback",
                scores={7: Scores(5, 4)},
                config=DriftConfig(),
                at=datetime.now(UTC),
                max_events=5,
            )

    run_concurrently(8, feed)
    with factory() as session:
        assert session.scalars(select(ContextDriftRow.rows)).one() == 40
