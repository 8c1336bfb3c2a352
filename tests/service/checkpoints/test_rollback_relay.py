"""Rollbacks relayed through Redis: what the API hears when the worker answers, and when not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from service.checkpoints.rollback import RollbackFailed, RollbackNotDone, RollbackUnanswered
from service.checkpoints.rollback_inbox import ControlInbox
from service.checkpoints.rollback_sender import WAIT_SLICE_SECONDS, RedisRollback
from service.queue.base import QueueUnavailable
from service.queue.keys import ShardKeys


class KeptVersions:
    """A worker's trainer that keeps versions 2 and 3."""

    def __init__(self) -> None:
        self.restored: list[int] = []

    async def rollback(self, version: int) -> int:
        if version not in (2, 3):
            raise RollbackFailed(f"no kept checkpoint has model version {version}")
        self.restored.append(version)
        return 10


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    # A socket timeout shorter than some waits below, yet longer than one BLPOP slice.
    connection = aioredis.Redis.from_url(redis_url, socket_timeout=WAIT_SLICE_SECONDS + 0.5)
    yield connection
    await connection.aclose()


async def _serve_after(inbox: ControlInbox, target: KeptVersions, delay: float) -> None:
    await asyncio.sleep(delay)
    assert await inbox.serve_one(target) is True


async def test_the_worker_answers_after_longer_than_the_socket_timeout(
    client: aioredis.Redis, key_prefix: str
) -> None:
    keys = ShardKeys(key_prefix)
    target = KeptVersions()
    worker = asyncio.create_task(
        _serve_after(ControlInbox(client, keys), target, WAIT_SLICE_SECONDS + 1.0)
    )
    assert await RedisRollback(client, keys, timeout=10).rollback(2) == 10
    await worker
    assert target.restored == [2]


async def test_a_missing_version_is_the_workers_refusal(
    client: aioredis.Redis, key_prefix: str
) -> None:
    keys = ShardKeys(key_prefix)
    worker = asyncio.create_task(_serve_after(ControlInbox(client, keys), KeptVersions(), 0.1))
    with pytest.raises(RollbackFailed, match="no kept checkpoint has model version 7"):
        await RedisRollback(client, keys, timeout=10).rollback(7)
    await worker


async def test_a_command_no_worker_took_is_withdrawn(
    client: aioredis.Redis, key_prefix: str
) -> None:
    keys = ShardKeys(key_prefix)
    with pytest.raises(RollbackNotDone, match=r"did not take the command within 0\.5 s"):
        await RedisRollback(client, keys, timeout=0.5).rollback(2)
    # A worker that starts later finds nothing to run.
    target = KeptVersions()
    assert await ControlInbox(client, keys).serve_one(target) is False
    assert target.restored == []


async def test_a_taken_command_without_an_answer_is_unanswered(
    client: aioredis.Redis, key_prefix: str
) -> None:
    keys = ShardKeys(key_prefix)

    async def take_and_stay_silent() -> None:
        while await client.lpop(keys.control) is None:
            await asyncio.sleep(0.05)

    silent_worker = asyncio.create_task(take_and_stay_silent())
    with pytest.raises(RollbackUnanswered, match="took the rollback but did not answer"):
        await RedisRollback(client, keys, timeout=1).rollback(2)
    await silent_worker


async def test_unreachable_redis_means_the_rollback_did_not_happen() -> None:
    unreachable = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    with pytest.raises(RollbackNotDone, match="cannot be reached through Redis"):
        await RedisRollback(unreachable, ShardKeys()).rollback(2)
    await unreachable.aclose()


async def test_unreachable_redis_is_the_workers_queue_outage() -> None:
    unreachable = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)

    class NeverCalled:
        async def rollback(self, version: int) -> int:
            raise AssertionError("no command can have been read")

    with pytest.raises(QueueUnavailable, match="cannot read admin commands from Redis"):
        await ControlInbox(unreachable, ShardKeys()).serve_one(NeverCalled())
    await unreachable.aclose()
