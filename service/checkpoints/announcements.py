"""Publishing new weights from the worker and hot-swapping them into API processes.

The worker announces each checkpoint through Redis: it sets `model:<shard>:latest` and
publishes the same JSON on the `model:<shard>` channel. The announcement names the file, the
URL the worker serves its weights at and their SHA-256 (`service.checkpoints.transfer`). API
processes listen, and also read the `latest` key every second, so a message missed during a
Redis outage is caught up. A process that shares the worker's checkpoint volume reads the file
from it; one that does not downloads it and checks the hash first. A swap reads the file outside
the model lock and copies the weights in under it, so no request is dropped. The announcement
carries the write time, from which the staleness (checkpoint to served) is measured.
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
from service.checkpoints.store import CheckpointInfo, CheckpointStore
from service.checkpoints.transfer import CheckpointExports, CheckpointFetcher
from service.model.host import ModelHost
from service.queue.keys import ShardKeys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelAnnouncement:
    """A checkpoint the worker has made durable."""

    sequence: int
    version: int
    file: str
    written_at: float
    # Where the worker serves the checkpoint's weights, and their SHA-256; absent from the
    # announcements of versions that predate the download.
    url: str | None = None
    sha256: str | None = None

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
            data.get("url"),
            data.get("sha256"),
        )


def redis_client(url: str) -> aioredis.Redis:
    """A client that fails fast while Redis is down and reconnects by itself afterwards."""
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=1, socket_timeout=5, health_check_interval=10
    )


class ModelPublisher:
    """The worker side: exports and announces each checkpoint.

    Args:
        url: Redis.
        keys: The shard's Redis keys.
        exports: The exports this worker serves over HTTP.
        base_url: Where API replicas reach this worker's health and metrics port.
    """

    def __init__(
        self, url: str, keys: ShardKeys, exports: CheckpointExports, base_url: str
    ) -> None:
        self._redis = redis_client(url)
        self._keys = keys
        self._exports = exports
        self._base_url = base_url

    async def announce(self, checkpoint: CheckpointInfo) -> None:
        url, sha256 = None, None
        try:
            exported = await asyncio.to_thread(self._exports.export, checkpoint)
            url = f"{self._base_url}/shards/{self._keys.shard}/checkpoints/{exported.file}"
            sha256 = exported.sha256
        except (CheckpointError, OSError) as err:
            # Still announced: API processes that share the volume read the file itself.
            log.warning("could not export checkpoint %s for download: %s", checkpoint.path, err)
        message = ModelAnnouncement(
            checkpoint.sequence,
            checkpoint.version,
            checkpoint.path.name,
            time.time(),
            url,
            sha256,
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
        fetcher: CheckpointFetcher,
        poll_seconds: float = 1.0,
    ) -> None:
        self._redis = redis_client(url)
        self._keys = keys
        self.host = host
        self.store = store
        self.fetcher = fetcher
        self.poll_seconds = poll_seconds
        self.sequence = 0
        self.last_staleness: float | None = None
        # The announcement that could not be served: retried every poll, reported once.
        self._stuck_on: int | None = None

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

        The file is read from this process's checkpoint volume when it is there (a volume
        shared with the worker), else downloaded from the worker. When neither works (the
        announced file was pruned before it could be read, or the worker is down), the newest
        checkpoint on the volume is served if it is newer than what is served now. A process
        that has served none of the shard's checkpoints then has only untrained weights: it
        answers 503 to predictions and to `/readyz` (`ModelHost.weights_missing`) until one
        loads.
        """
        if announcement.sequence <= self.sequence:
            return
        info = self.store.info(announcement.file)
        try:
            if info is None:
                info = await self._download(announcement)
            version = await asyncio.to_thread(self.host.swap_weights, info.path)
        except CheckpointError as err:
            await self._serve_newest(announcement, err)
            return
        self._served(announcement.sequence)
        staleness = max(0.0, time.time() - announcement.written_at)
        self.last_staleness = staleness
        metrics.CHECKPOINT_STALENESS.observe(staleness)
        log.info("serving model version %d (%.3f s after it was written)", version, staleness)

    async def close(self) -> None:
        await self._redis.aclose()
        await self.fetcher.close()

    async def _download(self, announcement: ModelAnnouncement) -> CheckpointInfo:
        if announcement.url is None:
            raise CheckpointError(
                f"checkpoint {announcement.file} is not on the volume and its announcement "
                "names no URL to download it from"
            )
        return await self.fetcher.fetch(announcement.file, announcement.url, announcement.sha256)

    async def _serve_newest(self, announcement: ModelAnnouncement, missed: CheckpointError) -> None:
        newest = self.store.latest()
        if newest is None or newest.sequence <= self.sequence:
            report = log.debug if self._stuck_on == self.sequence else log.warning
            self._stuck_on = self.sequence
            report("%s, and no newer checkpoint is on the volume; retrying every poll", missed)
            if self.sequence == 0:
                # Nothing of the shard's is served: the weights here are the untrained ones,
                # and answering with them would pass noise off as the shard's model. The
                # answers say why without the worker's address or the file (logged above).
                self.host.weights_missing = (
                    f"model version {announcement.version} is announced, but neither this "
                    "process's volume nor the shard's worker could provide it"
                )
            return
        version = await asyncio.to_thread(self.host.swap_weights, newest.path)
        self._served(newest.sequence)
        log.warning("%s; serving the newest, %s (version %d)", missed, newest.path.name, version)

    def _served(self, sequence: int) -> None:
        self.sequence = sequence
        self.host.weights_missing = None
