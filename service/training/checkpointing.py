"""Writing the trainer's checkpoints and settling what they hold: the registry's counters
advance from a durable checkpoint, then its entries are acknowledged (docs/design.md,
"Exactly-once training")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from service import metrics
from service.checkpoints.store import CheckpointInfo, CheckpointStore
from service.model.host import ModelHost
from service.model.training_hooks import installed_training_hooks
from service.queue.base import QueueUnavailable, TrainQueue
from service.registry.store import RegistryStore, RegistryUnavailable
from service.settings import Settings
from service.training.deleted_contexts import DeletedContexts
from service.training.ledger import Ledger, Staged
from service.training.writer_lease import WriterLease

log = logging.getLogger(__name__)


class Checkpointer:
    """Writes checkpoints of the host's state as the ledger stages them, and settles them.

    Writes run under the trainer's lock, or at start-up before the loops do, so nothing
    changes the weights meanwhile.
    """

    def __init__(
        self,
        *,
        host: ModelHost,
        store: CheckpointStore,
        registry: RegistryStore,
        queue: TrainQueue,
        ledger: Ledger,
        settings: Settings,
        deleted: DeletedContexts,
        lease: WriterLease | None,
        announce: Callable[[CheckpointInfo], Awaitable[None]] | None,
    ) -> None:
        self._host = host
        self._store = store
        self._registry = registry
        self._queue = queue
        self._ledger = ledger
        self._settings = settings
        self._deleted = deleted
        self._lease = lease
        self._announce = announce
        self._last_written_at = time.monotonic()

    def due(self) -> bool:
        """Whether the step count or the time since the last checkpoint calls for one."""
        every = self._settings.checkpoint
        elapsed = time.monotonic() - self._last_written_at
        progress = self._ledger.progress
        if self._deleted.scrub_due:
            return True  # kept files still hold a deleted context's rows
        if not progress.entry_ids:
            return self._ledger.unsettled and elapsed >= every.every_seconds
        return progress.steps >= every.every_steps or elapsed >= every.every_seconds

    async def checkpoint(self) -> None:
        """Writes a durable checkpoint, advances the registry from it, then acknowledges.

        The checkpoint carries every count the registry has not yet taken, so if the registry
        or the queue is down now, a later checkpoint (or the next start-up) still delivers
        them exactly once. A checkpoint that fails to write changes nothing (see
        `service.training.ledger`).
        """
        if self._lease is not None:
            self._lease.check()
        await self._deleted.forget_retired()
        if not self._ledger.progress.entry_ids and self._store.latest() is not None:
            self._last_written_at = time.monotonic()
        else:
            staged = self._ledger.stage()
            await self.write(staged)
            self._ledger.adopt(staged)
        await self.settle()
        await self._deleted.scrub_kept_checkpoints()

    async def write(self, staged: Staged, extra: dict[str, str] | None = None) -> None:
        """Saves the current state as `staged` says (and `extra` metadata), fsynced, prunes
        the oldest kept checkpoints and announces it."""
        if not self._host.healthy:
            raise RuntimeError("refusing to checkpoint weights that failed their health check")
        metadata = {**staged.metadata(), **(extra or {})}
        installed_training_hooks().check_checkpoint_write()
        started = time.perf_counter()
        target = self._store.next(self._host.model_version)
        await asyncio.to_thread(self._host.save, target.path, metadata)
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        self._last_written_at = time.monotonic()
        self._store.prune()
        if self._announce is not None:
            await self._announce(target)

    async def settle(self) -> None:
        """Moves checkpointed counts into the registry, one checkpoint's batch at a time and
        in order, then acknowledges checkpointed entries."""
        ledger = self._ledger
        if ledger.checkpointed_id is None:
            return
        try:
            while ledger.batches:
                batch = ledger.batches[0]
                await self._registry.commit_training(
                    shard=self._settings.queue.shard,
                    last_entry_id=batch.last_entry_id,
                    counts=batch.counts,
                    writer_token=self._lease.token if self._lease is not None else None,
                )
                ledger.batches.pop(0)
        except RegistryUnavailable as err:
            log.warning("registry unavailable, counts kept for the next checkpoint: %s", err)
        try:
            if ledger.unacked:
                await self._queue.ack(ledger.unacked)
                ledger.unacked = []
                await self._queue.trim_below(ledger.checkpointed_id)
        except QueueUnavailable as err:
            log.warning("queue unavailable, acknowledgements retried later: %s", err)
