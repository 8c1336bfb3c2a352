"""Everything a running process holds, built from the settings and torn down in order.

The app's lifespan (and `psp worker`) create one `Runtime`: the registry engine, the model
host, the train queue and its applied notices, the checkpoint store and, in the `all` and
`worker` roles, the trainer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch

from service.auth import Authenticator
from service.batcher import PredictBatcher
from service.checkpoints import CheckpointStore
from service.contexts import ContextService
from service.control import ControlInbox, RedisRollback, RollbackTarget
from service.faults import FaultInjector
from service.feedback.service import FeedbackService, make_feedback_store
from service.key_sync import follow_stored_keys, load_stored_keys
from service.model_host import ModelHost, resolve_device
from service.model_sync import ModelFollower, ModelPublisher, redis_client
from service.multi_prediction import MultiPredictionService
from service.prediction import PredictionService
from service.queue.applied import AppliedNotices
from service.queue.base import TrainQueue
from service.queue.keys import ShardKeys
from service.queue.memory_applied import InProcessAppliedNotices
from service.queue.memory_stream import InProcessQueue
from service.registry.database import make_engine
from service.registry.migrate import upgrade
from service.registry.shards import ShardPlan
from service.registry.store import RegistryStore
from service.settings import Settings
from service.startup import check_checkpoint_fits, check_shards_served
from service.supervisor import Supervisor
from service.train_intake import TrainIntake
from service.trainer import Trainer

log = logging.getLogger(__name__)


def make_queue_and_notices(settings: Settings) -> tuple[TrainQueue, AppliedNotices]:
    """The train queue and its applied notices: on Redis (sharing one connection) when
    `PSP_REDIS_URL` is set, else in this process."""
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
            retry_after_seconds=settings.queue.retry_after_seconds,
            key_prefix=settings.key_prefix,
        )
        applied = RedisAppliedNotices(
            link, shard=settings.queue.shard, key_prefix=settings.key_prefix
        )
        return queue, applied
    in_process = InProcessQueue(
        max_pending_examples=settings.queue.max_pending_examples,
        retry_after_seconds=settings.queue.retry_after_seconds,
    )
    return in_process, InProcessAppliedNotices()


def _serves_predict(settings: Settings) -> bool:
    """Every role but `worker` answers predict, and so resolves keys."""
    return settings.role != "worker"


def _prepare_process(settings: Settings) -> None:
    """Process-wide switches and checks that come before anything is built."""
    if settings.training.deterministic:
        torch.use_deterministic_algorithms(True)
    check_shards_served(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    check_checkpoint_fits(settings)


async def _open_registry(settings: Settings) -> RegistryStore:
    """The registry, migrated to the newest schema first."""
    url = settings.resolved_database_url
    await asyncio.to_thread(upgrade, url)
    shards = ShardPlan(settings.shards.count, settings.shards.capacity)
    return RegistryStore(
        make_engine(url), settings.model.kind, settings.contexts.min_power_gap, shards
    )


def _make_host(settings: Settings) -> ModelHost:
    """The model, freshly initialised, with the fault injector watching its steps if asked."""
    host = ModelHost(
        settings.model.to_config(),
        settings.training.to_config(settings.replay),
        resolve_device(settings.device),
        # Read replicas never train, so they keep no rows to rehearse.
        replay_rows=settings.replay.rows if settings.role != "api" else 0,
    )
    if settings.faults.any:
        log.warning("fault injection is on (PSP_FAULTS__*): %s", settings.faults)
        host.step_watchers.append(FaultInjector(settings.faults))
    return host


@dataclass
class Runtime:
    """The resources of one process."""

    settings: Settings
    registry: RegistryStore
    host: ModelHost
    queue: TrainQueue
    applied: AppliedNotices
    store: CheckpointStore
    contexts: ContextService
    train_intake: TrainIntake
    prediction: PredictionService
    feedback: FeedbackService
    multi_prediction: MultiPredictionService
    trainer: Trainer | None = None
    rollback: RollbackTarget | None = None
    follower: ModelFollower | None = None
    supervisor: Supervisor = field(default_factory=Supervisor)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings, authenticator: Authenticator | None = None) -> Runtime:
        """Migrates the registry, builds the model from it and the newest checkpoint, and
        starts the trainer when this process is the writer. A process that answers requests
        passes its `authenticator`, which then follows the keys stored in the registry."""
        _prepare_process(settings)
        registry = await _open_registry(settings)
        runtime = await cls._assemble(settings, registry, _make_host(settings))
        if settings.role == "api":
            await runtime._follow_worker()
        else:
            await runtime._start_trainer()
        if _serves_predict(settings):
            runtime._poll_retirements()
        if authenticator is not None:
            await runtime._follow_stored_keys(authenticator)
        host = runtime.host
        log.info(
            "model on %s at version %d with %d contexts",
            host.device,
            host.model_version,
            host.context_count,
        )
        return runtime

    @classmethod
    async def _assemble(
        cls, settings: Settings, registry: RegistryStore, host: ModelHost
    ) -> Runtime:
        """The services over the registry, the model and the queue, with the model's bank
        loaded and the predict batcher running."""
        queue, applied = make_queue_and_notices(settings)
        store = CheckpointStore(settings.checkpoint_dir, settings.checkpoint.keep)
        contexts = ContextService(registry, host)
        batcher = PredictBatcher(
            host, max_rows=settings.batcher.max_rows, max_delay_us=settings.batcher.max_delay_us
        )
        await contexts.load_bank(map_keys=_serves_predict(settings))
        prediction = PredictionService(contexts, batcher, settings)
        feedback_store = make_feedback_store(settings)
        runtime = cls(
            settings=settings,
            registry=registry,
            host=host,
            queue=queue,
            applied=applied,
            store=store,
            contexts=contexts,
            train_intake=TrainIntake(contexts, queue, applied, settings),
            prediction=prediction,
            feedback=FeedbackService(
                contexts, prediction, queue, applied, feedback_store, settings
            ),
            multi_prediction=MultiPredictionService(contexts, host, settings),
        )
        batcher.start(runtime.supervisor)
        runtime._closers += [batcher.stop, feedback_store.close]
        return runtime

    def _supervise(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        before_restart: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._tasks.append(
            self.supervisor.spawn(name, run, self._stop, before_restart=before_restart)
        )

    @property
    def keys(self) -> ShardKeys:
        return ShardKeys(self.settings.key_prefix, self.settings.queue.shard)

    async def _start_trainer(self) -> None:
        """The writer: in `all` it serves rollbacks directly; as `worker` it announces its
        checkpoints and takes rollbacks from the API through Redis."""
        announce, control = None, None
        if self.settings.role == "worker":
            assert self.settings.redis_url is not None
            publisher = ModelPublisher(self.settings.redis_url, self.keys)
            control_client = redis_client(self.settings.redis_url)
            announce, control = publisher.announce, ControlInbox(control_client, self.keys)
            self._closers += [publisher.close, control_client.aclose]
        self.trainer = Trainer(
            host=self.host,
            queue=self.queue,
            applied=self.applied,
            store=self.store,
            registry=self.registry,
            settings=self.settings,
            announce=announce,
            control=control,
        )
        trainer = self.trainer
        await trainer.recover()
        self.rollback = trainer
        self._supervise(
            "trainer", lambda: trainer.run(self._stop), before_restart=trainer.rewind_after_crash
        )
        self._supervise("checkpoint-writer", lambda: trainer.write_checkpoints(self._stop))

    async def _follow_worker(self) -> None:
        """A read replica: serves the newest checkpoint and follows the worker's announcements."""
        assert self.settings.redis_url is not None
        latest = self.store.latest()
        if latest is not None:
            await asyncio.to_thread(self.host.swap_weights, latest.path)
        follower = ModelFollower(self.settings.redis_url, self.keys, self.host, self.store)
        self.follower = follower
        if latest is not None:
            follower.sequence = latest.sequence
        control_client = redis_client(self.settings.redis_url)
        self.rollback = RedisRollback(control_client, self.keys)
        self._closers += [follower.close, control_client.aclose]
        self._supervise("follower", lambda: follower.run(self._stop))

    def _poll_retirements(self) -> None:
        """Polls the registry for contexts that other processes retire, and forgets their keys."""
        contexts, every_seconds = self.contexts, self.settings.registry_poll_seconds
        self._supervise(
            "registry-poller", lambda: contexts.poll_retirements(every_seconds, self._stop)
        )

    async def _follow_stored_keys(self, authenticator: Authenticator) -> None:
        """Loads the API keys stored in the registry and keeps following them."""
        await load_stored_keys(self.registry, authenticator)
        follow = follow_stored_keys(
            self.registry, authenticator, self.settings.registry_poll_seconds, self._stop
        )
        self._tasks.append(asyncio.create_task(follow))

    async def stop(self) -> None:
        """Stops the trainer (it drains the queue into a final checkpoint) and disconnects."""
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for close in self._closers:
            await close()
        await self.applied.close()
        await self.queue.close()
        self.registry.engine.dispose()
