"""What only the Redis queue does: key layout, claiming, outages, restarts and lost replies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.queue import QueueUnavailable, TrainEntry, redis_reader
from service.queue.base import IDEMPOTENCY_SECONDS
from service.queue.redis_link import RedisLink
from service.queue.redis_stream import RedisStreamQueue
from service.testing.processes import RedisServer
from service.training.fencing import WriterFenced


def make_entry(size: int = 2) -> TrainEntry:
    inputs = np.ones((size, 3), dtype=np.float32)
    return TrainEntry(5, inputs, np.zeros(size, dtype=np.int64), enqueued_at=time.time())


async def stored(client: aioredis.Redis, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
    """What the stream holds: `(id, fields)` in id order."""
    entries: Any = await client.xrange(stream)
    return [(entry_id.decode(), fields) for entry_id, fields in entries]


async def stored_ids(client: aioredis.Redis, stream: str) -> list[str]:
    return [entry_id for entry_id, _ in await stored(client, stream)]


@pytest.fixture
async def open_queue(redis_url: str, key_prefix: str) -> AsyncIterator[Any]:
    """Opens queues on this test's prefix and closes them all afterwards."""
    opened: list[RedisStreamQueue] = []

    def open_queue(**overrides: Any) -> RedisStreamQueue:
        options: dict[str, Any] = {
            "key_prefix": key_prefix,
            "consumer": "trainer-a",
            "max_pending_examples": 1_000,
        }
        queue = RedisStreamQueue(RedisLink(redis_url), **(options | overrides))
        opened.append(queue)
        return queue

    yield open_queue
    for queue in opened:
        await queue.close()


