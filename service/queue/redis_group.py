"""The consumer group of one shard's train stream: calls that read or acknowledge through it
create it first, and again after Redis lost it (a restart without persistence)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ResponseError

from service.queue.keys import ShardKeys
from service.queue.redis_link import RedisLink

T = TypeVar("T")


class ConsumerGroup:
    """Runs repeatable operations on one shard's stream through `link`."""

    def __init__(self, link: RedisLink, keys: ShardKeys) -> None:
        self._link = link
        self._keys = keys
        self._ready = False

    async def call(
        self, operation: Callable[[], Awaitable[T]], doing: str, *, needs_group: bool = True
    ) -> T:
        """Runs `operation` through the link (see `RedisLink.call`), in the consumer group if it
        `needs_group`; a group Redis lost is created again."""
        if not needs_group:
            return await self._link.call(operation, doing)

        async def in_group() -> T:
            if not self._ready:
                await self._create()
            return await operation()

        return await self._link.call(in_group, doing, on_lost_group=self._forget)

    def _forget(self) -> None:
        self._ready = False

    async def _create(self) -> None:
        # From id 0, so entries queued before the group existed (after data loss) are delivered.
        try:
            await self._link.client.xgroup_create(
                self._keys.stream, self._keys.group, id="0", mkstream=True
            )
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._ready = True
