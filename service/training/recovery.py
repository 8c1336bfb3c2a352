"""Bringing the trainer back to its newest checkpoint: at start-up, and after an apply that
raised or broke the weights (docs/design.md, "Exactly-once training").

A rewind does what a start-up does: it loads the newest checkpoint, finishes its registry
update, and applies again the pending entries the checkpoint does not hold, except that the
entries of the failed apply are applied one at a time (`service.training.quarantine`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from service.checkpoints.reserved_versions import ReservedVersions
from service.checkpoints.store import CheckpointStore
from service.model.divergence import Diverged
from service.model.host import ModelHost
from service.queue.base import QueuedEntry, TrainQueue
from service.training.checkpointing import Checkpointer
from service.training.deleted_contexts import DeletedContexts
from service.training.ledger import Ledger
from service.training.quarantine import Quarantine
from service.training.trainer_metrics import TrainerMetrics

log = logging.getLogger(__name__)


class Recovery:
    """Restores the newest checkpoint and replays what it does not hold through `apply`.

    Rewinds run under the trainer's lock; `recover` at start-up runs before the loops do.
    """

    def __init__(
        self,
        *,
        host: ModelHost,
        queue: TrainQueue,
        store: CheckpointStore,
        ledger: Ledger,
        checkpointer: Checkpointer,
        deleted: DeletedContexts,
        quarantine: Quarantine,
        trainer_metrics: TrainerMetrics,
        apply: Callable[[Sequence[QueuedEntry]], Awaitable[None]],
        reserved: ReservedVersions | None = None,
    ) -> None:
        self._host = host
        self._queue = queue
        self._store = store
        self._ledger = ledger
        self._checkpointer = checkpointer
        self._deleted = deleted
        self._quarantine = quarantine
        self._metrics = trainer_metrics
        self._apply = apply
        self._reserved = reserved

    async def recover(self) -> None:
        """Loads the newest checkpoint and re-applies what it does not hold yet.

        A replayed entry that breaks the weights is set aside and the recovery starts over.
        """
        while True:
            try:
                await self._recover_once()
                return
            except Diverged as err:
                await self._quarantine.set_aside_after(f"training on it {err}", poison_now=True)
                self._ledger.forget_unsaved()

    async def rewind_after_failure(self) -> None:
        """Rewinds after an apply raised; its entry is set aside once it has failed alone
        `poison_attempts` times."""
        reason = self._quarantine.failure or "its training step failed"
        await self._quarantine.set_aside_after(reason, poison_now=False)
        self._ledger.forget_unsaved()
        await self.recover()

    async def rewind_after_divergence(self, err: Diverged) -> None:
        """Rewinds after an apply broke the weights; an entry that did so alone is set aside."""
        latest = self._store.latest()
        log.error(
            "training diverged (%s); restoring checkpoint %s and replaying %d entries alone",
            err,
            latest.path.name if latest else "none",
            self._quarantine.in_flight,
        )
        self._metrics.divergences.inc()
        await self._quarantine.set_aside_after(f"training on it {err}", poison_now=True)
        self._ledger.forget_unsaved()
        await self.recover()

    async def _recover_once(self) -> None:
        latest = self._store.latest()
        if latest is None:
            # Version 0 on disk is the healthy state a divergence before the first checkpoint
            # goes back to.
            await self._checkpointer.write(self._ledger.stage())
        else:
            # A writer serving its live weights names the restored state above every version
            # it has served; the others keep the checkpoint's.
            version = self._reserved.restored(latest.version) if self._reserved else None
            metadata = await asyncio.to_thread(self._host.load, latest.path, version)
            self._ledger.restore(metadata)
            await (
                self._checkpointer.settle()
            )  # finishes the registry update if a crash came before it
        if self._reserved is not None:  # before any version above it can be served
            await asyncio.to_thread(self._reserved.cover, self._host.model_version)
        await self._deleted.forget_not_live()
        self._quarantine.needs_rewind = False
        pending = await self._queue.pending()
        done = [p.entry_id for p in pending if self._ledger.is_checkpointed(p.entry_id)]
        await self._queue.ack(done)
        todo = [p for p in pending if not self._ledger.is_checkpointed(p.entry_id)]
        for group in self._quarantine.isolating_suspects(todo):
            await self._apply(group)