async def test_enqueue_writes_the_shard_stream_and_counter(
    open_queue: Any, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    queue = open_queue(shard=2)

    entry_id = (await queue.enqueue(make_entry(3))).entry_id

    [(stored_id, fields)] = await stored(redis_client, f"{key_prefix}train:2")
    assert stored_id == entry_id
    assert fields[b"n"] == b"3" and fields[b"c"] == b"5"
    assert TrainEntry.decode(fields[b"e"]).size == 3
    assert await redis_client.get(f"{key_prefix}train:2:pending-examples") == b"3"
    assert await redis_client.hgetall(f"{key_prefix}train:2:pending-by-context") == {b"5": b"3"}
    # The put token expires on its own.
    [token] = [key async for key in redis_client.scan_iter(match=f"{key_prefix}train:put:*")]
    assert 0 < await redis_client.ttl(token) <= IDEMPOTENCY_SECONDS


async def test_pending_claims_stale_entries_of_a_dead_consumer(
    open_queue: Any, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    dead = open_queue(consumer="trainer-a")
    ids = [(await dead.enqueue(make_entry(size))).entry_id for size in (1, 2, 3)]
    await dead.read(max_entries=10, block_ms=100)
    await dead.close()

    patient = open_queue(consumer="trainer-b", claim_idle_ms=60_000)
    assert await patient.pending() == []

    successor = open_queue(consumer="trainer-c", claim_idle_ms=0)
    claimed = await successor.pending()

    assert [queued.entry_id for queued in claimed] == ids
    owners = await redis_client.xpending_range(
        f"{key_prefix}train:0", "trainers", min="-", max="+", count=10
    )
    assert {owner["consumer"] for owner in owners} == {b"trainer-c"}
    await successor.ack(ids)
    assert (await successor.stats()).pending_examples == 0
    assert await successor.pending() == []


async def test_ack_looks_up_sizes_of_entries_delivered_to_an_earlier_process(
    open_queue: Any,
) -> None:
    first = open_queue()
    ids = [(await first.enqueue(make_entry(size))).entry_id for size in (2, 5)]
    await first.read(max_entries=10, block_ms=100)
    await first.close()

    # Same consumer name, as after a container restart, acking without reading pending first.
    second = open_queue()
    await second.ack([ids[1]])

    assert (await second.stats()).pending_examples == 2
    assert [queued.entry_id for queued in await second.pending()] == ids[:1]


async def test_counter_never_goes_negative(
    open_queue: Any, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    queue = open_queue()
    entry_id = (await queue.enqueue(make_entry(4))).entry_id
    await queue.read(max_entries=1, block_ms=100)
    await redis_client.set(f"{key_prefix}train:0:pending-examples", 1)

    await queue.ack([entry_id])

    assert await redis_client.get(f"{key_prefix}train:0:pending-examples") == b"0"


async def test_trim_below_removes_only_acknowledged_history(
    open_queue: Any, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    queue = open_queue()
    stream = f"{key_prefix}train:0"
    ids = [(await queue.enqueue(make_entry(1))).entry_id for _ in range(6)]
    await queue.read(max_entries=4, block_ms=100)
    await queue.ack(ids[:2])

    await queue.trim_below(ids[3])  # ids[2] is still pending, so it stays
    assert await stored_ids(redis_client, stream) == ids[2:]

    await queue.ack(ids[2:4])
    await queue.trim_below(ids[5])  # ids[4] was never delivered, so it stays
    assert await stored_ids(redis_client, stream) == ids[4:]
    assert await redis_client.xlen(stream) == 2


async def test_a_retried_enqueue_is_queued_once(
    open_queue: Any, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    queue = open_queue()
    script = queue._put_script
    calls = 0

    async def reply_lost_once(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        result = await script(**kwargs)
        if calls == 1:
            raise RedisConnectionError("connection lost before the reply")
        return result

    queue._put_script = reply_lost_once
    entry_id = (await queue.enqueue(make_entry(3))).entry_id

    assert calls == 2
    assert await stored_ids(redis_client, f"{key_prefix}train:0") == [entry_id]
    assert (await queue.stats()).pending_examples == 3


async def test_entries_of_a_lost_read_reply_come_with_the_next_read(open_queue: Any) -> None:
    queue = open_queue()
    ids = [(await queue.enqueue(make_entry(1))).entry_id for _ in range(3)]
    xreadgroup = queue._client.xreadgroup

    async def reply_lost(*args: Any, **kwargs: Any) -> Any:
        await xreadgroup(*args, **kwargs)
        raise RedisConnectionError("connection lost before the reply")

    queue._client.xreadgroup = reply_lost
    with pytest.raises(QueueUnavailable):
        await queue.read(max_entries=2, block_ms=100)
    queue._client.xreadgroup = xreadgroup

    recovered = [await queue.read(max_entries=1, block_ms=100) for _ in range(2)]
    new = await queue.read(max_entries=10, block_ms=100)

    # The failed read left ids[0] and ids[1] delivered in Redis; they come first, one per read
    # as asked, and nothing is handed out twice.
    assert [[q.entry_id for q in entries] for entries in recovered] == [ids[:1], ids[1:2]]
    assert [q.entry_id for q in new] == ids[2:]
    assert await queue.read(max_entries=10, block_ms=50) == []


async def test_long_blocks_are_split_below_the_socket_timeout(
    open_queue: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_reader, "BLOCK_SLICE_MS", 100)
    queue = open_queue()

    started = time.monotonic()
    assert await queue.read(max_entries=10, block_ms=350) == []
    assert 0.3 <= time.monotonic() - started < 2.0

    reader = asyncio.create_task(queue.read(max_entries=10, block_ms=2_000))
    await asyncio.sleep(0.25)
    entry_id = (await queue.enqueue(make_entry())).entry_id
    assert [q.entry_id for q in await asyncio.wait_for(reader, 5)] == [entry_id]


async def test_a_refused_command_raises_queue_unavailable(
    open_queue: Any, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    await redis_client.set(f"{key_prefix}train:0", "not a stream")
    queue = open_queue()

    with pytest.raises(QueueUnavailable, match=r"cannot queue a train batch: .* refused"):
        await queue.enqueue(make_entry())
    with pytest.raises(QueueUnavailable, match=r"cannot read train queue stats: .* refused"):
        await queue.stats()


async def test_unreachable_redis_raises_queue_unavailable(key_prefix: str) -> None:
    queue = RedisStreamQueue(
        RedisLink("redis://:secret@127.0.0.1:1/0"), key_prefix=key_prefix, max_pending_examples=10
    )
    started = time.monotonic()
    try:
        with pytest.raises(QueueUnavailable, match=r"127\.0\.0\.1:1") as refused:
            await queue.enqueue(make_entry())
        assert "secret" not in str(refused.value)
        for call in (
            queue.read(max_entries=1, block_ms=100),
            queue.pending(),
            queue.ack(["1-0"]),
            queue.stats(),
            queue.trim_below("1-0"),
            queue.dead_letters(limit=1),
        ):
            with pytest.raises(QueueUnavailable):
                await call
        assert await queue.ping() is False
    finally:
        await queue.close()
    assert time.monotonic() - started < 10


async def test_recovers_when_redis_comes_back_without_its_data(
    throwaway_redis: RedisServer,
) -> None:
    queue = RedisStreamQueue(RedisLink(throwaway_redis.url), max_pending_examples=100)
    try:
        before = (await queue.enqueue(make_entry(2))).entry_id
        assert [q.entry_id for q in await queue.read(max_entries=10, block_ms=100)] == [before]

        throwaway_redis.kill()
        with pytest.raises(QueueUnavailable):
            await queue.enqueue(make_entry(2))
        assert await queue.ping() is False
        with pytest.raises(QueueUnavailable):
            await queue.read(max_entries=10, block_ms=100)

        throwaway_redis.start()
        after = (await queue.enqueue(make_entry(3))).entry_id
        delivered = await queue.read(max_entries=10, block_ms=1_000)
        stats = await queue.stats()

        assert await queue.ping() is True
        assert [q.entry_id for q in delivered] == [after]
        assert stats.pending_examples == 3
        # The entry from before the outage is gone with Redis's data; only the new one is held.
        assert [q.entry_id for q in await queue.pending()] == [after]
        await queue.ack([before, after])
        assert (await queue.stats()).pending_examples == 0
    finally:
        await queue.close()


async def test_a_restart_between_calls_goes_unnoticed(throwaway_redis: RedisServer) -> None:
    queue = RedisStreamQueue(RedisLink(throwaway_redis.url), max_pending_examples=100)
    try:
        await queue.enqueue(make_entry(1))
        # Several pooled connections, all of which the restart below leaves dead.
        await asyncio.gather(*(queue.stats() for _ in range(5)))

        throwaway_redis.kill()
        throwaway_redis.start()
        # One call meets a dead connection and the lost group at once; concurrent callers each
        # meet a dead connection of their own.
        nothing = await queue.read(max_entries=10, block_ms=100)
        counted = await asyncio.gather(*(queue.stats() for _ in range(5)))
        entry_id = (await queue.enqueue(make_entry(2))).entry_id
        delivered = await queue.read(max_entries=10, block_ms=1_000)

        assert nothing == []
        assert [stats.pending_examples for stats in counted] == [0] * 5
        assert [q.entry_id for q in delivered] == [entry_id]
        assert (await queue.stats()).pending_examples == 2
    finally:
        await queue.close()


async def test_a_replaced_writer_can_acknowledge_trim_or_set_aside_nothing(
    open_queue: Any, redis_client: aioredis.Redis
) -> None:
    old = open_queue(consumer="trainer-0")
    await old.fence(1)
    for _ in range(3):
        await old.enqueue(make_entry())
    entries = await old.read(max_entries=3, block_ms=0)
    await old.ack([entries[0].entry_id])
    new = open_queue(consumer="trainer-0")
    await new.fence(2)  # the next writer claimed the shard
    before = await stored(redis_client, old.keys.stream)
    pending_before = await redis_client.get(old.keys.pending_examples)
    for refused in (
        old.ack([entries[1].entry_id]),
        old.trim_below(entries[2].entry_id),
        old.dead_letter([(entries[1], "no reason")]),
    ):
        with pytest.raises(WriterFenced, match="writer token 1 is older than 2"):
            await refused
    assert await stored(redis_client, old.keys.stream) == before
    assert await redis_client.get(old.keys.pending_examples) == pending_before
    assert await redis_client.xlen(old.keys.dead_letters) == 0
    await new.ack([entries[1].entry_id, entries[2].entry_id])  # the new writer's go through
    assert await redis_client.get(old.keys.pending_examples) == b"0"
