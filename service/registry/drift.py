"""Each context's drift detector in the registry: its state, the drifts it found, and what a
reader sees of them.

`observe_scores` runs in the transaction that records the scores (a checkpoint's counts, or one
feedback call), so every batch of scores reaches the detector exactly once, as it reaches the
counters, and every process reads the same state. The detector (`service.feedback.drift`) keeps five
numbers per context and source; the drifts it finds are kept as events, at most `max_events`
per context (older ones are dropped as new ones come) and never beyond the history's retention
(`forget_before`).

Like every registry query, these functions take keyword arguments only and never commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Table, delete, false, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.feedback.drift import DetectorState, DriftConfig, observe
from service.registry.accuracy import Scores
from service.registry.database import in_chunks, insert_with_on_conflict
from service.registry.models import ContextDriftRow, ContextRow, DriftEventRow

Source = Literal["train", "feedback"]
"""Which scores a detector watches: prequential ones (`train`) or late labels (`feedback`)."""

DriftState = Literal["learning", "stable", "falling", "drifted"]
"""What a reader is told: too few rows to test yet; no fall; evidence of a fall is gathering
(half the threshold or more); a drift was found within the recent window."""

_STATE_COLUMNS = ("rows", "baseline", "cusum", "suspect_seen", "suspect_correct")


@dataclass(frozen=True)
class DriftEvent:
    """One detected drift, as readers and the metrics see it."""

    context_index: int
    at: datetime
    source: Source
    accuracy_before: float
    accuracy_after: float
    rows: int


@dataclass(frozen=True)
class ContextDrift:
    """A context's drift, as `GET /contexts/{key}` and the page show it.

    Attributes:
        state: See `DriftState`.
        drifts: Drifts found so far, from both sources.
        last_drift_at: When the newest was found; None before the first.
        events: The newest events, newest first.
    """

    state: DriftState
    drifts: int
    last_drift_at: datetime | None
    events: list[DriftEvent]


def observe_scores(
    *,
    session: Session,
    source: Source,
    scores: Mapping[int, Scores],
    config: DriftConfig,
    at: datetime,
    max_events: int,
) -> list[DriftEvent]:
    """Feeds each context's batch of scores to its detector and records the drifts found.

    Args:
        session: The session to work in; flushed, not committed.
        source: Which detector of each context the scores feed.
        scores: Context index -> the batch's scores. Contexts without a registry row are
            tracked all the same (a checkpoint may hold a context retired meanwhile).
        config: The detectors' sensitivity.
        at: When the scores are recorded.
        max_events: Events kept per context; the oldest beyond it are deleted.

    Returns:
        The drifts found, in context order.
    """
    indices = sorted(index for index, batch in scores.items() if batch.seen)
    if not indices:
        return []
    states = _locked_states(session, source, indices, at)
    updates: list[dict[str, Any]] = []
    events: list[DriftEvent] = []
    for index in indices:
        state, drifts, last_drift_at = states[index]
        batch = scores[index]
        state, drift = observe(state, batch.seen, batch.correct, config)
        if drift is not None:
            drifts, last_drift_at = drifts + 1, at
            events.append(
                DriftEvent(
                    index, at, source, drift.accuracy_before, drift.accuracy_after, drift.rows
                )
            )
        updates.append(
            {
                "context_index": index,
                "source": source,
                **{name: getattr(state, name) for name in _STATE_COLUMNS},
                "drifts": drifts,
                "scored_at": at,
                "last_drift_at": last_drift_at,
            }
        )
    _write_states(session, updates)
    if events:
        session.add_all(DriftEventRow(**vars(event)) for event in events)
        session.flush()
        for event in events:
            _keep_newest_events(session, event.context_index, max_events)
    return events


def _locked_states(
    session: Session, source: Source, indices: Sequence[int], at: datetime
) -> dict[int, tuple[DetectorState, int, datetime | None]]:
    """Each context's detector state, drift count and last drift, read under a lock, so that
    two transactions feeding one detector take turns instead of both updating what they read.

    PostgreSQL locks the rows read (`FOR UPDATE`). SQLite has no row locks: its one write lock
    is taken before anything is read. Missing rows are created first (`ON CONFLICT DO
    NOTHING`, then read under the lock, which waits for a concurrent creator to commit).
    """
    if session.get_bind().dialect.name == "sqlite":
        # An UPDATE that matches nothing still takes the write lock.
        session.execute(update(ContextDriftRow).where(false()).values(rows=ContextDriftRow.rows))
    found = _read_states(session, source, indices)
    missing = [index for index in indices if index not in found]
    if missing:
        fresh = {name: getattr(DetectorState(), name) for name in _STATE_COLUMNS}
        rows = [
            {"context_index": i, "source": source, **fresh, "drifts": 0, "scored_at": at}
            for i in missing
        ]
        statement = insert_with_on_conflict(session, ContextDriftRow).on_conflict_do_nothing(
            index_elements=["context_index", "source"]
        )
        session.execute(statement, rows)
        found.update(_read_states(session, source, missing))
    return found


def _read_states(
    session: Session, source: Source, indices: Sequence[int]
) -> dict[int, tuple[DetectorState, int, datetime | None]]:
    table = cast(Table, ContextDriftRow.__table__).c
    found: dict[int, tuple[DetectorState, int, datetime | None]] = {}
    for chunk in in_chunks(indices):
        # Through the connection: plain rows, without the ORM's loading.
        rows = session.connection().execute(
            select(
                table.context_index,
                *(table[name] for name in _STATE_COLUMNS),
                table.drifts,
                table.last_drift_at,
            )
            .where(table.source == source, table.context_index.in_(chunk))
            .with_for_update()
        )
        for index, learned, baseline, cusum, seen, correct, drifts, last in cast(Any, rows):
            found[index] = (DetectorState(learned, baseline, cusum, seen, correct), drifts, last)
    return found


def _write_states(session: Session, rows: list[dict[str, Any]]) -> None:
    """Stores the detectors' new states: multi-row upserts of the table itself, since an
    UPDATE per row, or the ORM's bulk path, costs more than the detectors' arithmetic."""
    table = cast(Table, ContextDriftRow.__table__)
    dialect = session.get_bind().dialect.name
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    changed = (*_STATE_COLUMNS, "drifts", "scored_at", "last_drift_at")
    statement = statement.on_conflict_do_update(
        index_elements=["context_index", "source"],
        set_={name: statement.excluded[name] for name in changed},
    )
    session.connection().execute(statement, rows)


def _keep_newest_events(session: Session, index: int, keep: int) -> None:
    """Deletes the context's events older than its `keep` newest."""
    oldest_kept = session.scalar(
        select(DriftEventRow.id)
        .where(DriftEventRow.context_index == index)
        .order_by(DriftEventRow.id.desc())
        .offset(keep - 1)
        .limit(1)
    )
    if oldest_kept is not None:
        session.execute(
            delete(DriftEventRow).where(
                DriftEventRow.context_index == index, DriftEventRow.id < oldest_kept
            )
        )


