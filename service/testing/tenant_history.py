"""Days of tenant history, written in seconds: for the `/ui` page's tests, its benchmark and its
screenshots, which need hourly curves that real training would take days to draw.

Each tenant's scores are written as a trainer's checkpoints would write them, through the
registry's own functions (counters, hourly buckets, drift detectors), only backdated hour by
hour. A tenant learns along a saturating curve; a drifting one loses most of its accuracy two
thirds of the way through and learns again, which the drift detector finds as it would live.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.feedback.drift import DriftConfig
from service.registry.accuracy import Scores, add_scores, hour_of
from service.registry.counters import add_training_counts
from service.registry.database import make_engine, make_session_factory
from service.registry.drift import observe_scores
from service.registry.models import ContextRow

CHECKPOINTS_PER_HOUR = 2


def seed_history(
    database_url: str,
    keys: Sequence[str],
    *,
    hours: int,
    drifting: Sequence[str] = (),
    with_feedback: Sequence[str] = (),
    seed: int = 0,
    now: datetime | None = None,
) -> None:
    """Writes `hours` hours of training scores (and feedback for `with_feedback`) for each of
    `keys`, which must be registered; the `drifting` ones fall two thirds of the way in."""
    rng = random.Random(seed)
    start = hour_of(now or datetime.now(UTC)) - timedelta(hours=hours - 1)
    engine = make_engine(database_url)
    try:
        sessions = make_session_factory(engine)
        with sessions.begin() as session:
            rows = session.execute(
                select(ContextRow.key, ContextRow.index).where(
                    ContextRow.key.in_(list(keys)), ContextRow.retired_at.is_(None)
                )
            )
            index_of = {key: index for key, index in rows}
        for key in keys:
            falls_at = round(hours * 2 / 3) if key in drifting else None
            with sessions.begin() as session:
                for hour in range(hours):
                    for checkpoint in range(CHECKPOINTS_PER_HOUR):
                        at = start + timedelta(
                            hours=hour, minutes=60 * checkpoint // CHECKPOINTS_PER_HOUR
                        )
                        accuracy = _accuracy(hour + checkpoint / CHECKPOINTS_PER_HOUR, falls_at)
                        seen = rng.randint(60, 270)
                        correct = sum(rng.random() < accuracy for _ in range(seen))
                        _checkpoint(session, index_of[key], Scores(seen, correct), at)
                        if key in with_feedback and checkpoint % 2 == 0:
                            labelled = rng.randint(15, 90)
                            right = sum(rng.random() < accuracy - 0.03 for _ in range(labelled))
                            _feedback(session, index_of[key], Scores(labelled, right), at)
    finally:
        engine.dispose()


def _accuracy(hour: float, falls_at: int | None) -> float:
    """A model learning its tenant; after a fall it starts over, a little faster."""
    if falls_at is not None and hour >= falls_at:
        return 0.12 + 0.8 * (1 - math.exp(-(hour - falls_at) / 3))
    return 0.1 + 0.83 * (1 - math.exp(-hour / 4))


def _checkpoint(session: Session, index: int, scores: Scores, at: datetime) -> None:
    add_training_counts(session=session, counts={index: (scores.seen, scores.correct)})
    add_scores(session=session, train={index: scores}, at=at)
    observe_scores(
        session=session,
        source="train",
        scores={index: scores},
        config=DriftConfig(),
        at=at,
        max_events=20,
    )


def _feedback(session: Session, index: int, scores: Scores, at: datetime) -> None:
    add_scores(session=session, feedback={index: scores}, at=at)
    observe_scores(
        session=session,
        source="feedback",
        scores={index: scores},
        config=DriftConfig(),
        at=at,
        max_events=20,
    )
