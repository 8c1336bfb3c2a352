"""The worker side of checkpoint announcements."""

from __future__ import annotations

import redis

from service.checkpoints.announce import ModelAnnouncement, ModelPublisher
from service.checkpoints.store import CheckpointStore
from service.checkpoints.transfer import CheckpointExports
from service.queue.keys import ShardKeys


async def test_a_checkpoint_that_cannot_be_exported_is_still_announced_for_shared_volumes(
    tmp_path, redis_url: str, key_prefix: str
) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    keys = ShardKeys(key_prefix, 1)
    publisher = ModelPublisher(redis_url, keys, CheckpointExports(store), "http://worker:9101")
    vanished = store.next(3)  # named, never written
    await publisher.announce(vanished)
    await publisher.close()

    stored = redis.Redis.from_url(redis_url).get(keys.model_latest)
    announced = ModelAnnouncement.decode(stored)
    assert announced is not None
    assert (announced.sequence, announced.version, announced.file) == (1, 3, vanished.path.name)
    assert (announced.url, announced.sha256) == (None, None)