def shards_of(*, session: Session, indices: Sequence[int]) -> dict[int, int]:
    """The shard of each context index that has a registry row."""
    found: dict[int, int] = {}
    for chunk in in_chunks(sorted(set(indices))):
        rows = session.execute(
            select(ContextRow.index, ContextRow.shard).where(ContextRow.index.in_(chunk))
        )
        found.update({index: shard for index, shard in rows})
    return found


def context_drift(
    *,
    session: Session,
    index: int,
    config: DriftConfig,
    recent: timedelta,
    now: datetime,
    events: int,
) -> ContextDrift:
    """A context's drift state, its count and its `events` newest drifts.

    Args:
        session: The session to read with.
        index: The context's bank index.
        config: The detectors' sensitivity (the state is judged against it).
        recent: A drift found within this long before `now` makes the state `drifted`.
        now: The current time.
        events: How many events to return at most.
    """
    rows = session.scalars(select(ContextDriftRow).where(ContextDriftRow.context_index == index))
    states = list(rows)
    newest = session.scalars(
        select(DriftEventRow)
        .where(DriftEventRow.context_index == index)
        .order_by(DriftEventRow.id.desc())
        .limit(events)
    )
    drift_times = [row.last_drift_at for row in states if row.last_drift_at is not None]
    last = max(drift_times, default=None)
    return ContextDrift(
        state=judge(
            [(row.rows, row.cusum) for row in states], last, config=config, recent=recent, now=now
        ),
        drifts=sum(row.drifts for row in states),
        last_drift_at=last,
        events=[_event(row) for row in newest],
    )


def judge(
    detectors: Sequence[tuple[int, float]],
    last_drift_at: datetime | None,
    *,
    config: DriftConfig,
    recent: timedelta,
    now: datetime,
) -> DriftState:
    """The state a reader is shown, from each detector's `(rows, evidence)` and the last drift.

    A recent drift comes first (it is what an operator must see), then gathering evidence, then
    whether any detector is testing at all.
    """
    if last_drift_at is not None and now - last_drift_at <= recent:
        return "drifted"
    if any(cusum >= config.threshold / 2 for _, cusum in detectors):
        return "falling"
    if all(rows < config.warmup_rows for rows, _ in detectors):
        return "learning"
    return "stable"


def events_since(*, session: Session, index: int, since: datetime) -> list[DriftEvent]:
    """The context's drifts found at or after `since`, oldest first."""
    rows = session.scalars(
        select(DriftEventRow)
        .where(DriftEventRow.context_index == index, DriftEventRow.at >= since)
        .order_by(DriftEventRow.id)
    )
    return [_event(row) for row in rows]


def forget_before(*, session: Session, before: datetime) -> None:
    """Deletes drifts found before `before`, and the detectors of retired contexts."""
    session.execute(delete(DriftEventRow).where(DriftEventRow.at < before))
    retired = select(ContextRow.index).where(ContextRow.retired_at.is_not(None))
    session.execute(
        delete(ContextDriftRow).where(ContextDriftRow.context_index.in_(retired)),
        execution_options={"synchronize_session": False},
    )


def _event(row: DriftEventRow) -> DriftEvent:
    source = cast(Source, row.source)
    return DriftEvent(
        row.context_index, row.at, source, row.accuracy_before, row.accuracy_after, row.rows
    )
