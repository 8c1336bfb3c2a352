"""Everything a running process holds, built from the settings and torn down in order.

The app's lifespan (and `psp worker`) create one `Runtime`: the registry engine, the model
host, the train queue, the checkpoint store and, in the `all` and `worker` roles, the trainer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import torch

from psp_core.learner import TrainingConfig
from service.checkpoints import CheckpointStore
from service.contexts import ContextService
from service.model_host import ModelHost, resolve_device
from service.prediction import PredictionService
from service.queue.base import TrainQueue
from service.queue.memory import InProcessQueue
from service.registry.database import make_engine
from service.registry.migrate import upgrade
from service.registry.store import RegistryStore
from service.settings import Settings
from service.trainer import Trainer
from service.training import TrainingService

log = logging.getLogger(__name__)


def make_queue(settings: Settings) -> TrainQueue:
    """Redis Streams when `PSP_REDIS_URL` is set, else the in-process queue."""
    if settings.redis_url:
        from service.queue.redis import RedisStreamQueue

        return RedisStreamQueue(
            url=settings.redis_url,
            shard=settings.queue.shard,
            max_pending_examples=settings.queue.max_pending_examples,
            retry_after_seconds=settings.queue.retry_after_seconds,
        )
    return InProcessQueue(
        max_pending_examples=settings.queue.max_pending_examples,
        retry_after_seconds=settings.queue.retry_after_seconds,
    )


@dataclass
class Runtime:
    """The resources of one process."""

    settings: Settings
    registry: RegistryStore
    host: ModelHost
    queue: TrainQueue
    store: CheckpointStore
    contexts: ContextService
    training: TrainingService
    prediction: PredictionService
    trainer: Trainer | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        """Migrates the registry, builds the model from it and the newest checkpoint, and
        starts the trainer when this process is the writer."""
        if settings.training.deterministic:
            torch.use_deterministic_algorithms(True)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url
        await asyncio.to_thread(upgrade, url)
        registry = RegistryStore(make_engine(url), settings.model.kind)
        device = resolve_device(settings.device)
        training_config = TrainingConfig(
            optimizer=settings.training.optimizer,
            lr=settings.training.lr,
            momentum=settings.training.momentum,
        )
        host = ModelHost(settings.model.to_config(), training_config, device)
        queue = make_queue(settings)
        store = CheckpointStore(settings.checkpoint_dir, settings.checkpoint.keep)
        contexts = ContextService(registry, host, settings.registry_cache_seconds)
        await contexts.load_bank()
        runtime = cls(
            settings=settings,
            registry=registry,
            host=host,
            queue=queue,
            store=store,
            contexts=contexts,
            training=TrainingService(contexts, queue, settings),
            prediction=PredictionService(contexts, host, settings),
        )
        if settings.role in ("all", "worker"):
            runtime.trainer = Trainer(
                host=host, queue=queue, store=store, registry=registry, settings=settings
            )
            await runtime.trainer.recover()
            runtime._tasks.append(asyncio.create_task(runtime._train_forever()))
        else:
            latest = store.latest()
            if latest is not None:
                await asyncio.to_thread(host.load, latest.path)
        log.info(
            "model on %s at version %d with %d contexts",
            device,
            host.model_version,
            host.context_count,
        )
        return runtime

    async def _train_forever(self) -> None:
        assert self.trainer is not None
        await self.trainer.run(self._stop)

    async def stop(self) -> None:
        """Stops the trainer (it drains the queue into a final checkpoint) and disconnects."""
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.queue.close()
        self.registry.engine.dispose()
