"""The one contract every applied-notices implementation keeps, run in-process and on Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from service.queue import AppliedNotices
from service.queue.memory_applied import InProcessAppliedNotices
from service.queue.redis_applied import RedisAppliedNotices
from service.queue.redis_link import RedisLink

# Waiting needs no queued entry, so plain ids in increasing order stand for entries.
IDS = [f"1700000000000-{sequence}" for sequence in range(50)]


@pytest.fixture(params=["memory", "redis"])
async def applied(request: pytest.FixtureRequest) -> AsyncIterator[AppliedNotices]:
    notices: AppliedNotices
    if request.param == "memory":
        notices = InProcessAppliedNotices()
    else:
        notices = RedisAppliedNotices(
            RedisLink(request.getfixturevalue("redis_url")),
            key_prefix=request.getfixturevalue("key_prefix"),
        )
    yield notices
    await notices.close()


async def test_refusals_reach_waiting_producers(applied: AppliedNotices) -> None:
    kept, refused = IDS[:2]
    await applied.publish([kept, refused], 4, {refused: "loss was not finite"})
    assert await applied.wait(refused, timeout=5) == 4
    assert await applied.refusal(refused) == "loss was not finite"
    assert await applied.refusal(kept) is None


async def test_wait_registered_before_publish(applied: AppliedNotices) -> None:
    waiter = asyncio.create_task(applied.wait(IDS[0], timeout=5))
    await asyncio.sleep(0.1)
    assert not waiter.done()

    await applied.publish([IDS[0]], 7)

    assert await asyncio.wait_for(waiter, timeout=5) == 7


async def test_wait_after_publish_returns_at_once(applied: AppliedNotices) -> None:
    older, newer = IDS[:2]
    await applied.publish([newer, older], 3)

    started = time.monotonic()
    assert await applied.wait(newer, timeout=5) == 3
    assert await applied.wait(older, timeout=5) == 3
    assert time.monotonic() - started < 1.0


async def test_wait_times_out(applied: AppliedNotices) -> None:
    published, waited = IDS[:2]
    await applied.publish([published], 1)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await applied.wait(waited, timeout=0.3)

    assert 0.25 <= time.monotonic() - started < 2.0


async def test_fifty_concurrent_waiters_each_get_their_version(applied: AppliedNotices) -> None:
    waiters = [asyncio.create_task(applied.wait(i, timeout=10)) for i in IDS]
    await asyncio.sleep(0.1)

    await applied.publish(IDS[:25], 1)
    done, _ = await asyncio.wait(waiters[:25], timeout=5)
    late = waiters[25:]
    assert len(done) == 25
    assert not any(waiter.done() for waiter in late)
    await applied.publish(IDS[25:], 2)
    results = await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)

    assert results == [1] * 25 + [2] * 25
