"""The registry as the service uses it: async methods over the sync queries, run in threads.

Each method opens one session, does one job in one transaction and commits, so routes and the
trainer never hold a session across an `await`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service import metrics
from service.contexts.definition import ContextDefinition
from service.entry_ids import entry_id_key
from service.registry import (
    accuracy,
    api_keys,
    counters,
    drift,
    queries,
    registration,
    writers,
)
from service.registry.accuracy import AccuracyHour, Scores, hour_of
from service.registry.counters import TrainingCounts
from service.registry.database import make_session_factory, ping
from service.registry.drift import ContextDrift, DriftEvent
from service.registry.history import HistoryPolicy, forget_old_history
from service.registry.models import ContextRow, TrainerState, utcnow
from service.registry.overview import ContextSummary, SortKey, overview_page
from service.registry.parameters import ContextItem
from service.registry.powers import DEFAULT_MIN_POWER_GAP
from service.registry.shards import ShardPlan, live_per_shard

T = TypeVar("T")
log = logging.getLogger(__name__)

UNIQUE_RACE_ATTEMPTS = 5
"""Tries of a registration that lost a race for a seed, power or key to another transaction.
The retry reads the winner's committed row, so it answers 200, 409 or 422 like any request."""


REGISTRY_THREADS = 4
"""Registry calls that may run at once in one process."""


class RegistryUnavailable(Exception):
    """The registry database cannot be reached."""


