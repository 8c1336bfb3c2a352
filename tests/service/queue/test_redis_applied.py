"""What only the Redis applied notices do: one subscription per process, the stored state, and
waiters that outlive a Redis outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.queue import QueueUnavailable
from service.queue.applied import REFUSALS_KEPT_SECONDS
from service.queue.redis_applied import RedisAppliedNotices
from service.queue.redis_link import RedisLink
from service.testing.processes import RedisServer


async def _until_subscribed(redis_url: str, channel: str) -> None:
    """Waits until a listener is subscribed to `channel`."""
    async with aioredis.Redis.from_url(redis_url) as probe, asyncio.timeout(10):
        while (await probe.pubsub_numsub(channel))[0][1] == 0:
            await asyncio.sleep(0.01)


@pytest.fixture
async def applied(redis_url: str, key_prefix: str) -> AsyncIterator[RedisAppliedNotices]:
    notices = RedisAppliedNotices(RedisLink(redis_url), key_prefix=key_prefix)
    yield notices
    await notices.close()


async def test_waiters_share_one_subscription(
    applied: RedisAppliedNotices, redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    ids = [f"1700000000000-{sequence}" for sequence in range(50)]
    waiters = [asyncio.create_task(applied.wait(i, timeout=10)) for i in ids]
    channel = f"{key_prefix}applied:0"
    await _until_subscribed(redis_url, channel)  # by now all fifty waiters are waiting

    [(_, subscribers)] = await redis_client.pubsub_numsub(channel)
    await applied.publish(ids, 4)

    assert subscribers == 1
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [4] * 50


async def test_publish_never_moves_backwards(
    applied: RedisAppliedNotices, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    await applied.publish(["1700000000000-5"], 3)
    await applied.publish(["1700000000000-2"], 2)

    assert await redis_client.get(f"{key_prefix}train:0:applied") == b"1700000000000-5 3"
    assert await applied.wait("1700000000000-5", timeout=5) == 3
    # After a rollback a newer entry may carry a lower version; it still wins.
    await applied.publish(["1700000000000-6"], 2)
    assert await redis_client.get(f"{key_prefix}train:0:applied") == b"1700000000000-6 2"
    assert await applied.wait("1700000000000-6", timeout=5) == 2


async def test_refusals_are_kept_under_the_entry_for_a_while(
    applied: RedisAppliedNotices, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    await applied.publish(["1700000000000-1"], 1, {"1700000000000-1": "loss was not finite"})

    key = f"{key_prefix}train:0:refused:1700000000000-1"
    assert await redis_client.get(key) == b"loss was not finite"
    assert 0 < await redis_client.ttl(key) <= REFUSALS_KEPT_SECONDS


async def test_unreachable_redis_raises_queue_unavailable(key_prefix: str) -> None:
    applied = RedisAppliedNotices(RedisLink("redis://:secret@127.0.0.1:1/0"), key_prefix=key_prefix)
    started = time.monotonic()
    try:
        with pytest.raises(QueueUnavailable, match=r"127\.0\.0\.1:1") as refused:
            await applied.publish(["1-0"], 1)
        assert "secret" not in str(refused.value)
        calls: list[Any] = [applied.refusal("1-0"), applied.wait("1-0", timeout=5)]
        for call in calls:
            with pytest.raises(QueueUnavailable):
                await call
    finally:
        await applied.close()
    assert time.monotonic() - started < 10


async def test_a_waiter_outlives_redis_losing_its_data(throwaway_redis: RedisServer) -> None:
    applied = RedisAppliedNotices(RedisLink(throwaway_redis.url))
    try:
        before, after = "1700000000000-1", "1700000000000-2"
        waiter = asyncio.create_task(applied.wait(before, timeout=30))
        await _until_subscribed(throwaway_redis.url, applied.keys.applied_channel)

        throwaway_redis.kill()
        with pytest.raises(QueueUnavailable):
            await applied.publish([before], 8)

        throwaway_redis.start()
        await applied.publish([after], 9)

        # The waiter from before the outage is settled by the first state published after it.
        assert await asyncio.wait_for(waiter, 10) == 9
        assert await applied.wait(after, timeout=5) == 9
    finally:
        await applied.close()


async def test_a_new_waiter_after_an_outage_tries_redis_again_at_once(
    throwaway_redis: RedisServer,
) -> None:
    """The listener backs off between attempts; a waiter arriving while it waits must not be
    refused on the strength of the last failure when Redis is back."""
    applied = RedisAppliedNotices(RedisLink(throwaway_redis.url))
    try:
        await applied.publish(["1700000000000-1"], 1)
        assert await applied.wait("1700000000000-1", timeout=5) == 1
        throwaway_redis.kill()
        refused = False
        for _ in range(40):  # until the listener has noticed the outage
            try:
                await applied.wait("1700000000000-2", timeout=0.25)
            except QueueUnavailable:
                refused = True
                break
            except TimeoutError:
                continue
        assert refused, "waits during the outage must be refused once the listener knows"
        await asyncio.sleep(1.5)  # several failed attempts: the backoff reaches its longest
        throwaway_redis.start()
        await applied.publish(["1700000000000-2"], 2)
        assert await applied.wait("1700000000000-2", timeout=5) == 2
    finally:
        await applied.close()
