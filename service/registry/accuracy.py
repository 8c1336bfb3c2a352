"""Hourly accuracy of each context: prequential train scores and scored feedback predictions.

Scores are added to the bucket of the hour they are recorded in, with one upsert per context
(`INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n`), so concurrent writers never lose
each other's counts. Rolling-window accuracy is the sum of the buckets in the window. Buckets
older than the retention are deleted (`forget_before`), so a context's history stays bounded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.registry.database import in_chunks, insert_with_on_conflict
from service.registry.models import AccuracyHourRow, utcnow


def hour_of(moment: datetime) -> datetime:
    """The start of the hour holding `moment`."""
    return moment.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Scores:
    """Scored examples: how many, and how many the model got right.

    Attributes:
        seen: Examples scored.
        correct: Of those, the right ones.
    """

    seen: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        """correct / seen, or None before anything was scored."""
        return self.correct / self.seen if self.seen else None


@dataclass(frozen=True)
class AccuracyHour:
    """One context's scores within one hour."""

    hour: datetime
    train: Scores
    feedback: Scores


def add_scores(
    *,
    session: Session,
    train: Mapping[int, Scores] | None = None,
    feedback: Mapping[int, Scores] | None = None,
    at: datetime | None = None,
) -> None:
    """Adds train and feedback scores to each context's bucket of the hour of `at` (now).

    Args:
        session: The session to work in; flushed, not committed.
        train: Context index -> prequential scores of learned examples.
        feedback: Context index -> scores of remembered predictions whose labels came back.
        at: When the scores are recorded; the current time by default.
    """
    hour = hour_of(at or utcnow())
    rows: dict[int, dict[str, Any]] = {}
    for index, scores in sorted((train or {}).items()):
        row = rows.setdefault(index, _empty_row(index, hour))
        row["train_seen"], row["train_correct"] = scores.seen, scores.correct
    for index, scores in sorted((feedback or {}).items()):
        row = rows.setdefault(index, _empty_row(index, hour))
        row["feedback_seen"], row["feedback_correct"] = scores.seen, scores.correct
    values = [row for row in rows.values() if row["train_seen"] or row["feedback_seen"]]
    if not values:
        return
    statement = insert_with_on_conflict(session, AccuracyHourRow)
    counted = ("train_seen", "train_correct", "feedback_seen", "feedback_correct")
    table = AccuracyHourRow.__table__.c
    statement = statement.on_conflict_do_update(
        index_elements=["context_index", "hour"],
        set_={name: table[name] + statement.excluded[name] for name in counted},
    )
    # Sorted by index so that concurrent writers lock rows in the same order.
    session.execute(statement, sorted(values, key=lambda row: row["context_index"]))


def _empty_row(index: int, hour: datetime) -> dict[str, Any]:
    return {
        "context_index": index,
        "hour": hour,
        "train_seen": 0,
        "train_correct": 0,
        "feedback_seen": 0,
        "feedback_correct": 0,
    }


def history(*, session: Session, index: int, since: datetime) -> list[AccuracyHour]:
    """A context's hourly buckets from the hour of `since` on, oldest first; hours without
    scores are left out."""
    rows = session.scalars(
        select(AccuracyHourRow)
        .where(AccuracyHourRow.context_index == index, AccuracyHourRow.hour >= hour_of(since))
        .order_by(AccuracyHourRow.hour)
    )
    return [_bucket(row) for row in rows]


def _bucket(row: AccuracyHourRow) -> AccuracyHour:
    return AccuracyHour(
        row.hour,
        Scores(row.train_seen, row.train_correct),
        Scores(row.feedback_seen, row.feedback_correct),
    )


def histories(
    *, session: Session, indices: Sequence[int], since: datetime
) -> dict[int, list[AccuracyHour]]:
    """The hourly buckets of several contexts from the hour of `since` on, oldest first (what
    a page of sparklines needs, in one query per few hundred contexts)."""
    found: dict[int, list[AccuracyHour]] = {index: [] for index in indices}
    for chunk in in_chunks(sorted(set(indices))):
        rows = session.scalars(
            select(AccuracyHourRow)
            .where(AccuracyHourRow.context_index.in_(chunk), AccuracyHourRow.hour >= hour_of(since))
            .order_by(AccuracyHourRow.context_index, AccuracyHourRow.hour)
        )
        for row in rows:
            found[row.context_index].append(_bucket(row))
    return found


def forget_before(*, session: Session, before: datetime) -> None:
    """Deletes every context's buckets of the hours that ended before `before`."""
    session.execute(delete(AccuracyHourRow).where(AccuracyHourRow.hour < hour_of(before)))


def window_totals(*, session: Session, index: int, hours: int) -> tuple[Scores, Scores]:
    """Train and feedback scores of a context over the current hour and the `hours - 1`
    before it."""
    since = hour_of(utcnow()) - timedelta(hours=hours - 1)
    totals = session.execute(
        select(
            func.coalesce(func.sum(AccuracyHourRow.train_seen), 0),
            func.coalesce(func.sum(AccuracyHourRow.train_correct), 0),
            func.coalesce(func.sum(AccuracyHourRow.feedback_seen), 0),
            func.coalesce(func.sum(AccuracyHourRow.feedback_correct), 0),
        ).where(AccuracyHourRow.context_index == index, AccuracyHourRow.hour >= since)
    ).one()
    train_seen, train_correct, feedback_seen, feedback_correct = (int(v) for v in totals)
    return Scores(train_seen, train_correct), Scores(feedback_seen, feedback_correct)
