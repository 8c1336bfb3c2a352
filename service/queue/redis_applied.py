"""Applied notices on Redis: the trainer publishes how far it got; waiting producers subscribe.

Layout (names in `service.queue.keys`): an applied-state key `"<newest applied entry id> <model
version>"`, a pub/sub channel announcing each new state with the same text, and one short-lived
key per refused entry with its reason. A Lua script (`lua/publish_applied.lua`) writes them
together, so a waiter woken by an announcement finds its entry's refusal.

Every call maps a Redis failure to `QueueUnavailable` (`RedisLink.call`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Mapping, Sequence
from contextlib import suppress
from functools import partial

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.entry_ids import entry_id_key
from service.queue.applied import REFUSALS_KEPT_SECONDS, AppliedNotices
from service.queue.base import QueueUnavailable
from service.queue.keys import DEFAULT_KEY_PREFIX, ShardKeys
from service.queue.redis_link import (
    CONNECTION_ERRORS,
    HEALTH_CHECK_INTERVAL_S,
    SOCKET_TIMEOUT_S,
    RedisLink,
    text,
)

logger = logging.getLogger(__name__)

_LISTENER_BACKOFF_S = (0.05, 1.0)


def _parse_applied(state: bytes | str | None) -> tuple[tuple[int, int], int] | None:
    """`b"1700000000000-3 7"` -> `((1700000000000, 3), 7)`; None when unset or unreadable."""
    if state is None:
        return None
    entry_id, _, version = text(state).partition(" ")
    try:
        return entry_id_key(entry_id), int(version)
    except ValueError:
        logger.warning("ignoring an unreadable applied state %r", state)
        return None


class _AppliedWatch:
    """One pub/sub subscription to the applied channel, fanned out to every local waiter.

    The listener task subscribes, waits for Redis to confirm, and only then reads the applied-state
    key, so no publish falls between the two. From then on the local copy of the state is at
    least as new as the key was when a waiter arrived, and every later change arrives as a
    message; waiters therefore never read Redis themselves. After a lost connection the listener
    resubscribes and rereads the key, which settles waiters whose message was missed.
    """

    def __init__(self, client: aioredis.Redis, keys: ShardKeys, where: str) -> None:
        self._client = client
        self._keys = keys
        self._where = where
        self._applied_id = (0, 0)
        self._version = 0
        # A heap of (wanted id, ticket, future): settling is O(log n) per waiter.
        self._waiters: list[tuple[tuple[int, int], int, asyncio.Future[int]]] = []
        self._tickets = itertools.count()
        self._abandoned = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._status = asyncio.Condition()
        self._subscribed = False
        self._error: BaseException | None = None
        self._failures = 0  # subscription attempts that failed so far
        # Set by a waiter that finds the subscription lost: the listener tries again at once
        # instead of after its backoff, so a Redis that is back is seen by the first request.
        self._retry_now = asyncio.Event()

    async def wait(self, entry_id: str, timeout: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wanted = entry_id_key(entry_id)
        if self._closing:
            raise QueueUnavailable("the train queue was closed")
        if self._task is None:
            self._task = loop.create_task(self._listen(), name=f"psp-applied-{self._keys.stream}")
        await self._until_subscribed(deadline)
        if self._applied_id >= wanted:
            return self._version
        future: asyncio.Future[int] = loop.create_future()
        heapq.heappush(self._waiters, (wanted, next(self._tickets), future))
        try:
            return await asyncio.wait_for(future, deadline - loop.time())
        except TimeoutError:
            raise TimeoutError(f"entry {entry_id} was not applied within {timeout} s") from None
        finally:
            if future.cancelled():
                self._forget_abandoned()

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        # redis-py can swallow a cancellation that lands inside its own timeouts (see
        # redis/redis-py#2028 and #2551), so the cancel is repeated until it takes; `_closing`
        # also ends the listener's loops at their next turn.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        await self._set_status(subscribed=False, error=QueueUnavailable("the queue was closed"))
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(QueueUnavailable("the train queue was closed"))
        self._waiters.clear()

    async def _until_subscribed(self, deadline: float) -> None:
        """Returns once subscribed; raises when the listener's next attempt fails (an old
        failure only prompts a fresh attempt, since Redis may be back by now)."""
        if self._subscribed:
            return
        failures_seen = self._failures
        if self._error is not None:
            self._retry_now.set()
        async with self._status:
            try:
                await asyncio.wait_for(
                    self._status.wait_for(
                        lambda: self._subscribed or self._failures > failures_seen
                    ),
                    deadline - asyncio.get_running_loop().time(),
                )
            except TimeoutError:
                raise TimeoutError("timed out subscribing to applied notifications") from None
            if not self._subscribed:
                raise QueueUnavailable(
                    f"cannot wait for applied entries: Redis at {self._where} did not answer "
                    f"({self._error})"
                )

    def _advance(self, state: bytes | str | None) -> None:
        parsed = _parse_applied(state)
        if parsed is not None and parsed[0] > self._applied_id:
            self._applied_id, self._version = parsed
        while self._waiters and self._waiters[0][0] <= self._applied_id:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                future.set_result(self._version)

    def _forget_abandoned(self) -> None:
        # Timed-out waiters stay in the heap until settled; rebuild it once they dominate so a
        # stalled trainer cannot make it grow without bound.
        self._abandoned += 1
        if self._abandoned * 2 > len(self._waiters):
            self._waiters = [w for w in self._waiters if not w[2].done()]
            heapq.heapify(self._waiters)
            self._abandoned = 0

    async def _set_status(self, *, subscribed: bool, error: BaseException | None) -> None:
        async with self._status:
            self._subscribed = subscribed
            self._error = error
            if error is not None:
                self._failures += 1
            self._status.notify_all()

    async def _listen(self) -> None:
        backoff = _LISTENER_BACKOFF_S[0]
        while not self._closing:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._keys.applied_channel)
                await self._confirm(pubsub)
                self._advance(await self._client.get(self._keys.applied))
                await self._set_status(subscribed=True, error=None)
                backoff = _LISTENER_BACKOFF_S[0]
                while not self._closing:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=HEALTH_CHECK_INTERVAL_S
                    )
                    if message is not None and message["type"] == "message":
                        self._advance(message["data"])
            except (*CONNECTION_ERRORS, RedisError) as error:
                logger.warning("applied notifications from %s lost: %s", self._where, error)
                # The idle pooled connections are likely as dead as this one: the next
                # attempt must open a fresh connection.
                with suppress(*CONNECTION_ERRORS, RedisError):
                    await self._client.connection_pool.disconnect(inuse_connections=False)
                await self._set_status(subscribed=False, error=error)
            except Exception as error:
                # Waiters would otherwise hang until their timeouts; keep listening.
                logger.exception("applied notifications from %s failed", self._where)
                await self._set_status(subscribed=False, error=error)
            finally:
                with suppress(*CONNECTION_ERRORS, RedisError):
                    await pubsub.aclose()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._retry_now.wait(), backoff)
            self._retry_now.clear()
            backoff = min(backoff * 2, _LISTENER_BACKOFF_S[1])

    @staticmethod
    async def _confirm(pubsub: PubSub) -> None:
        # Only after Redis confirms the subscription is every later PUBLISH sure to reach us.
        while True:
            message = await pubsub.get_message(timeout=SOCKET_TIMEOUT_S)
            if message is None:
                raise RedisTimeoutError("Redis did not confirm the subscription")
            if message["type"] == "subscribe":
                return


class RedisAppliedNotices(AppliedNotices):
    """Applied notices for one shard, shared by every process through Redis.

    Args:
        link: The connection to Redis; closing the notices closes it.
        shard: The shard whose trainer publishes.
        key_prefix: Prefix of every key, so deployments and tests can share one Redis.
    """

    def __init__(
        self, link: RedisLink, *, shard: int = 0, key_prefix: str = DEFAULT_KEY_PREFIX
    ) -> None:
        self.keys = ShardKeys(key_prefix, shard)
        self._link = link
        self._publish_script = self._link.script("publish_applied", needs=("helpers",))
        self._watch = _AppliedWatch(self._link.client, self.keys, self._link.where)

    async def publish(
        self,
        entry_ids: Sequence[str],
        model_version: int,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        if not entry_ids:
            return
        newest = max(entry_ids, key=entry_id_key)
        refused = refused or {}
        await self._link.call(
            partial(
                self._publish_script,
                keys=[self.keys.applied, *(self.keys.refusal(i) for i in refused)],
                args=[
                    newest,
                    model_version,
                    self.keys.applied_channel,
                    REFUSALS_KEPT_SECONDS,
                    *refused.values(),
                ],
            ),
            "publish applied entries",
        )

    async def refusal(self, entry_id: str) -> str | None:
        reason = await self._link.call(
            partial(self._link.client.get, self.keys.refusal(entry_id)),
            "read why an entry was refused",
        )
        return None if reason is None else text(reason)

    async def wait(self, entry_id: str, timeout: float) -> int:
        return await self._watch.wait(entry_id, timeout)

    async def close(self) -> None:
        await self._watch.close()
        await self._link.close()
