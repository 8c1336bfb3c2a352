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

This module holds the loops and the entry points; the work is done by `steps` (learning),
`checkpointing`, `recovery` and `quarantine` (rewinds and poison entries) and
`deleted_contexts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from service.checkpoints.reserved_versions import ReservedVersions
from service.checkpoints.rollback import RollbackFailed, RollbackNotDone
from service.checkpoints.rollback_inbox import ControlInbox
from service.checkpoints.store import CheckpointInfo, CheckpointStore
from service.model.divergence import Diverged
from service.model.host import ModelHost, RestoreNeeded
from service.queue.applied import AppliedNotices
from service.queue.base import QueuedEntry, QueueUnavailable, TrainQueue
from service.registry.store import RegistryStore
from service.settings import Settings
from service.training.checkpointing import Checkpointer
from service.training.deleted_contexts import DeletedContexts
from service.training.fencing import WriterFenced
from service.training.ledger import Ledger
from service.training.noisy_contexts import NoisyContexts
from service.training.quarantine import STORE_ERRORS, Quarantine
from service.training.recovery import Recovery
from service.training.steps import StepRunner
from service.training.trainer_metrics import TrainerMetrics
from service.training.writer_lease import LeaseLapsed, WriterLease

log = logging.getLogger(__name__)


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
        reserved: ReservedVersions | None = None,
    ) -> None:
        self.host = host
        self._reserved = reserved
        self.lease = lease
        self.queue = queue
        self.store = store
        self.settings = settings
        self.control = control
        # Rollbacks arrive from the API while the loop runs; one thing changes the weights at once.
        self._exclusive = asyncio.Lock()
        self.ledger = Ledger()
        self._metrics = TrainerMetrics.of_shard(settings.queue.shard)
        self.noisy = NoisyContexts(settings.queue.shard, registry.live_keys)
        host.watch_divergence(settings.guard)
        self._deleted = DeletedContexts(host, registry, store, settings.registry_poll_seconds)
        self._steps = StepRunner(
            host=host,
            registry=registry,
            applied=applied,
            ledger=self.ledger,
            settings=settings,
            trainer_metrics=self._metrics,
            noisy=self.noisy,
        )
        self._checkpointer = Checkpointer(
            host=host,
            store=store,
            registry=registry,
            queue=queue,
            ledger=self.ledger,
            settings=settings,
            deleted=self._deleted,
            lease=lease,
            announce=announce,
        )
        self._quarantine = Quarantine(queue, applied, host, settings.guard, self._metrics)
        self._recovery = self._recovery_over(queue, reserved)
        self._checkpoint_wanted = asyncio.Event()
        self._checkpoint_written = asyncio.Event()

    def _recovery_over(self, queue: TrainQueue, reserved: ReservedVersions | None) -> Recovery:
        """What brings this trainer back to its newest checkpoint; it replays through `apply`."""
        return Recovery(
            host=self.host,
            queue=queue,
            store=self.store,
            ledger=self.ledger,
            checkpointer=self._checkpointer,
            deleted=self._deleted,
            quarantine=self._quarantine,
            trainer_metrics=self._metrics,
            apply=self.apply,
            reserved=reserved,
        )

    async def recover(self) -> None:
        """Loads the newest checkpoint and re-applies what it does not hold yet (at start-up).

        A replayed entry that breaks the weights is set aside and the recovery starts over.
        """
        await self._recovery.recover()

    async def rewind_after_crash(self) -> None:
        """Brings the trainer back to its newest checkpoint after its loop crashed (called by
        the supervisor before restarting `run`)."""
        async with self._exclusive:
            await self._recovery.rewind_after_failure()

    async def apply(self, entries: Sequence[QueuedEntry]) -> None:
        """Learns from entries in id order and tells waiting producers."""
        fresh = [e for e in entries if not self.ledger.is_checkpointed(e.entry_id)]
        if not fresh:
            return
        with self._quarantine.applying(fresh):
            await self._steps.learn(fresh)
        await self._cover_versions()

    async def _cover_versions(self) -> None:
        """Keeps the reserved versions ahead of the ones served (role `all`)."""
        version = self.host.model_version
        if self._reserved is not None and not self._reserved.covers(version):
            await asyncio.to_thread(self._reserved.cover, version)

    async def checkpoint(self) -> None:
        """Checkpoints now, between steps (what an operator or a test asks for)."""
        async with self._exclusive:
            await self._checkpointer.checkpoint()

    async def rollback(self, version: int) -> int:
        """Restores the weights and optimiser state of a kept checkpoint of `version`, as a new
        version above every one so far: versions only grow, so each names one set of weights.

        What was applied so far is checkpointed first, so its entries are acknowledged and
        counted, not replayed; the restored state is then written as the newest checkpoint,
        with `restored_from: version` in its metadata (and announced), and training continues
        from it.

        Raises:
            RollbackFailed: No kept checkpoint has that version.
            RollbackNotDone: The checkpoint before it, or the one of the restored state, could
                not be written; the model is as it was before the call.
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
                    await self._checkpointer.checkpoint()
                except (OSError, LeaseLapsed) as err:
                    # Nothing was restored: what was applied so far stays the newest state.
                    raise RollbackNotDone(
                        f"the checkpoint before it could not be written ({err})"
                    ) from err
                newest = max([self.host.model_version, *(i.version for i in self.store.list())])
                await asyncio.to_thread(self.host.restore_as, target.path, newest + 1)
            await self._cover_versions()
            await self._deleted.forget_not_live()  # deleted since: they stay deleted
            restored = {"restored_from": str(version)}
            try:
                await self._checkpointer.write(self.ledger.stage(), restored)
            except (OSError, LeaseLapsed) as err:
                # Undone, or a restart would undo it: back to the checkpoint written above.
                await self._recovery.recover()
                raise RollbackNotDone(
                    f"the restored state could not be written ({err}); the model is back where "
                    "it was"
                ) from err
            return self.host.model_version

    # The loops ------------------------------------------------------------------------------

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
                await self._turn()
            except STORE_ERRORS as err:
                if self._quarantine.needs_rewind:
                    raise  # the supervisor rewinds once the stores answer again
                log.warning("trainer waiting for its stores: %s", err)
                await asyncio.sleep(0.5)
        if self.lease is not None:
            self.lease.raise_if_fenced()
        if not self.queue.durable:  # what a durable queue holds is simply trained next time
            await self._drain()
        async with self._exclusive:
            await self._checkpointer.checkpoint()
            if self._reserved is not None:  # nothing above the final checkpoint was served
                await asyncio.to_thread(self._reserved.settle, self.host.model_version)

    async def _turn(self) -> None:
        """One pass of the loop: apply what the queue holds, then what falls due."""
        entries = await self.queue.read(max_entries=64, block_ms=100)
        async with self._exclusive:
            try:
                await self.apply(entries)
            except Diverged as err:
                await self._recovery.rewind_after_divergence(err)
        if self._checkpointer.due():
            await self._hand_to_checkpoint_writer()
        if self._deleted.look_due:
            async with self._exclusive:  # the bank of an idle writer keeps up too
                await self._deleted.forget_retired()
        if self.control is not None:
            await self.control.serve_one(self)
        await self._report_queue()
        await self.noisy.report_if_due()

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
                    await self._recovery.rewind_after_divergence(err)
                except QueueUnavailable as err:
                    log.warning("could not drain the queue before stopping: %s", err)
                    return
                except Exception:
                    log.exception("a training step failed while draining the queue")
                    await self._recovery.rewind_after_failure()

    async def write_checkpoints(self, stop: asyncio.Event) -> None:
        """The checkpoint writer: checkpoints whenever one is due, until `stop` is set (the
        trainer's `run` writes the final one)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._checkpoint_wanted.wait(), 0.1)
            self._checkpoint_wanted.clear()
            try:
                async with self._exclusive:
                    if self._checkpointer.due() and not self._quarantine.needs_rewind:
                        await self._checkpointer.checkpoint()
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

    async def _report_queue(self) -> None:
        stats = await self.queue.stats()
        self._metrics.queue_depth.set(stats.pending_examples)
        self._metrics.queue_lag.set(stats.oldest_age_seconds)
