"""Publishing new weights from the worker and hot-swapping them into API processes.

The worker writes each checkpoint to the checkpoint volume that it shares with the API
processes, then announces it through Redis: it sets `model:<shard>:latest` and publishes the
same JSON on the `model:<shard>` channel. API processes listen, and also read the `latest` key
every second, so a message missed during a Redis outage is caught up. A swap reads the file
outside the model lock and copies the weights in under it, so no request is dropped. The
announcement carries the write time, from which the staleness (checkpoint to served) is
measured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from psp_core.checkpoint import CheckpointError
from service import metrics
from service.checkpoints import CheckpointInfo, CheckpointStore
from service.model_host import ModelHost
from service.queue.keys import ShardKeys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelAnnouncement:
    """A checkpoint the worker has made durable."""

    sequence: int
    version: int
    file: str
    written_at: float

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, text: bytes | str | None) -> ModelAnnouncement | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(
            int(data["sequence"]),
            int(data["version"]),
            str(data["file"]),
            float(data["written_at"]),
        )


def redis_client(url: str) -> aioredis.Redis:
    """A client that fails fast while Redis is down and reconnects by itself afterwards."""
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=1, socket_timeout=5, health_check_interval=10
    )


class ModelPublisher:
    """The worker side: announces each checkpoint."""

    def __init__(self, url: str, keys: ShardKeys) -> None:
        self._redis = redis_client(url)
        self._keys = keys

    async def announce(self, checkpoint: CheckpointInfo) -> None:
        message = ModelAnnouncement(
            checkpoint.sequence, checkpoint.version, checkpoint.path.name, time.time()
        ).encode()
        try:
            await self._redis.set(self._keys.model_latest, message)
            await self._redis.publish(self._keys.model_channel, message)
        except (RedisError, OSError) as err:
            # Readers poll `latest`, so the next successful announcement brings them up to date.
            log.warning("could not announce checkpoint %s: %s", checkpoint.path.name, err)

    async def close(self) -> None:
        await self._redis.aclose()


class ModelFollower:
    """The API side: serves every newly announced checkpoint."""

    def __init__(
        self,
        url: str,
        keys: ShardKeys,
        host: ModelHost,
        store: CheckpointStore,
        poll_seconds: float = 1.0,
    ) -> None:
        self._redis = redis_client(url)
        self._keys = keys
        self.host = host
        self.store = store
        self.poll_seconds = poll_seconds
        self.sequence = 0
        self.last_staleness: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Follows announcements until `stop` is set; survives Redis outages."""
        while not stop.is_set():
            try:
                await self._follow(stop)
            except (RedisError, OSError) as err:
                log.warning("model announcements unavailable, retrying: %s", err)
                await asyncio.sleep(self.poll_seconds)

    async def _follow(self, stop: asyncio.Event) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._keys.model_channel)
            while not stop.is_set():
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=self.poll_seconds
                )
                if message is None:
                    await self.catch_up()
                else:
                    await self.serve_text(message["data"])
        finally:
            await pubsub.aclose()

    async def catch_up(self) -> None:
        """Serves the newest announced checkpoint now (after a rollback this process asked for)."""
        await self.serve_text(await self._redis.get(self._keys.model_latest))

    async def serve_text(self, text: bytes | str | None) -> None:
        announcement = ModelAnnouncement.decode(text)
        if announcement is not None:
            await self.serve(announcement)

    async def serve(self, announcement: ModelAnnouncement) -> None:
        """Swaps in the announced checkpoint if it is newer than what is served.

        When the announced file was pruned before it could be read (the worker keeps only the
        newest few), the newest checkpoint on the volume is served instead.
        """
        if announcement.sequence <= self.sequence:
            return
        info = self.store.info(announcement.file)
        try:
            if info is None:
                raise CheckpointError(f"checkpoint {announcement.file} is not on the volume")
            version = await asyncio.to_thread(self.host.swap_weights, info.path)
        except CheckpointError as err:
            await self._serve_newest(err)
            return
        self.sequence = announcement.sequence
        staleness = max(0.0, time.time() - announcement.written_at)
        self.last_staleness = staleness
        metrics.CHECKPOINT_STALENESS.observe(staleness)
        log.info("serving model version %d (%.3f s after it was written)", version, staleness)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _serve_newest(self, missed: CheckpointError) -> None:
        newest = self.store.latest()
        if newest is None or newest.sequence <= self.sequence:
            log.warning("%s, and no newer checkpoint is on the volume; waiting", missed)
            return
        version = await asyncio.to_thread(self.host.swap_weights, newest.path)
        self.sequence = newest.sequence
        log.warning("%s; serving the newest, %s (version %d)", missed, newest.path.name, version)
