"""One page of live contexts with what an operator sorts them by: counts, accuracy, when each
was last trained and its drift detection.

One query joins each context to its two drift detectors (train and feedback), sorts in the
database and returns one page; a second counts the matching contexts. Both read only
`contexts` and `context_drift`, which stay small per context, so thousands of contexts cost a
few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, Float, Select, and_, case, cast, func, select
from sqlalchemy.orm import Session, aliased

from service.registry.models import ContextDriftRow, ContextRow
from service.registry.queries import key_starts_with

SortKey = Literal["key", "shard", "examples", "refused", "trained", "accuracy", "drift"]
SORT_KEYS: tuple[str, ...] = get_args(SortKey)


@dataclass(frozen=True)
class ContextSummary:
    """One context as the list page shows it.

    Attributes:
        detectors: `(rows, evidence)` of each of its drift detectors that has seen scores.
    """

    index: int
    key: str
    shard: int
    examples_seen: int
    refused: int
    prequential_accuracy: float | None
    last_trained: datetime | None
    drifts: int
    last_drift_at: datetime | None
    detectors: list[tuple[int, float]]


def overview_page(
    *,
    session: Session,
    key_prefix: str,
    sort: SortKey,
    descending: bool,
    limit: int,
    offset: int,
) -> tuple[list[ContextSummary], int]:
    """A page of live contexts whose keys start with `key_prefix`, sorted by `sort` (ties and
    missing values last, then registration order), and how many match in all."""
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must be non-negative")
    where = _live(key_prefix)
    query = _sorted_summaries(sort, descending).where(*where).limit(limit).offset(offset)
    summaries = [_summary(row) for row in session.execute(query)]
    total = session.scalar(select(func.count()).select_from(ContextRow).where(*where)) or 0
    return summaries, total


def _sorted_summaries(sort: SortKey, descending: bool) -> Select[Any]:
    """Every context joined to its train and feedback drift detectors, in the columns `_summary`
    reads, sorted by `sort`."""
    train = aliased(ContextDriftRow, name="train")
    feedback = aliased(ContextDriftRow, name="feedback")
    last_drift = _later(train.last_drift_at, feedback.last_drift_at)
    accuracy = _prequential_accuracy()
    sort_columns: dict[str, Any] = {
        "key": ContextRow.key,
        "shard": ContextRow.shard,
        "examples": ContextRow.examples_seen,
        "refused": func.coalesce(ContextRow.refused, 0),
        "trained": train.scored_at,
        "accuracy": accuracy,
        "drift": last_drift,
    }
    column = sort_columns[sort]
    order = column.desc() if descending else column.asc()
    return (
        select(
            ContextRow.index,
            ContextRow.key,
            ContextRow.shard,
            ContextRow.examples_seen,
            ContextRow.refused,
            accuracy,
            train.scored_at,
            func.coalesce(train.drifts, 0) + func.coalesce(feedback.drifts, 0),
            last_drift,
            train.rows,
            train.cusum,
            feedback.rows,
            feedback.cusum,
        )
        .outerjoin(train, and_(train.context_index == ContextRow.index, train.source == "train"))
        .outerjoin(
            feedback,
            and_(feedback.context_index == ContextRow.index, feedback.source == "feedback"),
        )
        .order_by(order.nulls_last(), ContextRow.index)
    )


def _prequential_accuracy() -> ColumnElement[Any]:
    """A context's test-then-train accuracy, NULL before it has scored a row."""
    return case(
        (
            ContextRow.prequential_seen > 0,
            cast(ContextRow.prequential_correct, Float) / ContextRow.prequential_seen,
        ),
        else_=None,
    )


def _live(key_prefix: str) -> list[ColumnElement[bool]]:
    live: list[ColumnElement[bool]] = [ContextRow.retired_at.is_(None)]
    if key_prefix:
        live.append(key_starts_with(key_prefix))
    return live


def _later(first: Any, second: Any) -> ColumnElement[Any]:
    """The later of two nullable times (SQLite's `max` and PostgreSQL's `greatest` disagree
    about NULL)."""
    return case(
        (first.is_(None), second),
        (second.is_(None), first),
        (first > second, first),
        else_=second,
    )


def _summary(row: Any) -> ContextSummary:
    (
        index,
        key,
        shard,
        examples,
        refused,
        accuracy,
        trained,
        drifts,
        last_drift,
        train_rows,
        train_cusum,
        feedback_rows,
        feedback_cusum,
    ) = row
    detectors = [
        (rows, cusum)
        for rows, cusum in ((train_rows, train_cusum), (feedback_rows, feedback_cusum))
        if rows is not None
    ]
    return ContextSummary(
        index=index,
        key=key,
        shard=shard,
        examples_seen=examples,
        refused=refused or 0,
        prequential_accuracy=None if accuracy is None else float(accuracy),
        last_trained=trained,
        drifts=int(drifts),
        last_drift_at=last_drift,
        detectors=detectors,
    )
