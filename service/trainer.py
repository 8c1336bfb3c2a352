"""The single writer: queue entries -> minibatches -> psp_core steps -> checkpoints -> acks.

Exactly-once (docs/design.md): an entry is acknowledged only after a durable checkpoint holds its
effect. Each checkpoint records the id of the last entry it contains and the per-context
counts added since the previous checkpoint; the registry's counters are then advanced from
that checkpoint in one transaction guarded by the same id, so a crash at any point neither
loses nor doubles an example. On start-up the trainer loads the newest checkpoint, finishes
its registry update if the crash came before it, skips pending entries already inside it and
applies the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from redis.exceptions import RedisError

from service import metrics
from service.checkpoints import CheckpointInfo, CheckpointStore
from service.control import ControlInbox, RollbackFailed
from service.model_host import ModelHost, TrainRows
from service.queue.base import QueuedEntry, QueueUnavailable, TrainQueue, entry_id_key
from service.registry.store import RegistryStore, RegistryUnavailable
from service.settings import Settings

log = logging.getLogger(__name__)


REFUSED_STEP = (
    "the trainer refused to learn this batch: the loss or a gradient of its step was not finite "
    "(loss {loss:g}); the weights did not change, so check the rows for extreme values"
)


def _new_counts() -> list[int]:
    """Per context: [examples learned, of those right before learning, examples refused]."""
    return [0, 0, 0]


@dataclass
class _Progress:
    """What has been applied since the last checkpoint."""

    entry_ids: list[str] = field(default_factory=list)
    counts: dict[int, list[int]] = field(default_factory=lambda: defaultdict(_new_counts))
    steps: int = 0


class Trainer:
    """Consumes the train queue and is the only code that changes the weights."""

    def __init__(
        self,
        *,
        host: ModelHost,
        queue: TrainQueue,
        store: CheckpointStore,
        registry: RegistryStore,
        settings: Settings,
        announce: Callable[[CheckpointInfo], Awaitable[None]] | None = None,
        control: ControlInbox | None = None,
    ) -> None:
        self.host = host
        self.queue = queue
        self.store = store
        self.registry = registry
        self.settings = settings
        self.announce = announce
        self.control = control
        # Rollbacks arrive from the API while the loop runs; one thing changes the weights at once.
        self._exclusive = asyncio.Lock()
        self.checkpointed_id: str | None = None
        self._progress = _Progress()
        # Checkpointed but not yet in the registry / not yet acknowledged (either store was down).
        self._uncommitted_counts: dict[int, list[int]] = defaultdict(_new_counts)
        self._unacked: list[str] = []
        self._last_checkpoint_at = time.monotonic()

    # Start-up -------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Loads the newest checkpoint and re-applies what it does not hold yet."""
        latest = self.store.latest()
        if latest is not None:
            metadata = await asyncio.to_thread(self.host.load, latest.path)
            self.checkpointed_id = metadata.get("last_entry_id") or None
            for index, counts in _decode_counts(metadata.get("counts", "{}")).items():
                self._uncommitted_counts[index] = counts
            await self._settle()  # finishes the registry update if a crash came before it
        pending = await self.queue.pending()
        done = [p.entry_id for p in pending if self._is_checkpointed(p.entry_id)]
        await self.queue.ack(done)
        await self.apply([p for p in pending if not self._is_checkpointed(p.entry_id)])

    def _is_checkpointed(self, entry_id: str) -> bool:
        return self.checkpointed_id is not None and entry_id_key(entry_id) <= entry_id_key(
            self.checkpointed_id
        )

    # The loop -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Trains until `stop` is set, then drains the queue into a final checkpoint.

        Call `recover` first.
        """
        while not stop.is_set():
            try:
                entries = await self.queue.read(max_entries=64, block_ms=100)
                async with self._exclusive:
                    await self.apply(entries)
                    if self._checkpoint_due():
                        await self.checkpoint()
                if self.control is not None:
                    await self.control.serve_one(self)
                await self._report_queue()
            except (QueueUnavailable, RegistryUnavailable, RedisError, OSError) as err:
                log.warning("trainer waiting for its stores: %s", err)
                await asyncio.sleep(0.5)
        if not self.queue.durable:  # what a durable queue holds is simply trained next time
            try:
                while entries := await self.queue.read(max_entries=256, block_ms=0):
                    await self.apply(entries)
            except QueueUnavailable as err:
                log.warning("could not drain the queue before stopping: %s", err)
        async with self._exclusive:
            await self.checkpoint()

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
            await self.checkpoint()
            newest = max([self.host.model_version, *(i.version for i in self.store.list())])
            await asyncio.to_thread(self.host.restore_as, target.path, newest + 1)
            await self._write_checkpoint({"restored_from": str(version)})
            return self.host.model_version

    async def apply(self, entries: Sequence[QueuedEntry]) -> None:
        """Learns from entries in id order and tells waiting producers."""
        fresh = [e for e in entries if not self._is_checkpointed(e.entry_id)]
        if not fresh:
            return
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
        results = await asyncio.to_thread(lambda: [self.host.train_step(b) for b in batches])
        refused: dict[str, str] = {}
        for batch, result in zip(batches, results, strict=True):
            if not result.applied:
                self._count_refused(batch)
                reason = REFUSED_STEP.format(loss=result.loss)
                positions = () if batch.entry_positions is None else batch.entry_positions
                refused.update((known[int(p)].entry_id, reason) for p in np.unique(positions))
                continue
            correct = result.correct.numpy()
            for index in np.unique(batch.indices):
                mine = batch.indices == index
                counts = self._progress.counts[int(index)]
                counts[0] += int(mine.sum())
                counts[1] += int(correct[mine].sum())
            metrics.record_prequential(int(correct.sum()), len(correct))
            self._progress.steps += 1
        self._progress.entry_ids.extend(e.entry_id for e in fresh)
        await self.queue.publish_applied(
            [e.entry_id for e in fresh], self.host.model_version, refused
        )

    def _count_refused(self, batch: TrainRows) -> None:
        """Counts a refused step's rows as refused, never as seen, per context."""
        indices, per_context = np.unique(batch.indices, return_counts=True)
        for index, rows in zip(indices, per_context, strict=True):
            self._progress.counts[int(index)][2] += int(rows)

    def _minibatches(self, entries: Sequence[QueuedEntry]) -> list[TrainRows]:
        """Coalesces entries of many contexts into `batch_size` minibatches, or, in per-entry
        mode, splits each entry on its own so that replaying the same entries is bit-exact."""
        size = self.settings.training.batch_size
        numbered = list(enumerate(entries))
        groups = [numbered] if self.settings.training.coalesce else [[n] for n in numbered]
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
        self.host.add_contexts(
            await self.registry.context_definitions(after_index=self.host.max_index)
        )
        if not all(self.host.has_context(index) for index in wanted):
            # A registration with a lower index may have committed after a higher one.
            self.host.add_contexts(await self.registry.context_definitions())

    # Checkpoints ----------------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        every = self.settings.checkpoint
        elapsed = time.monotonic() - self._last_checkpoint_at
        if not self._progress.entry_ids:
            unsettled = bool(self._uncommitted_counts or self._unacked)
            return unsettled and elapsed >= every.every_seconds
        return self._progress.steps >= every.every_steps or elapsed >= every.every_seconds

    async def checkpoint(self) -> None:
        """Writes a durable checkpoint, advances the registry from it, then acknowledges.

        The checkpoint carries every count the registry has not yet taken, so if the registry
        or the queue is down now, a later checkpoint (or the next start-up) still delivers
        them exactly once.
        """
        progress = self._progress
        if not progress.entry_ids and self.store.latest() is not None:
            self._last_checkpoint_at = time.monotonic()
            await self._settle()
            return
        for index, counts in progress.counts.items():
            totals = self._uncommitted_counts[index]
            for field_at, count in enumerate(counts):
                totals[field_at] += count
        self._unacked.extend(progress.entry_ids)
        if progress.entry_ids:
            self.checkpointed_id = max(progress.entry_ids, key=entry_id_key)
        self._progress = _Progress()
        await self._write_checkpoint()
        await self._settle()

    async def _write_checkpoint(self, extra: dict[str, str] | None = None) -> None:
        """Saves the current state with what the registry has not taken yet (and `extra`
        metadata), and announces it."""
        metadata = {
            "last_entry_id": self.checkpointed_id or "",
            "counts": json.dumps({str(k): v for k, v in self._uncommitted_counts.items()}),
            **(extra or {}),
        }
        started = time.perf_counter()
        target = self.store.next(self.host.model_version)
        await asyncio.to_thread(self.host.save, target.path, metadata)
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        self._last_checkpoint_at = time.monotonic()
        self.store.prune()
        if self.announce is not None:
            await self.announce(target)

    async def _settle(self) -> None:
        """Moves checkpointed counts into the registry and acknowledges checkpointed entries."""
        if self.checkpointed_id is None:
            return
        try:
            if self._uncommitted_counts:
                await self.registry.commit_training(
                    shard=self.settings.queue.shard,
                    last_entry_id=self.checkpointed_id,
                    counts={k: (v[0], v[1], v[2]) for k, v in self._uncommitted_counts.items()},
                )
                self._uncommitted_counts.clear()
        except RegistryUnavailable as err:
            log.warning("registry unavailable, counts kept for the next checkpoint: %s", err)
        try:
            if self._unacked:
                await self.queue.ack(self._unacked)
                self._unacked = []
                await self.queue.trim_below(self.checkpointed_id)
        except QueueUnavailable as err:
            log.warning("queue unavailable, acknowledgements retried later: %s", err)

    async def _report_queue(self) -> None:
        stats = await self.queue.stats()
        metrics.QUEUE_DEPTH.set(stats.pending_examples)
        metrics.QUEUE_LAG.set(stats.oldest_age_seconds)


def _decode_counts(text: str) -> dict[int, list[int]]:
    """A checkpoint's counts; those written before refusals were counted have two fields."""
    return {int(k): [*map(int, v), 0][:3] for k, v in json.loads(text).items()}
