"""Everything a running process holds, built from the settings and torn down in order.

The app's lifespan (and `psp worker`) create one `Runtime`: the registry engine and, for each
shard this process holds (`service.runtime.shard`), the model host, the train queue and its applied
notices, the checkpoint store, the predict batcher and, in the `all` and `worker` roles, the
trainer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
from redis.exceptions import RedisError

from service.api.auth import Authenticator
from service.api.payloads import PayloadError
from service.checkpoints.announce import ModelPublisher
from service.checkpoints.rollback_inbox import ControlInbox
from service.checkpoints.rollback_sender import RedisRollback
from service.checkpoints.transfer import (
    CheckpointExports,
    CheckpointFetcher,
    ExportedCheckpoint,
    ExportNotFound,
)
from service.contexts.service import ContextService
from service.feedback.service import FeedbackService, make_feedback_store
from service.model.host import ModelHost
from service.queue.memory_stream import IdempotencyMemory
from service.queue.redis_link import redis_client
from service.registry.database import make_engine
from service.registry.history import HistoryPolicy
from service.registry.migrate import upgrade
from service.registry.shards import ShardPlan
from service.registry.store import RegistryStore
from service.registry.writers import WriterTaken
from service.runtime.key_sync import follow_stored_keys, load_stored_keys
from service.runtime.shard import Shard
from service.runtime.shard_load import report_shard_load
from service.runtime.startup import StartupError, check_checkpoint_fits
from service.runtime.supervisor import Supervisor
from service.serving.model_follower import ModelFollower
from service.serving.multi_prediction import MultiPredictionService
from service.serving.prediction import PredictionService
from service.settings import Settings
from service.training.intake import TrainIntake
from service.training.trainer import Trainer
from service.training.writer_lease import WriterLease

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
    supervisor: Supervisor = field(default_factory=Supervisor)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings, authenticator: Authenticator | None = None) -> Runtime:
        """Migrates the registry, builds each shard's model from it and its newest checkpoint,
        and starts the trainers when this process is the writer. A process that answers
        requests passes its `authenticator`, which then follows the keys stored in the
        registry."""
        _prepare_process(settings)
        registry = await _open_registry(settings)
        idempotency = IdempotencyMemory()  # one key names one batch on every shard
        shards = [Shard.build(settings.for_shard(k), idempotency) for k in _shard_numbers(settings)]
        runtime = await cls._assemble(settings, registry, shards)
        for shard in shards:
            if settings.role == "api":
                await runtime._follow_worker(shard)
            else:
                await runtime._start_trainer(shard)
        if _serves_predict(settings):
            runtime._poll_retirements()
            runtime._report_shard_load()
        if authenticator is not None:
            await runtime._follow_stored_keys(authenticator)
        for shard in shards:
            host = shard.host
            log.info(
                "shard %d: model on %s at version %d with %d contexts",
                shard.number,
                host.device,
                host.model_version,
                host.context_count,
            )
        return runtime

    @classmethod
    async def _assemble(
        cls, settings: Settings, registry: RegistryStore, shards: list[Shard]
    ) -> Runtime:
        """The services over the registry and the shards, with every model's bank loaded and
        the predict batchers running."""
        contexts = ContextService(registry, {shard.number: shard.host for shard in shards})
        await contexts.load_bank(map_keys=_serves_predict(settings))
        lanes = {shard.number: shard.lane for shard in shards}
        batchers = {shard.number: shard.batcher for shard in shards}
        prediction = PredictionService(contexts, batchers, settings)
        feedback_store = make_feedback_store(settings)
        runtime = cls(
            settings=settings,
            registry=registry,
            shards=shards,
            contexts=contexts,
            train_intake=TrainIntake(contexts, lanes, settings),
            prediction=prediction,
            feedback=FeedbackService(contexts, prediction, lanes, feedback_store, settings),
            multi_prediction=MultiPredictionService(contexts, batchers, settings),
        )
        for shard in shards:
            shard.batcher.start(runtime.supervisor, shard.task_name("batcher"))
        runtime._closers.append(feedback_store.close)
        return runtime

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

    def _supervise(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        before_restart: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._tasks.append(
            self.supervisor.spawn(name, run, self._stop, before_restart=before_restart)
        )

    async def _start_trainer(self, shard: Shard) -> None:
        """The shard's writer: in `all` it serves rollbacks directly; as `worker` it announces
        its checkpoints and takes rollbacks from the API through Redis."""
        settings = shard.settings
        announce, control = None, None
        if settings.role == "worker":
            assert settings.redis_url is not None
            shard.exports = CheckpointExports(shard.store)
            publisher = ModelPublisher(
                settings.redis_url, shard.keys, shard.exports, settings.checkpoint_base_url
            )
            control_client = redis_client(settings.redis_url)
            announce, control = publisher.announce, ControlInbox(control_client, shard.keys)
            self._closers += [publisher.close, control_client.aclose]
        lease = WriterLease(self.registry, shard.number, settings.writer)
        try:
            await lease.claim()
        except WriterTaken as taken:
            raise StartupError(str(taken)) from None
        await shard.queue.fence(lease.token)
        self._supervise(shard.task_name("writer-lease"), lambda: lease.keep(self._stop))
        trainer = Trainer(
            host=shard.host,
            queue=shard.queue,
            applied=shard.applied,
            store=shard.store,
            registry=self.registry,
            settings=settings,
            announce=announce,
            control=control,
            lease=lease,
        )
        shard.trainer = trainer
        await trainer.recover()
        shard.rollback = trainer
        self._closers.append(lease.release)
        self._supervise(
            shard.task_name("trainer"),
            lambda: trainer.run(self._stop),
            before_restart=trainer.rewind_after_crash,
        )
        self._supervise(
            shard.task_name("checkpoint-writer"), lambda: trainer.write_checkpoints(self._stop)
        )

    async def _follow_worker(self, shard: Shard) -> None:
        """A read replica of the shard: serves its newest checkpoint (on its volume, else the
        newest announced one, downloaded) and follows its worker's announcements."""
        settings = shard.settings
        assert settings.redis_url is not None
        latest = shard.store.latest()
        if latest is not None:
            await asyncio.to_thread(shard.host.swap_weights, latest.path)
        token = settings.checkpoint.fetch_token
        fetcher = CheckpointFetcher(
            shard.store, shard.number, token.get_secret_value() if token else None
        )
        follower = ModelFollower(settings.redis_url, shard.keys, shard.host, shard.store, fetcher)
        shard.follower = follower
        if latest is not None:
            follower.sequence = latest.sequence
        try:
            await follower.catch_up()
        except (RedisError, OSError) as err:
            # Not fatal: the follower keeps trying, and predictions answer meanwhile.
            log.warning("shard %d: no newest checkpoint announced yet: %s", shard.number, err)
        control_client = redis_client(settings.redis_url)
        shard.rollback = RedisRollback(control_client, shard.keys)
        self._closers += [follower.close, control_client.aclose]
        self._supervise(shard.task_name("follower"), lambda: follower.run(self._stop))

    def _poll_retirements(self) -> None:
        """Polls the registry for contexts that other processes retire, and forgets their keys."""
        contexts, every_seconds = self.contexts, self.settings.registry_poll_seconds
        self._supervise(
            "registry-poller", lambda: contexts.poll_retirements(every_seconds, self._stop)
        )

    def _report_shard_load(self) -> None:
        """Keeps the gauges of live contexts per shard and of the capacity current."""
        registry, every_seconds = self.registry, self.settings.registry_poll_seconds
        self._supervise(
            "shard-load", lambda: report_shard_load(registry, every_seconds, self._stop)
        )

    async def _follow_stored_keys(self, authenticator: Authenticator) -> None:
        """Loads the API keys stored in the registry and keeps following them."""
        await load_stored_keys(self.registry, authenticator)
        registry, every_seconds = self.registry, self.settings.registry_poll_seconds
        self._supervise(
            "key-follower",
            lambda: follow_stored_keys(registry, authenticator, every_seconds, self._stop),
        )

    async def stop(self) -> None:
        """Stops the trainers (each drains its queue into a final checkpoint) and disconnects."""
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for close in self._closers:
            await close()
        for shard in self.shards:
            await shard.close()
        self.registry.close()
