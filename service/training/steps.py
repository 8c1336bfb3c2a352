"""Learning from the entries of one apply: minibatches, training steps, and the counts and
notices that follow from each step being applied or refused."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import numpy as np

from psp_core.learner import StepResult
from service import metrics
from service.model.host import ModelHost, TrainRows
from service.queue.applied import AppliedNotices
from service.queue.base import QueuedEntry
from service.registry.store import RegistryStore
from service.settings import Settings
from service.training.ledger import Ledger
from service.training.minibatches import entry_positions, minibatches, split_by_entry
from service.training.noisy_contexts import NoisyContexts
from service.training.trainer_metrics import TrainerMetrics

log = logging.getLogger(__name__)

REFUSED_STEP = (
    "the trainer refused to learn this batch: the loss or a gradient of its step was not finite "
    "(loss {loss:g}); the weights did not change, so check the rows for extreme values"
)


class StepRunner:
    """Steps the model on entries and records the outcome in the ledger and the notices."""

    def __init__(
        self,
        *,
        host: ModelHost,
        registry: RegistryStore,
        applied: AppliedNotices,
        ledger: Ledger,
        settings: Settings,
        trainer_metrics: TrainerMetrics,
        noisy: NoisyContexts,
    ) -> None:
        self._host = host
        self._registry = registry
        self._applied = applied
        self._ledger = ledger
        self._settings = settings
        self._metrics = trainer_metrics
        self._noisy = noisy

    async def learn(self, fresh: Sequence[QueuedEntry]) -> None:
        """Learns from entries none of which a checkpoint holds yet, in id order, and tells
        their waiting producers; entries of contexts no process registered are dropped."""
        await self._learn_unknown_contexts(fresh)
        known = [e for e in fresh if self._host.has_context(e.entry.context_index)]
        for entry in fresh:
            if not self._host.has_context(entry.entry.context_index):
                log.warning(
                    "dropping entry %s of unknown context index %d",
                    entry.entry_id,
                    entry.entry.context_index,
                )
        training = self._settings.training
        batches = minibatches(
            known,
            size=training.batch_size,
            coalesce=training.coalesce,
            seed=self._settings.model.seed,
        )
        results = await asyncio.to_thread(self._host.train_steps, batches)
        refused: dict[str, str] = {}
        shared_refusals = []
        for batch, result in zip(batches, results, strict=True):
            if result.applied:
                self._count_applied(batch, result)
            elif len(entry_positions(batch)) > 1:
                shared_refusals.append(batch)
            else:
                self._count_refused(batch, result, known, refused)
        if shared_refusals:
            await self._step_entries_alone(shared_refusals, known, refused)
        self._ledger.progress.entry_ids.extend(e.entry_id for e in fresh)
        await self._applied.publish([e.entry_id for e in fresh], self._host.model_version, refused)

    async def _step_entries_alone(
        self,
        batches: Sequence[TrainRows],
        known: Sequence[QueuedEntry],
        refused: dict[str, str],
    ) -> None:
        """Steps the rows of each entry of refused shared minibatches on their own.

        A refused step left the weights, the optimiser state and the version as they were (a
        replay buffer's random generator has moved on, so the retry may replay other rows), so
        its rows can be stepped again: one tenant's rows that break a step must not cost the
        tenants it shared the step with theirs. Only an entry whose own rows are refused again
        is refused.
        """
        alone = [part for batch in batches for part in split_by_entry(batch)]
        results = await asyncio.to_thread(self._host.train_steps, alone)
        for part, result in zip(alone, results, strict=True):
            if result.applied:
                self._count_applied(part, result)
            else:
                self._count_refused(part, result, known, refused)

    def _count_applied(self, batch: TrainRows, result: StepResult) -> None:
        """Counts an applied step's rows as seen, with their prequential scores, per context."""
        self._count_bounded(batch, result, refused=False)
        correct = result.correct.numpy()
        for index in np.unique(batch.indices):
            mine = batch.indices == index
            counts = self._ledger.progress.counts[int(index)]
            counts[0] += int(mine.sum())
            counts[1] += int(correct[mine].sum())
        metrics.record_prequential(int(correct.sum()), len(correct))
        self._ledger.progress.steps += 1

    def _count_refused(
        self,
        batch: TrainRows,
        result: StepResult,
        known: Sequence[QueuedEntry],
        refused: dict[str, str],
    ) -> None:
        """Counts a refused step's rows as refused, never as seen, per context, and notes the
        reason for the entries that held them."""
        self._count_bounded(batch, result, refused=True)
        self._metrics.refused_rows.inc(len(batch.indices))
        indices, per_context = np.unique(batch.indices, return_counts=True)
        for index, rows in zip(indices, per_context, strict=True):
            self._ledger.progress.counts[int(index)][2] += int(rows)
        reason = REFUSED_STEP.format(loss=result.loss)
        refused.update((known[p].entry_id, reason) for p in entry_positions(batch))

    def _count_bounded(self, batch: TrainRows, result: StepResult, *, refused: bool) -> None:
        bounded = result.bounded
        if len(bounded):
            self._metrics.bounded_rows.inc(int(bounded.sum()))
        self._noisy.count(batch.indices, bounded, refused=refused)

    async def _learn_unknown_contexts(self, entries: Sequence[QueuedEntry]) -> None:
        """Adds contexts that other processes registered since this one last looked."""
        wanted = {e.entry.context_index for e in entries}
        if all(self._host.has_context(index) for index in wanted):
            return
        shard = self._settings.queue.shard
        newer = await self._registry.context_definitions(self._host.max_index, shard)
        await asyncio.to_thread(self._host.add_contexts, newer)
        if not all(self._host.has_context(index) for index in wanted):
            # A registration with a lower index may have committed after a higher one.
            every = await self._registry.context_definitions(shard=shard)
            await asyncio.to_thread(self._host.add_contexts, every)
