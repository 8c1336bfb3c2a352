"""The parts of one shard that every role holds, and how they are built: a superposed model
with its own train queue, applied notices, checkpoint store and predict batcher.

Every shard is built from `Settings.for_shard`, so shard 0 keeps the configured model seed, the
checkpoint directory and the Redis keys of a one-model deployment. What each role adds to the
parts (a trainer, or a follower of the worker) is in `service.runtime.shard_roles`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from service.checkpoints.store import CheckpointStore
from service.model.host import ModelHost, resolve_device
from service.model.step_client import ChildStepHost, steps_run_in_child
from service.model.step_process import StepProcess
from service.model.training_hooks import installed_training_hooks
from service.queue.applied import AppliedNotices
from service.queue.base import TrainQueue
from service.queue.keys import ShardKeys
from service.queue.lanes import ShardQueue
from service.queue.memory_applied import InProcessAppliedNotices
from service.queue.memory_stream import IdempotencyMemory, InProcessQueue
from service.serving.batcher import PredictBatcher
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ShardParts:
    """The parts of one shard that this process holds whatever its role.

    Attributes:
        settings: The shard's own settings (`Settings.for_shard`).
    """

    settings: Settings
    host: ModelHost
    queue: TrainQueue
    applied: AppliedNotices
    store: CheckpointStore
    batcher: PredictBatcher

    @classmethod
    def build(
        cls,
        settings: Settings,
        idempotency: IdempotencyMemory | None = None,
        step_process: StepProcess | None = None,
    ) -> ShardParts:
        """The model (freshly initialised), the queue, the checkpoint store and the batcher of
        the shard `settings` names; the batcher is not started yet. The in-process queues of
        one process share `idempotency`; when its steps run in a child, the shards of one
        process share `step_process` (`new_step_process`)."""
        host = _make_host(settings, step_process)
        queue, applied = make_queue_and_notices(settings, idempotency)
        batcher = PredictBatcher(
            host, max_rows=settings.batcher.max_rows, max_delay_us=settings.batcher.max_delay_us
        )
        store = CheckpointStore(settings.checkpoint_dir, settings.checkpoint.keep)
        return cls(settings, host, queue, applied, store, batcher)

    @property
    def number(self) -> int:
        return self.settings.queue.shard

    @property
    def keys(self) -> ShardKeys:
        return ShardKeys(self.settings.key_prefix, self.number)

    @property
    def lane(self) -> ShardQueue:
        return ShardQueue(self.queue, self.applied)

    def task_name(self, name: str) -> str:
        """A background task's name: shard 0's keep the names of a one-model deployment."""
        return name if self.number == 0 else f"{name}-shard-{self.number}"

    async def close(self) -> None:
        await self.batcher.stop()
        await self.applied.close()
        await self.queue.close()
        await asyncio.to_thread(self.host.close)


def make_queue_and_notices(
    settings: Settings, idempotency: IdempotencyMemory | None = None
) -> tuple[TrainQueue, AppliedNotices]:
    """The train queue and its applied notices of the shard `settings.queue.shard`: on Redis
    (sharing one connection) when `PSP_REDIS_URL` is set, else in this process (remembering
    idempotency keys in `idempotency`, which the process's shards share)."""
    if settings.redis_url:
        from service.queue.redis_applied import RedisAppliedNotices
        from service.queue.redis_link import RedisLink
        from service.queue.redis_stream import RedisStreamQueue

        link = RedisLink(settings.redis_url)
        queue = RedisStreamQueue(
            link,
            shard=settings.queue.shard,
            # One writer per shard, under a stable name, so that after a restart (or a kill -9)
            # it finds its own unacknowledged entries at once instead of waiting to claim them.
            consumer=f"trainer-{settings.queue.shard}",
            max_pending_examples=settings.queue.max_pending_examples,
            max_pending_per_context=settings.queue.max_pending_per_context,
            retry_after_seconds=settings.queue.retry_after_seconds,
            key_prefix=settings.key_prefix,
        )
        applied = RedisAppliedNotices(
            link, shard=settings.queue.shard, key_prefix=settings.key_prefix
        )
        return queue, applied
    in_process = InProcessQueue(
        max_pending_examples=settings.queue.max_pending_examples,
        max_pending_per_context=settings.queue.max_pending_per_context,
        retry_after_seconds=settings.queue.retry_after_seconds,
        idempotency=idempotency,
    )
    return in_process, InProcessAppliedNotices()


def new_step_process(settings: Settings) -> StepProcess | None:
    """The one child process that will run the steps of every shard of this process, when
    they run in a child (role `all` on the CPU, unless told otherwise)."""
    return StepProcess() if steps_run_in_child(settings) else None


def _make_host(settings: Settings, step_process: StepProcess | None) -> ModelHost:
    """The model, freshly initialised, with the step watchers of the process's training hooks;
    in role `all` on the CPU, with its steps in a child process unless told otherwise (in
    `step_process` when given, else in one of its own)."""
    hooks = installed_training_hooks()
    if steps_run_in_child(settings):
        # The child builds the watchers.
        return ChildStepHost(settings, hooks.step_watchers, step_process)
    host = ModelHost(
        settings.model.to_config(),
        settings.training.to_config(settings.replay),
        resolve_device(settings.device),
        # Read replicas never train, so they keep no rows to rehearse.
        replay_rows=settings.replay.rows if settings.role != "api" else 0,
        shard=settings.queue.shard,
    )
    host.step_watchers.extend(hooks.new_step_watchers())
    return host
