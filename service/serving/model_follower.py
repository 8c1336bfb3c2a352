"""Hot-swapping the weights the shard's worker announces into an API process.

The worker announces each checkpoint through Redis (`service.checkpoints.announce`). API
processes listen, and also read the `latest` key every second, so a message missed during a
Redis outage is caught up. A process that shares the worker's checkpoint volume reads the file
from it; one that does not downloads it and checks the hash first. A swap reads the file outside
the model lock and copies the weights in under it, so no request is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from psp_core.checkpoint import CheckpointError
from service import metrics
from service.checkpoints.announce import ModelAnnouncement
from service.checkpoints.store import CheckpointInfo, CheckpointStore
from service.checkpoints.transfer import CheckpointFetcher
from service.model.host import ModelHost
from service.queue.keys import ShardKeys
from service.queue.redis_link import redis_client

log = logging.getLogger(__name__)


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
