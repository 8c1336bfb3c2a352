"""The worker's announcements of new checkpoints, and what one says.

The worker announces each checkpoint through Redis: it sets `model:<shard>:latest` and
publishes the same JSON on the `model:<shard>` channel. The announcement names the file, the
URL the worker serves its weights at and their SHA-256 (`service.checkpoints.transfer`), and the
write time, from which the API side measures the staleness (checkpoint to served). The API
processes follow the announcements with `service.serving.model_follower`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass

from redis.exceptions import RedisError

from psp_core.checkpoint import CheckpointError
from service.checkpoints.store import CheckpointInfo
from service.checkpoints.transfer import CheckpointExports
from service.queue.keys import ShardKeys
from service.queue.redis_link import redis_client

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
