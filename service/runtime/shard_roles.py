"""One shard as this process holds it: its parts, and what its role adds to them.

- A writer (roles `all` and `worker`) trains the shard under the writer lease. In `all` it
  serves rollbacks itself; as `worker` it takes them from the API through Redis, and exports
  and announces its checkpoints.
- A read replica (role `api`) serves the newest checkpoint, follows the worker's
  announcements, and relays rollbacks to the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any

from redis.exceptions import RedisError

from service.checkpoints.announce import ModelPublisher
from service.checkpoints.reserved_versions import ReservedVersions
from service.checkpoints.rollback import RollbackTarget
from service.checkpoints.rollback_inbox import ControlInbox
from service.checkpoints.rollback_sender import RedisRollback
from service.checkpoints.store import CheckpointInfo
from service.checkpoints.transfer import CheckpointExports, CheckpointFetcher
from service.queue.redis_link import redis_client
from service.registry.store import RegistryStore
from service.registry.writers import WriterTaken
from service.runtime.background import Background
from service.runtime.shard import ShardParts
from service.runtime.startup import StartupError
from service.serving.model_follower import ModelFollower
from service.training.trainer import Trainer
from service.training.writer_lease import WriterLease

log = logging.getLogger(__name__)


@dataclass
class Shard(ShardParts):
    """A shard's parts, and what this process's role adds to them.

    Attributes:
        rollback: Rolls the shard back: its trainer, or in a read replica the relay to its
            worker.
        trainer: The writer's.
        follower: A read replica's follower of the worker's announcements.
        exports: A worker's checkpoints, served to the API replicas.
    """

    rollback: RollbackTarget
    trainer: Trainer | None = None
    follower: ModelFollower | None = None
    exports: CheckpointExports | None = None


def _parts_of(parts: ShardParts) -> dict[str, Any]:
    return {part.name: getattr(parts, part.name) for part in fields(ShardParts)}


async def start_writer(parts: ShardParts, registry: RegistryStore, background: Background) -> Shard:
    """Claims the shard's writer lease, recovers its trainer from the newest checkpoint and
    starts it.

    Raises:
        StartupError: Another live process holds the lease.
    """
    settings = parts.settings
    exports, announce, control = None, None, None
    if settings.role == "worker":
        exports, announce, control = _worker_channels(parts, background)
    lease = WriterLease(registry, parts.number, settings.writer)
    try:
        await lease.claim()
    except WriterTaken as taken:
        raise StartupError(str(taken)) from None
    await parts.queue.fence(lease.token)
    background.supervise(parts.task_name("writer-lease"), lambda: lease.keep(background.stop))
    trainer = Trainer(
        host=parts.host,
        queue=parts.queue,
        applied=parts.applied,
        store=parts.store,
        registry=registry,
        settings=settings,
        announce=announce,
        control=control,
        lease=lease,
        # Role `all` serves the versions it trains; a worker's replicas serve checkpoints only.
        reserved=ReservedVersions(parts.store.directory) if settings.role == "all" else None,
    )
    await trainer.recover()
    background.close_at_stop(lease.release)
    background.supervise(
        parts.task_name("trainer"),
        lambda: trainer.run(background.stop),
        before_restart=trainer.rewind_after_crash,
    )
    background.supervise(
        parts.task_name("checkpoint-writer"), lambda: trainer.write_checkpoints(background.stop)
    )
    return Shard(**_parts_of(parts), rollback=trainer, trainer=trainer, exports=exports)


def _worker_channels(
    parts: ShardParts, background: Background
) -> tuple[CheckpointExports, Callable[[CheckpointInfo], Awaitable[None]], ControlInbox]:
    """A worker's ties to the API replicas: the checkpoints it exports, how it announces
    them, and its inbox of rollback commands."""
    settings = parts.settings
    assert settings.redis_url is not None
    exports = CheckpointExports(parts.store)
    publisher = ModelPublisher(
        settings.redis_url, parts.keys, exports, settings.checkpoint_base_url
    )
    control_client = redis_client(settings.redis_url)
    background.close_at_stop(publisher.close, control_client.aclose)
    return exports, publisher.announce, ControlInbox(control_client, parts.keys)


async def start_replica(parts: ShardParts, background: Background) -> Shard:
    """Serves the shard's newest checkpoint (on its volume, else the newest announced one,
    downloaded) and follows its worker's announcements."""
    settings = parts.settings
    assert settings.redis_url is not None
    latest = parts.store.latest()
    if latest is not None:
        await asyncio.to_thread(parts.host.swap_weights, latest.path)
    token = settings.checkpoint.fetch_token
    fetcher = CheckpointFetcher(
        parts.store, parts.number, token.get_secret_value() if token else None
    )
    follower = ModelFollower(settings.redis_url, parts.keys, parts.host, parts.store, fetcher)
    if latest is not None:
        follower.sequence = latest.sequence
    try:
        await follower.catch_up()
    except (RedisError, OSError) as err:
        # Not fatal: the follower keeps trying, and predictions answer meanwhile.
        log.warning("shard %d: no newest checkpoint announced yet: %s", parts.number, err)
    control_client = redis_client(settings.redis_url)
    background.close_at_stop(follower.close, control_client.aclose)
    background.supervise(parts.task_name("follower"), lambda: follower.run(background.stop))
    rollback = RedisRollback(control_client, parts.keys)
    return Shard(**_parts_of(parts), rollback=rollback, follower=follower)
