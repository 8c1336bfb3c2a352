"""The single writer: queue entries -> minibatches -> psp_core steps -> checkpoints -> acks.

Exactly-once (docs/design.md): an entry is acknowledged only after a durable checkpoint holds its
effect. Each checkpoint records the id of the last entry it contains and the per-context
counts added since the previous checkpoint; the registry's counters are then advanced from
that checkpoint in one transaction guarded by the same id, so a crash at any point neither
loses nor doubles an example. On start-up the trainer loads the newest checkpoint, finishes
its registry update if the crash came before it, skips pending entries already inside it and
applies the rest.

Self-protection: a divergence guard checks the weights after every step. When a step breaks
them, or raises, the trainer rewinds the way a restart would (newest checkpoint, then the
pending entries again), except that the entries of the failed apply are replayed one at a time:
an entry that breaks the weights on its own, or raises `PSP_GUARD__POISON_ATTEMPTS` times, goes
to the dead-letter store with its reason, and the queue moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from prometheus_client import Counter, Gauge

from psp_core.checkpoint_scrub import forget_contexts_in
from psp_core.contexts import derive_seed
from psp_core.learner import StepResult
from service import metrics
from service.checkpoints.rollback import RollbackFailed, RollbackNotDone
from service.checkpoints.rollback_inbox import ControlInbox
from service.checkpoints.store import CheckpointInfo, CheckpointStore
from service.contexts.retirements import RETIREMENT_OVERLAP
from service.model.divergence import Diverged
from service.model.host import ModelHost, RestoreNeeded, TrainRows
from service.model.training_hooks import installed_training_hooks
from service.queue.applied import AppliedNotices
from service.queue.base import QueuedEntry, QueueUnavailable, TrainQueue
from service.registry.store import RegistryStore, RegistryUnavailable
from service.settings import Settings
from service.training.fencing import WriterFenced
from service.training.ledger import Ledger, Staged
from service.training.noisy_contexts import NoisyContexts
from service.training.writer_lease import LeaseLapsed, WriterLease

log = logging.getLogger(__name__)

_STORE_ERRORS = (QueueUnavailable, RegistryUnavailable, OSError, LeaseLapsed)


REFUSED_STEP = (
    "the trainer refused to learn this batch: the loss or a gradient of its step was not finite "
    "(loss {loss:g}); the weights did not change, so check the rows for extreme values"
)


SET_ASIDE = (
    "the trainer set this batch aside without learning it ({}); it is kept with the dead "
    "letters (GET /model/dead-letters), so check its rows before sending them again"
)


@dataclass(frozen=True)
class _TrainerMetrics:
    """The series of one shard's trainer and queue."""

    divergences: Counter
    dead_lettered_entries: Counter
    dead_lettered_examples: Counter
    queue_depth: Gauge
    queue_lag: Gauge
    refused_rows: Counter
    bounded_rows: Counter

    @classmethod
    def of_shard(cls, shard: int) -> _TrainerMetrics:
        label = str(shard)
        return cls(
            refused_rows=metrics.REFUSED_ROWS.labels(label),
            bounded_rows=metrics.BOUNDED_ROWS.labels(label),
            divergences=metrics.DIVERGENCES.labels(label),
            dead_lettered_entries=metrics.DEAD_LETTERED_ENTRIES.labels(label),
            dead_lettered_examples=metrics.DEAD_LETTERED_EXAMPLES.labels(label),
            queue_depth=metrics.QUEUE_DEPTH.labels(label),
            queue_lag=metrics.QUEUE_LAG.labels(label),
        )


