"""Everything a running process holds, built from the settings and torn down in order.

The app's lifespan (and `psp worker`) create one `Runtime`: the registry engine and, for each
shard this process holds (`service.runtime.shard_roles`), the model host, the train queue and its
applied notices, the checkpoint store, the predict batcher and, in the `all` and `worker` roles,
the trainer, in the `api` role the follower of the shard's worker.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

import torch

from service.api.auth import Authenticator
from service.api.payloads import PayloadError
from service.checkpoints.transfer import ExportedCheckpoint, ExportNotFound
from service.contexts.service import ContextService
from service.feedback.service import FeedbackService, make_feedback_store
from service.model.host import ModelHost
from service.queue.memory_stream import IdempotencyMemory
from service.registry.database import make_engine
from service.registry.history import HistoryPolicy
from service.registry.migrate import upgrade
from service.registry.shards import ShardPlan
from service.registry.store import RegistryStore
from service.runtime.background import Background
from service.runtime.registry_polls import (
    load_stored_keys,
    report_shard_capacity,
    retired_contexts_poll,
    shard_load_poll,
    stored_keys_poll,
)
from service.runtime.shard import ShardParts, new_step_process
from service.runtime.shard_roles import Shard, start_replica, start_writer
from service.runtime.startup import StartupError, check_checkpoint_fits
from service.runtime.supervisor import Supervisor
from service.serving.multi_prediction import MultiPredictionService
from service.serving.prediction import PredictionService
from service.settings import Settings
from service.training.intake import TrainIntake

log = logging.getLogger(__name__)


def _serves_predict(settings: Settings) -> bool:
    """Every role but `worker` answers predict, and so resolves keys."""
    return settings.role != "worker"


def _shard_numbers(settings: Settings) -> list[int]:
    """The shards this process holds: a worker its own, `all` and `api` every one."""
    if settings.role == "worker":
        return [settings.queue.shard]
    return list(range(settings.shards.count))


def _prepare_process(settings: Settings) -> None:
    """Process-wide switches and checks that come before anything is built."""
    torch.set_num_threads(settings.resolved_torch_threads)
    if settings.training.deterministic:
        torch.use_deterministic_algorithms(True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for shard in _shard_numbers(settings):
        check_checkpoint_fits(settings.for_shard(shard))


async def _open_registry(settings: Settings) -> RegistryStore:
    """The registry, migrated to the newest schema first."""
    url = settings.resolved_database_url
    await asyncio.to_thread(upgrade, url)
    shards = ShardPlan(settings.shards.count, settings.shards.capacity)
    history = HistoryPolicy(
        drift=settings.drift.to_config(),
        retention=timedelta(hours=settings.accuracy.retention_hours),
        max_drift_events=settings.drift.max_events,
    )
    registry = RegistryStore(
        make_engine(url), settings.model.kind, settings.contexts.min_power_gap, shards, history
    )
    try:
        await _check_no_context_is_beyond_the_count(registry, settings)
    except StartupError:
        registry.close()
        raise
    return registry


async def _check_no_context_is_beyond_the_count(
    registry: RegistryStore, settings: Settings
) -> None:
    """Contexts never move, so lowering `PSP_SHARDS__COUNT` below a shard that holds live
    contexts would leave them unserved."""
    highest = await registry.highest_live_shard()
    if highest is not None and highest >= settings.shards.count:
        raise StartupError(
            f"PSP_SHARDS__COUNT={settings.shards.count}, but live contexts belong to shard "
            f"{highest} and contexts never move; set PSP_SHARDS__COUNT={highest + 1} or more"
        )


@dataclass
class Runtime:
    """The resources of one process: the registry and the services over its shards.

    The `all` and `api` roles hold every shard, in order; a worker holds its own.
    """

    settings: Settings
    registry: RegistryStore
    shards: list[Shard]
    contexts: ContextService
    train_intake: TrainIntake
    prediction: PredictionService
    feedback: FeedbackService
    multi_prediction: MultiPredictionService
    background: Background

    @classmethod
    async def start(cls, settings: Settings, authenticator: Authenticator | None = None) -> Runtime:
        """Migrates the registry, builds each shard's model from it and its newest checkpoint,
        and starts the trainers when this process is the writer. A process that answers
        requests passes its `authenticator`, which then follows the keys stored in the
        registry."""
        _prepare_process(settings)
        registry = await _open_registry(settings)
        background = Background()
        idempotency = IdempotencyMemory()  # one key names one batch on every shard
        numbers = _shard_numbers(settings)
        steps = new_step_process(settings)  # the one child that steps every shard here
        parts = [ShardParts.build(settings.for_shard(k), idempotency, steps) for k in numbers]
        contexts = ContextService(registry, {part.number: part.host for part in parts})
        await contexts.load_bank(map_keys=_serves_predict(settings))
        for part in parts:
            part.batcher.start(background.supervisor, part.task_name("batcher"))
        shards = [
            await (
                start_replica(part, background)
                if settings.role == "api"
                else start_writer(part, registry, background)
            )
            for part in parts
        ]
        runtime = cls._over(settings, registry, shards, contexts, background)
        await runtime._follow_registry(authenticator)
        for shard in shards:
            log.info(
                "shard %d: model on %s at version %d with %d contexts",
                shard.number,
                shard.host.device,
                shard.host.model_version,
                shard.host.context_count,
            )
        return runtime

    @classmethod
    def _over(
        cls,
        settings: Settings,
        registry: RegistryStore,
        shards: list[Shard],
        contexts: ContextService,
        background: Background,
    ) -> Runtime:
        """The services over the registry and the shards."""
        lanes = {shard.number: shard.lane for shard in shards}
        batchers = {shard.number: shard.batcher for shard in shards}
        prediction = PredictionService(contexts, batchers, settings)
        feedback_store = make_feedback_store(settings)
        background.close_at_stop(feedback_store.close)
        return cls(
            settings=settings,
            registry=registry,
            shards=shards,
            contexts=contexts,
            train_intake=TrainIntake(contexts, lanes, settings),
            prediction=prediction,
            feedback=FeedbackService(contexts, prediction, lanes, feedback_store, settings),
            multi_prediction=MultiPredictionService(contexts, batchers, settings),
            background=background,
        )

    async def _follow_registry(self, authenticator: Authenticator | None) -> None:
        """Starts the polls of the registry (`service.runtime.registry_polls`) this process
        needs; the stored API keys are read once first."""
        every_seconds = self.settings.registry_poll_seconds
        if _serves_predict(self.settings):
            self.background.poll(retired_contexts_poll(self.contexts, every_seconds))
            report_shard_capacity(self.registry)
            self.background.poll(shard_load_poll(self.registry, every_seconds))
        if authenticator is not None:
            await load_stored_keys(self.registry, authenticator)
            self.background.poll(stored_keys_poll(self.registry, authenticator, every_seconds))

    @property
    def supervisor(self) -> Supervisor:
        """Knows which background tasks are down, for `/readyz`."""
        return self.background.supervisor

    def shard(self, number: int) -> Shard:
        """Shard `number`, as a request names it.

        Raises:
            PayloadError: This process holds no such shard.
        """
        for shard in self.shards:
            if shard.number == number:
                return shard
        count = self.settings.shards.count
        raise PayloadError(
            f"there is no shard {number}: PSP_SHARDS__COUNT={count}; send a shard from 0 to "
            f"{count - 1}"
        )

    async def checkpoint_export(self, shard: int, file: str) -> ExportedCheckpoint:
        """The weights of checkpoint `file` of `shard`, as this worker serves them to the API
        replicas.

        Raises:
            ExportNotFound: This process does not write `shard`, or no longer keeps `file`.
        """
        writers = {held.number: held.exports for held in self.shards if held.exports}
        exports = writers.get(shard)
        if exports is None:
            raise ExportNotFound(
                f"this process writes shard(s) {sorted(writers) or 'none'}, not {shard}; "
                f"download shard {shard}'s checkpoints from its own worker"
            )
        exported = await asyncio.to_thread(exports.get, file)
        if exported is None:
            raise ExportNotFound(
                f"checkpoint {file} of shard {shard} is not kept (any more); the newest is "
                "announced in Redis"
            )
        return exported

    def host_of(self, index: int) -> ModelHost:
        """The model of the shard that holds the resolved context `index`."""
        return self.shard(self.contexts.shard_of(index)).host

    async def stop(self) -> None:
        """Stops the trainers (each drains its queue into a final checkpoint) and disconnects."""
        await self.background.stop_all()
        for shard in self.shards:
            await shard.close()
        self.registry.close()