class RegistryStore:
    """Context registration, lookup and the trainer's counters, for one model kind."""

    def __init__(
        self,
        engine: Engine,
        kind: str,
        min_power_gap: float = DEFAULT_MIN_POWER_GAP,
        shards: ShardPlan = ShardPlan(),
        history: HistoryPolicy = HistoryPolicy(),
    ) -> None:
        self.engine = engine
        self.kind = kind
        self.min_power_gap = min_power_gap
        self.shards = shards
        self.history = history
        self._sessions: sessionmaker[Session] = make_session_factory(engine)
        # Threads of its own: a call may wait seconds for a database lock (SQLite's busy
        # timeout), and must not hold up the other work that runs in threads.
        self._executor = ThreadPoolExecutor(REGISTRY_THREADS, thread_name_prefix="registry")
        self._history_pruned_in: datetime | None = None
        for shard in range(shards.count):  # exported from the start, at zero
            metrics.CONTEXT_DRIFTS.labels(shard=str(shard))

    async def _run(self, job: Callable[[Session], T]) -> T:
        def in_transaction() -> T:
            for attempt in range(1, UNIQUE_RACE_ATTEMPTS + 1):
                try:
                    with self._sessions.begin() as session:
                        return job(session)
                except IntegrityError:
                    # A unique index caught a concurrent insert that the checks could not see
                    # yet; the next try sees it committed.
                    if attempt == UNIQUE_RACE_ATTEMPTS:
                        raise
            raise AssertionError("unreachable")

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, in_transaction)
        except (OperationalError, InterfaceError) as err:
            raise RegistryUnavailable(str(err.orig or err)) from err
        except DBAPIError as err:
            if err.connection_invalidated:
                raise RegistryUnavailable(str(err.orig or err)) from err
            raise

    async def ping(self) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._executor, ping, self.engine)

    def close(self) -> None:
        """Closes the connections and lets the registry's threads go."""
        self._executor.shutdown(wait=False)
        self.engine.dispose()

    async def create(
        self, key: str, seed: int | None, power: float | None
    ) -> tuple[ContextRow, bool]:
        return await self._run(
            lambda s: _detached(
                s,
                registration.create_context(
                    session=s,
                    key=key,
                    kind=self.kind,
                    seed=seed,
                    power=power,
                    min_power_gap=self.min_power_gap,
                    shards=self.shards,
                ),
            )
        )

    async def create_many(self, items: Sequence[ContextItem]) -> list[tuple[ContextRow, bool]]:
        def job(session: Session) -> list[tuple[ContextRow, bool]]:
            created = registration.create_contexts(
                session=session,
                kind=self.kind,
                items=items,
                min_power_gap=self.min_power_gap,
                shards=self.shards,
            )
            session.flush()
            session.expunge_all()
            return created

        return await self._run(job)

    async def get(self, key: str) -> ContextRow | None:
        def job(session: Session) -> ContextRow | None:
            row = queries.get_context(session=session, key=key)
            if row is not None:
                session.expunge(row)
            return row

        return await self._run(job)

    async def page(
        self, limit: int, offset: int, key_prefix: str = ""
    ) -> tuple[list[ContextRow], int]:
        def job(session: Session) -> tuple[list[ContextRow], int]:
            rows, total = queries.list_contexts(
                session=session, limit=limit, offset=offset, key_prefix=key_prefix
            )
            session.expunge_all()
            return rows, total

        return await self._run(job)

    async def retire(self, key: str) -> bool:
        return await self._run(lambda s: queries.retire_context(session=s, key=key))

    async def live_keys(self) -> list[tuple[str, int]]:
        return await self._run(lambda s: queries.live_keys(session=s))

    async def retired_since(self, since: datetime) -> list[tuple[str, int]]:
        return await self._run(lambda s: queries.retired_since(session=s, since=since))

    async def count_live(self) -> int:
        return await self._run(lambda s: queries.count_live_contexts(session=s))

    async def highest_live_shard(self) -> int | None:
        """The highest shard that holds a live context; None while none is live."""
        return await self._run(
            lambda s: s.scalar(
                select(func.max(ContextRow.shard)).where(ContextRow.retired_at.is_(None))
            )
        )

    async def live_per_shard(self) -> list[int]:
        """The live contexts of each configured shard, by shard number."""
        return await self._run(lambda s: live_per_shard(s, self.shards.count))

    async def stored_api_keys(self) -> api_keys.StoredKeys:
        """The stored API keys that are not revoked, and whether any was ever stored."""
        return await self._run(lambda s: api_keys.stored_keys(session=s))

    async def context_definitions(
        self, after_index: int = -1, shard: int | None = None
    ) -> list[ContextDefinition]:
        """Every live context, in index order: what the models' banks hold (of one shard, or
        of all when `shard` is None)."""

        def job(session: Session) -> list[ContextDefinition]:
            query = select(ContextRow.index, ContextRow.seed, ContextRow.power, ContextRow.shard)
            query = query.where(ContextRow.index > after_index, ContextRow.retired_at.is_(None))
            if shard is not None:
                query = query.where(ContextRow.shard == shard)
            rows = session.execute(query.order_by(ContextRow.index))
            return [ContextDefinition(i, s, p, k) for i, s, p, k in rows]

        return await self._run(job)

    async def commit_training(
        self,
        *,
        shard: int,
        last_entry_id: str,
        counts: Mapping[int, TrainingCounts],
        writer_token: int | None = None,
    ) -> bool:
        """Adds a checkpoint's counts unless the registry already holds that checkpoint.

        The shard's watermark (the last entry id whose counts are in) moves in the same
        transaction, which makes the update idempotent; the scores feed each context's drift
        detector in that transaction too, so exactly once as well.

        Returns:
            True if the counts were added now.

        Raises:
            WriterFenced: `writer_token` is not the shard's newest writer's.
        """

        def job(session: Session) -> tuple[bool, list[DriftEvent]]:
            state = session.get(TrainerState, shard, with_for_update=True)
            if state is None:
                state = TrainerState(shard=shard, last_entry_id="0-0", writer_token=0)
                session.add(state)
                session.flush()
            writers.check_token(state, shard, writer_token)
            if entry_id_key(last_entry_id) <= entry_id_key(state.last_entry_id):
                return False, []
            counters.add_training_counts(session=session, counts=counts)
            train = {index: Scores(values[0], values[1]) for index, values in counts.items()}
            at = utcnow()
            accuracy.add_scores(session=session, train=train, at=at)
            found = self._observe(session, "train", train, at)
            state.last_entry_id = last_entry_id
            return True, found

        added, found = await self._run(job)
        _report_drifts(found, {event.context_index: shard for event in found})
        await self._forget_old_history_if_due()
        return added

    async def claim_writer(self, shard: int, owner: str, lease_seconds: float) -> int:
        """Claims the shard's writer lease; returns its fencing token (see `writers`)."""
        return await self._run(
            lambda s: writers.claim(
                session=s, shard=shard, owner=owner, lease_seconds=lease_seconds
            )
        )

    async def renew_writer(self, shard: int, token: int, lease_seconds: float) -> datetime:
        return await self._run(
            lambda s: writers.renew(
                session=s, shard=shard, token=token, lease_seconds=lease_seconds
            )
        )

    async def release_writer(self, shard: int, token: int) -> None:
        await self._run(lambda s: writers.release(session=s, shard=shard, token=token))

    async def add_feedback_scores(self, index: int, scores: Scores) -> None:
        """Adds scored feedback predictions to the context's bucket of the current hour, and
        feeds them to the context's feedback drift detector."""

        def job(session: Session) -> tuple[list[DriftEvent], dict[int, int]]:
            at = utcnow()
            accuracy.add_scores(session=session, feedback={index: scores}, at=at)
            found = self._observe(session, "feedback", {index: scores}, at)
            shards = drift.shards_of(session=session, indices=[index]) if found else {}
            return found, shards

        found, shards = await self._run(job)
        _report_drifts(found, shards)
        await self._forget_old_history_if_due()

    def _observe(
        self, session: Session, source: drift.Source, scores: Mapping[int, Scores], at: datetime
    ) -> list[DriftEvent]:
        return drift.observe_scores(
            session=session,
            source=source,
            scores=scores,
            config=self.history.drift,
            at=at,
            max_events=self.history.max_drift_events,
        )

    async def _forget_old_history_if_due(self) -> None:
        """Prunes the history past its retention, at most once an hour in this process; an
        unreachable registry only puts it off."""
        now = utcnow()
        if self._history_pruned_in == hour_of(now):
            return
        try:
            await self._run(
                lambda session: forget_old_history(session=session, policy=self.history, now=now)
            )
        except RegistryUnavailable as err:
            log.warning("could not prune the accuracy and drift history, will retry: %s", err)
            return
        self._history_pruned_in = hour_of(now)

    async def context_drift(self, index: int, recent_hours: int) -> ContextDrift:
        """The context's drift state, count and newest events (a drift within the last
        `recent_hours` makes it `drifted`)."""
        return await self._run(
            lambda session: drift.context_drift(
                session=session,
                index=index,
                config=self.history.drift,
                recent=timedelta(hours=recent_hours),
                now=utcnow(),
                events=self.history.max_drift_events,
            )
        )

    async def overview(
        self, key_prefix: str, sort: SortKey, descending: bool, limit: int, offset: int
    ) -> tuple[list[ContextSummary], int]:
        """A sorted page of live contexts for the operator's page, and how many match."""
        return await self._run(
            lambda session: overview_page(
                session=session,
                key_prefix=key_prefix,
                sort=sort,
                descending=descending,
                limit=limit,
                offset=offset,
            )
        )

    async def accuracy_histories(
        self, indices: Sequence[int], since: datetime
    ) -> dict[int, list[AccuracyHour]]:
        """The hourly buckets of several contexts from the hour of `since` on, oldest first."""
        return await self._run(
            lambda session: accuracy.histories(session=session, indices=indices, since=since)
        )

    async def drift_events(self, index: int, since: datetime) -> list[DriftEvent]:
        """The context's drifts found at or after `since`, oldest first."""
        return await self._run(
            lambda session: drift.events_since(session=session, index=index, since=since)
        )

    async def accuracy_window(self, index: int, hours: int) -> tuple[Scores, Scores]:
        """Train and feedback scores of the context over the last `hours` hourly buckets."""
        return await self._run(
            lambda session: accuracy.window_totals(session=session, index=index, hours=hours)
        )

    async def accuracy_history(self, index: int, since: datetime) -> list[AccuracyHour]:
        """The context's hourly buckets from the hour of `since` on, oldest first."""
        return await self._run(
            lambda session: accuracy.history(session=session, index=index, since=since)
        )


def _report_drifts(found: Sequence[DriftEvent], shards: Mapping[int, int]) -> None:
    """Counts committed drifts by shard (`psp_context_drifts_total`) and logs each."""
    for event in found:
        shard = shards.get(event.context_index)
        metrics.CONTEXT_DRIFTS.labels(shard="unknown" if shard is None else str(shard)).inc()
        log.warning(
            "context %d drifted: its %s accuracy fell from %.3f to %.3f over %d rows",
            event.context_index,
            event.source,
            event.accuracy_before,
            event.accuracy_after,
            event.rows,
        )


def _detached(session: Session, created: tuple[ContextRow, bool]) -> tuple[ContextRow, bool]:
    session.flush()
    session.refresh(created[0])
    session.expunge(created[0])
    return created