class Trainer:
    """Consumes the train queue and is the only code that changes the weights."""

    def __init__(
        self,
        *,
        host: ModelHost,
        queue: TrainQueue,
        applied: AppliedNotices,
        store: CheckpointStore,
        registry: RegistryStore,
        settings: Settings,
        announce: Callable[[CheckpointInfo], Awaitable[None]] | None = None,
        control: ControlInbox | None = None,
        lease: WriterLease | None = None,
    ) -> None:
        self.host = host
        self.lease = lease
        self.queue = queue
        self.applied = applied
        self.store = store
        self.registry = registry
        self.settings = settings
        self.announce = announce
        self.control = control
        # Rollbacks arrive from the API while the loop runs; one thing changes the weights at once.
        self._exclusive = asyncio.Lock()
        self.ledger = Ledger()
        self._last_checkpoint_at = time.monotonic()
        self._retirements_checked = datetime.now(UTC)
        self._forgotten: set[int] = set()  # deleted contexts forgotten since start-up
        self._unscrubbed: set[int] = set()  # deleted contexts kept files may still hold
        self._retirements_looked = time.monotonic()
        self._look_every = settings.registry_poll_seconds
        self._metrics = _TrainerMetrics.of_shard(settings.queue.shard)
        self.noisy = NoisyContexts(settings.queue.shard, registry.live_keys)
        host.watch_divergence(settings.guard)
        # The entries of the apply under way, and why it failed if it did.
        self._in_flight: list[QueuedEntry] = []
        self._failure: str = ""
        # Set when an apply failed part-way: the weights hold effects no entry accounts for,
        # so nothing may be checkpointed until the trainer has rewound.
        self._needs_rewind = False
        self._suspects: set[str] = set()  # replayed one at a time after a failed apply
        self._attempts: dict[str, int] = defaultdict(int)  # failed single-entry applies
        self._checkpoint_wanted = asyncio.Event()
        self._checkpoint_written = asyncio.Event()

    # Start-up -------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Loads the newest checkpoint and re-applies what it does not hold yet.

        A replayed entry that breaks the weights is set aside and the recovery starts over.
        """
        while True:
            try:
                await self._recover_once()
                return
            except Diverged as err:
                await self._set_aside_after(f"training on it {err}", poison_now=True)
                self.ledger.forget_unsaved()

    async def _recover_once(self) -> None:
        latest = self.store.latest()
        if latest is None:
            # Version 0 on disk is the healthy state a divergence before the first checkpoint
            # goes back to.
            await self._write_checkpoint(self.ledger.stage())
        else:
            metadata = await asyncio.to_thread(self.host.load, latest.path)
            self.ledger.restore(metadata)
            await self._settle()  # finishes the registry update if a crash came before it
        await self._forget_deleted_contexts()
        self._needs_rewind = False
        pending = await self.queue.pending()
        done = [p.entry_id for p in pending if self.ledger.is_checkpointed(p.entry_id)]
        await self.queue.ack(done)
        todo = [p for p in pending if not self.ledger.is_checkpointed(p.entry_id)]
        for group in self._isolating_suspects(todo):
            await self.apply(group)

    def _isolating_suspects(self, entries: Sequence[QueuedEntry]) -> list[list[QueuedEntry]]:
        """Splits entries, in id order, so that each suspect is applied alone."""
        groups: list[list[QueuedEntry]] = [[]]
        for queued in entries:
            if queued.entry_id in self._suspects:
                groups += [[queued], []]
            else:
                groups[-1].append(queued)
        return [group for group in groups if group]

    async def rewind_after_crash(self) -> None:
        """Brings the trainer back to its newest checkpoint after its loop crashed (called by
        the supervisor before restarting `run`)."""
        async with self._exclusive:
            await self._rewind_after_failure()

    async def _rewind_after_failure(self) -> None:
        """The caller holds `_exclusive`."""
        reason = self._failure or "its training step failed"
        await self._set_aside_after(reason, poison_now=False)
        self.ledger.forget_unsaved()
        await self.recover()

    async def _rewind_after_divergence(self, err: Diverged) -> None:
        latest = self.store.latest()
        log.error(
            "training diverged (%s); restoring checkpoint %s and replaying %d entries alone",
            err,
            latest.path.name if latest else "none",
            len(self._in_flight),
        )
        self._metrics.divergences.inc()
        await self._set_aside_after(f"training on it {err}", poison_now=True)
        self.ledger.forget_unsaved()
        await self.recover()

    async def _set_aside_after(self, reason: str, *, poison_now: bool) -> None:
        """Judges the entries of the failed apply: several become suspects, to be replayed one
        at a time; one alone is poison now (`poison_now`) or after `poison_attempts` failures."""
        culprits, self._in_flight = self._in_flight, []
        if len(culprits) != 1:
            self._suspects.update(queued.entry_id for queued in culprits)
            return
        queued = culprits[0]
        self._attempts[queued.entry_id] += 1
        attempts = self._attempts[queued.entry_id]
        if not poison_now and attempts < self.settings.guard.poison_attempts:
            return
        if not poison_now:
            reason = f"its training step failed {attempts} times, last with {reason}"
        log.error("setting aside train entry %s: %s", queued.entry_id, reason)
        await self.queue.dead_letter([(queued, reason)])
        self._metrics.dead_lettered_entries.inc()
        self._metrics.dead_lettered_examples.inc(queued.entry.size)
        # Every entry before it is applied by now (entries are applied in id order), so the
        # notice settles only its own producer, who hears at once why nothing was learned.
        await self.applied.publish(
            [queued.entry_id], self.host.model_version, {queued.entry_id: SET_ASIDE.format(reason)}
        )
        self._suspects.discard(queued.entry_id)
        del self._attempts[queued.entry_id]

    # The loop -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Trains until `stop` is set, then drains the queue into a final checkpoint.

        Call `recover` first.
        """
        try:
            await self._run(stop)
        except WriterFenced as err:
            self._stop_writing(err)

    def _stop_writing(self, err: WriterFenced) -> None:
        """A newer writer holds the shard: this one writes nothing more, for good."""
        if self.lease is not None:
            self.lease.lose(str(err))
        log.error("stopped writing shard %d: %s", self.settings.queue.shard, err)

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.lease is not None:
                self.lease.raise_if_fenced()
            if self.host.restore_needed:  # the supervisor rewinds, restoring a checkpoint
                raise RestoreNeeded(self.host.restore_needed)
            try:
                entries = await self.queue.read(max_entries=64, block_ms=100)
                async with self._exclusive:
                    try:
                        await self.apply(entries)
                    except Diverged as err:
                        await self._rewind_after_divergence(err)
                if self._checkpoint_due():
                    await self._hand_to_checkpoint_writer()
                if time.monotonic() - self._retirements_looked >= self._look_every:
                    async with self._exclusive:  # the bank of an idle writer keeps up too
                        await self._forget_retired_contexts()
                if self.control is not None:
                    await self.control.serve_one(self)
                await self._report_queue()
                await self.noisy.report_if_due()
            except _STORE_ERRORS as err:
                if self._needs_rewind:
                    raise  # the supervisor rewinds once the stores answer again
                log.warning("trainer waiting for its stores: %s", err)
                await asyncio.sleep(0.5)
        if self.lease is not None:
            self.lease.raise_if_fenced()
        if not self.queue.durable:  # what a durable queue holds is simply trained next time
            await self._drain()
        async with self._exclusive:
            await self._checkpoint()

    async def _drain(self) -> None:
        """Applies what the in-process queue still holds, as the loop would: a divergence
        rewinds and sets its entry aside, a step that raises is retried and set aside after
        `PSP_GUARD__POISON_ATTEMPTS`; then the final checkpoint holds everything accepted."""
        while True:
            async with self._exclusive:
                try:
                    entries = await self.queue.read(max_entries=256, block_ms=0)
                    if not entries:
                        return
                    await self.apply(entries)
                except Diverged as err:
                    await self._rewind_after_divergence(err)
                except QueueUnavailable as err:
                    log.warning("could not drain the queue before stopping: %s", err)
                    return
                except Exception:
                    log.exception("a training step failed while draining the queue")
                    await self._rewind_after_failure()

    async def write_checkpoints(self, stop: asyncio.Event) -> None:
        """The checkpoint writer: checkpoints whenever one is due, until `stop` is set (the
        trainer's `run` writes the final one)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._checkpoint_wanted.wait(), 0.1)
            self._checkpoint_wanted.clear()
            try:
                async with self._exclusive:
                    if self._checkpoint_due() and not self._needs_rewind:
                        await self._checkpoint()
            except WriterFenced as err:
                self._stop_writing(err)
                return
            except LeaseLapsed as err:
                log.warning("%s", err)
                await asyncio.sleep(1.0)
            self._checkpoint_written.set()

    async def _hand_to_checkpoint_writer(self) -> None:
        """Asks the writer for a checkpoint and waits for it (a while at most: the writer may
        be restarting), so that checkpoints follow the step cadence."""
        self._checkpoint_written.clear()
        self._checkpoint_wanted.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._checkpoint_written.wait(), 5)

    async def rollback(self, version: int) -> int:
        """Restores the weights and optimiser state of a kept checkpoint of `version`, as a new
        version above every one so far: versions only grow, so each names one set of weights.

        What was applied so far is checkpointed first, so its entries are acknowledged and
        counted, not replayed; the restored state is then written as the newest checkpoint,
        with `restored_from: version` in its metadata (and announced), and training continues
        from it.

        Raises:
            RollbackFailed: No kept checkpoint has that version.
        """
        async with self._exclusive:
            target = self.store.find_version(version)
            if target is None:
                kept = sorted({info.version for info in self.store.list()})
                raise RollbackFailed(
                    f"no kept checkpoint has model version {version}; kept versions: {kept}"
                )
            with self.store.sparing(target):
                try:
                    await self._checkpoint()
                except (OSError, LeaseLapsed) as err:
                    # Nothing was restored: what was applied so far stays the newest state.
                    raise RollbackNotDone(
                        f"the checkpoint before it could not be written ({err})"
                    ) from err
                newest = max([self.host.model_version, *(i.version for i in self.store.list())])
                await asyncio.to_thread(self.host.restore_as, target.path, newest + 1)
            await self._forget_deleted_contexts()  # deleted since: they stay deleted
            await self._write_checkpoint(self.ledger.stage(), {"restored_from": str(version)})
            return self.host.model_version

    async def apply(self, entries: Sequence[QueuedEntry]) -> None:
        """Learns from entries in id order and tells waiting producers."""
        fresh = [e for e in entries if not self.ledger.is_checkpointed(e.entry_id)]
        if not fresh:
            return
        self._in_flight = list(fresh)
        try:
            await self._apply_fresh(fresh)
        except Exception as err:
            self._needs_rewind = True
            self._failure = f"{type(err).__name__}: {err}"
            if isinstance(err, _STORE_ERRORS):  # an outage is no entry's fault
                self._in_flight = []
            raise
        self._in_flight = []
        self._suspects.difference_update(e.entry_id for e in fresh)
        for queued in fresh:
            self._attempts.pop(queued.entry_id, None)

    async def _apply_fresh(self, fresh: Sequence[QueuedEntry]) -> None:
        await self._learn_unknown_contexts(fresh)
        known = [e for e in fresh if self.host.has_context(e.entry.context_index)]
        for entry in fresh:
            if not self.host.has_context(entry.entry.context_index):
                log.warning(
                    "dropping entry %s of unknown context index %d",
                    entry.entry_id,
                    entry.entry.context_index,
                )
        batches = self._minibatches(known)
        results = await asyncio.to_thread(self.host.train_steps, batches)
        refused: dict[str, str] = {}
        shared_refusals = []
        for batch, result in zip(batches, results, strict=True):
            if result.applied:
                self._count_applied(batch, result)
            elif len(_entry_positions(batch)) > 1:
                shared_refusals.append(batch)
            else:
                self._count_refused(batch, result, known, refused)
        if shared_refusals:
            await self._step_entries_alone(shared_refusals, known, refused)
        self.ledger.progress.entry_ids.extend(e.entry_id for e in fresh)
        await self.applied.publish([e.entry_id for e in fresh], self.host.model_version, refused)

    async def _step_entries_alone(
        self,
        batches: Sequence[TrainRows],
        known: Sequence[QueuedEntry],
        refused: dict[str, str],
    ) -> None:
        """Steps the rows of each entry of refused shared minibatches on their own.

        A refused step changed nothing, so its rows can simply be stepped again: one tenant's
        rows that break a step must not cost the tenants it shared the step with theirs. Only
        an entry whose own rows are refused again is refused.
        """
        alone = [part for batch in batches for part in _split_by_entry(batch)]
        results = await asyncio.to_thread(self.host.train_steps, alone)
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
            counts = self.ledger.progress.counts[int(index)]
            counts[0] += int(mine.sum())
            counts[1] += int(correct[mine].sum())
        metrics.record_prequential(int(correct.sum()), len(correct))
        self.ledger.progress.steps += 1

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
            self.ledger.progress.counts[int(index)][2] += int(rows)
        reason = REFUSED_STEP.format(loss=result.loss)
        refused.update((known[p].entry_id, reason) for p in _entry_positions(batch))

    def _count_bounded(self, batch: TrainRows, result: StepResult, *, refused: bool) -> None:
        bounded = result.bounded
        if len(bounded):
            self._metrics.bounded_rows.inc(int(bounded.sum()))
        self.noisy.count(batch.indices, bounded, refused=refused)

    def _minibatches(self, entries: Sequence[QueuedEntry]) -> list[TrainRows]:
        """Cuts entries into `batch_size` minibatches.

        Coalescing shuffles the rows of all the entries read together before cutting, so that
        a step mixes the contexts that were queued instead of holding one client's block. The
        shuffle is seeded by the model seed and the first entry's id, so the same read gives
        the same minibatches. Per-entry mode cuts each entry in order on its own, so that
        replaying the same entries is bit-exact.
        """
        size = self.settings.training.batch_size
        coalesce = self.settings.training.coalesce
        numbered = list(enumerate(entries))
        groups = [numbered] if coalesce else [[n] for n in numbered]
        batches = []
        for group in groups:
            if not group:
                continue
            indices = np.concatenate(
                [np.full(e.entry.size, e.entry.context_index, dtype=np.int64) for _, e in group]
            )
            positions = np.concatenate(
                [np.full(e.entry.size, position, dtype=np.int64) for position, e in group]
            )
            inputs = np.concatenate([e.entry.inputs for _, e in group])
            labels = np.concatenate([e.entry.labels for _, e in group])
            if coalesce and len(group) > 1:
                seed = derive_seed("shuffle", self.settings.model.seed, group[0][1].entry_id)
                order = np.random.default_rng(seed).permutation(len(labels))
                indices, inputs, labels = indices[order], inputs[order], labels[order]
                positions = positions[order]
            for start in range(0, len(labels), size):
                window = slice(start, start + size)
                batches.append(
                    TrainRows(indices[window], inputs[window], labels[window], positions[window])
                )
        return batches

    async def _learn_unknown_contexts(self, entries: Sequence[QueuedEntry]) -> None:
        """Adds contexts that other processes registered since this one last looked."""
        wanted = {e.entry.context_index for e in entries}
        if all(self.host.has_context(index) for index in wanted):
            return
        shard = self.settings.queue.shard
        newer = await self.registry.context_definitions(self.host.max_index, shard)
        await asyncio.to_thread(self.host.add_contexts, newer)
        if not all(self.host.has_context(index) for index in wanted):
            # A registration with a lower index may have committed after a higher one.
            every = await self.registry.context_definitions(shard=shard)
            await asyncio.to_thread(self.host.add_contexts, every)

    async def _forget_deleted_contexts(self) -> None:
        """Forgets every context the learner remembers that is no longer live (after a load or
        a rollback: the registry, not a checkpoint, says which contexts are deleted)."""
        remembered = await asyncio.to_thread(self.host.remembered_contexts)
        if not remembered:
            return
        live = {index for _, index in await self.registry.live_keys()}
        deleted = remembered - live
        if deleted:
            await asyncio.to_thread(self.host.forget_contexts, deleted)
            self._unscrubbed |= deleted

    async def _forget_retired_contexts(self) -> None:
        """Forgets the contexts deleted since the last look (any process may delete): their
        replay rows, input statistics and bank rows. Indices are never reused, so forgetting
        one twice is harmless."""
        self._retirements_looked = time.monotonic()
        started = datetime.now(UTC)
        since = self._retirements_checked - RETIREMENT_OVERLAP
        try:
            retired = await self.registry.retired_since(since)
        except RegistryUnavailable as err:
            log.warning("cannot check for deleted contexts, will retry: %s", err)
            return
        indices = {index for _, index in retired}
        await asyncio.to_thread(self.host.forget_contexts, indices)
        # The look-back overlaps the last one: only newly deleted contexts call for a scrub.
        self._unscrubbed |= indices - self._forgotten
        self._forgotten |= indices
        self._retirements_checked = started

    # Checkpoints ----------------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        every = self.settings.checkpoint
        elapsed = time.monotonic() - self._last_checkpoint_at
        progress = self.ledger.progress
        if self._unscrubbed:
            return True  # kept files still hold a deleted context's rows
        if not progress.entry_ids:
            return self.ledger.unsettled and elapsed >= every.every_seconds
        return progress.steps >= every.every_steps or elapsed >= every.every_seconds

    async def checkpoint(self) -> None:
        """Checkpoints now, between steps (what an operator or a test asks for)."""
        async with self._exclusive:
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Writes a durable checkpoint, advances the registry from it, then acknowledges.
        The caller holds `_exclusive`.

        The checkpoint carries every count the registry has not yet taken, so if the registry
        or the queue is down now, a later checkpoint (or the next start-up) still delivers
        them exactly once. A checkpoint that fails to write changes nothing (see
        `service.training.ledger`).
        """
        if self.lease is not None:
            self.lease.check()
        await self._forget_retired_contexts()
        if not self.ledger.progress.entry_ids and self.store.latest() is not None:
            self._last_checkpoint_at = time.monotonic()
        else:
            staged = self.ledger.stage()
            await self._write_checkpoint(staged)
            self.ledger.adopt(staged)
        await self._settle()
        await self._scrub_kept_checkpoints()

    async def _scrub_kept_checkpoints(self) -> None:
        """Rewrites every kept checkpoint that still holds rows or input statistics of a
        deleted context, in place (same version, same weights). The learner forgot them
        first, so no later checkpoint holds them either. The caller holds `_exclusive`, so no
        checkpoint is written or pruned meanwhile."""
        if not self._unscrubbed:
            return
        deleted, self._unscrubbed = self._unscrubbed, set()
        for info in self.store.list():
            dropped = await asyncio.to_thread(forget_contexts_in, info.path, deleted)
            if dropped:
                log.info("removed %d rows of deleted contexts from %s", dropped, info.path.name)

    async def _write_checkpoint(self, staged: Staged, extra: dict[str, str] | None = None) -> None:
        """Saves the current state as `staged` says (and `extra` metadata), fsynced, and
        announces it."""
        if not self.host.healthy:
            raise RuntimeError("refusing to checkpoint weights that failed their health check")
        metadata = {**staged.metadata(), **(extra or {})}
        installed_training_hooks().check_checkpoint_write()
        started = time.perf_counter()
        target = self.store.next(self.host.model_version)
        await asyncio.to_thread(self.host.save, target.path, metadata)
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        self._last_checkpoint_at = time.monotonic()
        self.store.prune()
        if self.announce is not None:
            await self.announce(target)

    async def _settle(self) -> None:
        """Moves checkpointed counts into the registry, one checkpoint's batch at a time and
        in order, then acknowledges checkpointed entries."""
        ledger = self.ledger
        if ledger.checkpointed_id is None:
            return
        try:
            while ledger.batches:
                batch = ledger.batches[0]
                await self.registry.commit_training(
                    shard=self.settings.queue.shard,
                    last_entry_id=batch.last_entry_id,
                    counts=batch.counts,
                    writer_token=self.lease.token if self.lease is not None else None,
                )
                ledger.batches.pop(0)
        except RegistryUnavailable as err:
            log.warning("registry unavailable, counts kept for the next checkpoint: %s", err)
        try:
            if ledger.unacked:
                await self.queue.ack(ledger.unacked)
                ledger.unacked = []
                await self.queue.trim_below(ledger.checkpointed_id)
        except QueueUnavailable as err:
            log.warning("queue unavailable, acknowledgements retried later: %s", err)

    async def _report_queue(self) -> None:
        stats = await self.queue.stats()
        self._metrics.queue_depth.set(stats.pending_examples)
        self._metrics.queue_lag.set(stats.oldest_age_seconds)


def _entry_positions(batch: TrainRows) -> list[int]:
    """The positions of the entries whose rows the minibatch holds."""
    if batch.entry_positions is None:
        return []
    return [int(p) for p in np.unique(batch.entry_positions)]


def _split_by_entry(batch: TrainRows) -> list[TrainRows]:
    """The minibatch's rows, one minibatch per entry, in the order of the entries."""
    positions = batch.entry_positions
    assert positions is not None
    parts = []
    for position in _entry_positions(batch):
        mine = positions == position
        parts.append(
            TrainRows(batch.indices[mine], batch.inputs[mine], batch.labels[mine], positions[mine])
        )
    return parts
