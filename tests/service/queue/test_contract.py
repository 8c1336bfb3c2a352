"""The one contract every train queue keeps, run against the in-process queue and Redis Streams.

The applied notices have their own contract (test_applied_contract.py)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from service.queue import (
    IdempotencyConflict,
    QueuedEntry,
    QueueFull,
    QueueStats,
    TrainEntry,
    TrainQueue,
    entry_id_key,
)
from service.queue.memory_stream import IdempotencyMemory, InProcessQueue
from service.queue.redis_link import RedisLink
from service.queue.redis_stream import RedisStreamQueue

LIMIT = 20
CONTEXT_LIMIT = 12  # one context's share of the queue
RETRY_AFTER = 2


def make_entry(size: int = 2, context_index: int = 0, features: int = 3) -> TrainEntry:
    """A batch whose values encode its shape, so round trips are checkable."""
    inputs = np.arange(size * features, dtype=np.float32).reshape(size, features) / 7
    labels = np.arange(size, dtype=np.int64) % 10
    return TrainEntry(context_index, inputs, labels, enqueued_at=time.time())


@dataclass
class Backend:
    """Opens queues on one backing store; `reopen` is what a restarted trainer would see."""

    name: str
    open: Callable[[], TrainQueue]
    open_shard: Callable[[int], TrainQueue]
    opened: list[TrainQueue] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue = self._open()

    def _open(self) -> TrainQueue:
        queue = self.open()
        self.opened.append(queue)
        return queue

    async def other_shard(self) -> TrainQueue:
        """The queue of another shard of the same process (or deployment)."""
        return self.open_shard(1)

    async def reopen(self) -> TrainQueue:
        """A new handle after a trainer restart; the in-process queue lives in the process."""
        if self.name == "memory":
            return self.queue
        await self.queue.close()
        self.queue = self._open()
        return self.queue


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        # The shards of one process share what they remember of idempotency keys.
        memory = IdempotencyMemory()

        def in_process(shard: int) -> TrainQueue:
            return InProcessQueue(
                max_pending_examples=LIMIT,
                max_pending_per_context=CONTEXT_LIMIT,
                retry_after_seconds=RETRY_AFTER,
                idempotency=memory,
            )

        first = in_process(0)
        backend = Backend("memory", lambda: first, in_process)
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("key_prefix")

        def on_redis(shard: int) -> TrainQueue:
            return RedisStreamQueue(
                RedisLink(url),
                shard=shard,
                consumer=f"trainer-{shard}",
                max_pending_examples=LIMIT,
                max_pending_per_context=CONTEXT_LIMIT,
                retry_after_seconds=RETRY_AFTER,
                key_prefix=prefix,
            )

        backend = Backend("redis", lambda: on_redis(0), on_redis)
    yield backend
    for queue in backend.opened:
        await queue.close()


@pytest.fixture
def queue(backend: Backend) -> TrainQueue:
    return backend.queue


def ids_of(entries: list[QueuedEntry]) -> list[str]:
    return [queued.entry_id for queued in entries]


async def enqueue_all(queue: TrainQueue, sizes: list[int]) -> list[str]:
    return [(await queue.enqueue(make_entry(size))).entry_id for size in sizes]


async def test_enqueue_returns_increasing_stream_ids(queue: TrainQueue) -> None:
    ids = await enqueue_all(queue, [1, 1, 1, 1, 1])

    assert all(re.fullmatch(r"\d+-\d+", entry_id) for entry_id in ids)
    keys = [entry_id_key(entry_id) for entry_id in ids]
    assert keys == sorted(keys)
    assert len(set(keys)) == 5


async def test_a_repeated_idempotency_key_queues_once(queue: TrainQueue) -> None:
    first = (await queue.enqueue(make_entry(3), idempotency_key="client-batch-1")).entry_id
    again = (await queue.enqueue(make_entry(3), idempotency_key="client-batch-1")).entry_id
    other = (await queue.enqueue(make_entry(2), idempotency_key="client-batch-2")).entry_id

    assert again == first and other != first
    assert (await queue.stats()).pending_examples == 5
    assert ids_of(await queue.read(max_entries=10, block_ms=10)) == [first, other]


async def test_an_idempotency_key_is_bound_to_its_entry(queue: TrainQueue) -> None:
    first = await queue.enqueue(make_entry(3, context_index=1), idempotency_key="k")
    again = await queue.enqueue(make_entry(3, context_index=1), idempotency_key="k")
    assert (first.repeated, again.repeated, again.entry_id) == (False, True, first.entry_id)
    for different in (make_entry(1, context_index=1), make_entry(3, context_index=2)):
        with pytest.raises(IdempotencyConflict, match="first used with a different batch"):
            await queue.enqueue(different, idempotency_key="k")
    assert (await queue.stats()).pending_examples == 3


async def test_read_delivers_in_order_up_to_max_entries(queue: TrainQueue) -> None:
    ids = await enqueue_all(queue, [1, 1, 1, 1, 1])

    first = await queue.read(max_entries=3, block_ms=100)
    rest = await queue.read(max_entries=10, block_ms=100)

    assert ids_of(first) == ids[:3]
    assert ids_of(rest) == ids[3:]
    assert await queue.read(max_entries=10, block_ms=50) == []


async def test_read_returns_nothing_after_block_ms(queue: TrainQueue) -> None:
    started = time.monotonic()
    entries = await queue.read(max_entries=10, block_ms=300)
    elapsed = time.monotonic() - started

    assert entries == []
    assert 0.25 <= elapsed < 2.0


async def test_read_wakes_up_for_an_entry_queued_while_blocked(queue: TrainQueue) -> None:
    reader = asyncio.create_task(queue.read(max_entries=10, block_ms=5_000))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    entry_id = (await queue.enqueue(make_entry())).entry_id

    entries = await asyncio.wait_for(reader, timeout=5)

    assert ids_of(entries) == [entry_id]
    assert time.monotonic() - started < 2.0


async def test_entry_round_trips_arrays_and_context(queue: TrainQueue) -> None:
    sent = make_entry(size=4, context_index=1234, features=5)
    entry_id = (await queue.enqueue(sent)).entry_id

    [received] = await queue.read(max_entries=1, block_ms=100)

    assert received.entry_id == entry_id
    assert received.entry.context_index == 1234
    assert received.entry.size == 4
    assert received.entry.inputs.dtype == np.float32
    assert received.entry.labels.dtype == np.int64
    np.testing.assert_array_equal(received.entry.inputs, sent.inputs)
    np.testing.assert_array_equal(received.entry.labels, sent.labels)
    assert received.entry.enqueued_at == sent.enqueued_at


async def test_pending_returns_delivered_unacked_entries_after_restart(backend: Backend) -> None:
    ids = await enqueue_all(backend.queue, [1, 2, 3])
    delivered = await backend.queue.read(max_entries=10, block_ms=100)
    await backend.queue.ack([ids[0]])

    restarted = await backend.reopen()
    pending = await restarted.pending()

    assert ids_of(pending) == ids[1:]
    assert [queued.entry.size for queued in pending] == [2, 3]
    for before, after in zip(delivered[1:], pending, strict=True):
        np.testing.assert_array_equal(before.entry.inputs, after.entry.inputs)
    # Pending entries are not handed out again as new ones.
    assert await restarted.read(max_entries=10, block_ms=50) == []


async def test_pending_leaves_out_undelivered_entries(queue: TrainQueue) -> None:
    ids = await enqueue_all(queue, [1, 1, 1])
    await queue.read(max_entries=1, block_ms=100)

    assert ids_of(await queue.pending()) == ids[:1]
    assert ids_of(await queue.read(max_entries=10, block_ms=100)) == ids[1:]


async def test_acked_entries_are_not_pending_after_restart(backend: Backend) -> None:
    ids = await enqueue_all(backend.queue, [1, 1])
    await backend.queue.read(max_entries=10, block_ms=100)
    await backend.queue.ack(ids)

    restarted = await backend.reopen()

    assert await restarted.pending() == []


async def test_ack_releases_examples_exactly_once(queue: TrainQueue) -> None:
    ids = await enqueue_all(queue, [2, 3])
    await queue.read(max_entries=10, block_ms=100)

    await queue.ack([ids[0]])
    await queue.ack([ids[0]])
    once = await queue.stats()
    left_once = ids_of(await queue.pending())
    await queue.ack(ids)
    done = await queue.stats()

    assert (once.pending_examples, left_once) == (3, ids[1:])
    assert (done.pending_examples, await queue.pending()) == (0, [])


async def test_ack_of_an_undelivered_entry_changes_nothing(queue: TrainQueue) -> None:
    [entry_id] = await enqueue_all(queue, [4])

    await queue.ack([entry_id])

    assert (await queue.stats()).pending_examples == 4
    assert ids_of(await queue.read(max_entries=10, block_ms=100)) == [entry_id]


async def test_enqueue_over_the_limit_raises_queue_full_until_acked(queue: TrainQueue) -> None:
    first = (await queue.enqueue(make_entry(12))).entry_id
    await queue.enqueue(make_entry(8, context_index=1))  # exactly at the limit of 20

    with pytest.raises(QueueFull) as refused:
        await queue.enqueue(make_entry(1, context_index=2))

    assert refused.value.retry_after == RETRY_AFTER
    assert "20 pending examples" in str(refused.value)
    assert (await queue.stats()).pending_examples == 20

    await queue.read(max_entries=1, block_ms=100)
    await queue.ack([first])
    accepted = (await queue.enqueue(make_entry(12))).entry_id

    assert entry_id_key(accepted) > entry_id_key(first)
    assert (await queue.stats()).pending_examples == 20


async def test_stats_count_unacknowledged_examples_and_their_age(queue: TrainQueue) -> None:
    assert await queue.stats() == QueueStats(0, 0.0)
    ids = await enqueue_all(queue, [2, 3, 4])
    await asyncio.sleep(0.25)

    waiting = await queue.stats()
    await queue.read(max_entries=2, block_ms=100)
    delivered = await queue.stats()
    await queue.ack(ids[:2])
    acked = await queue.stats()

    assert waiting.pending_examples == 9
    assert 0.2 <= waiting.oldest_age_seconds < 5.0
    # Delivery alone changes nothing: entries count until acknowledged.
    assert delivered.pending_examples == 9
    assert acked.pending_examples == 4
    assert 0.2 <= acked.oldest_age_seconds < 5.0
    assert ids_of(await queue.pending()) == []
    assert ids_of(await queue.read(max_entries=10, block_ms=100)) == ids[2:]


async def test_trim_below_keeps_entries_from_the_given_id(queue: TrainQueue) -> None:
    ids = await enqueue_all(queue, [1, 1, 1, 1, 1])
    await queue.read(max_entries=10, block_ms=100)
    await queue.ack(ids[:3])

    await queue.trim_below(ids[3])

    assert ids_of(await queue.pending()) == ids[3:]
    assert (await queue.stats()).pending_examples == 2


async def test_trim_below_never_drops_unacknowledged_entries(queue: TrainQueue) -> None:
    ids = await enqueue_all(queue, [1, 1, 1, 1])
    await queue.read(max_entries=2, block_ms=100)

    await queue.trim_below(ids[3])

    assert ids_of(await queue.pending()) == ids[:2]
    assert ids_of(await queue.read(max_entries=10, block_ms=100)) == ids[2:]
    assert (await queue.stats()).pending_examples == 4


async def test_ping_answers_true(queue: TrainQueue) -> None:
    assert await queue.ping() is True


async def test_dead_lettered_entries_leave_the_queue_with_their_reason(
    backend: Backend, queue: TrainQueue
) -> None:
    ids = await enqueue_all(queue, [2, 3, 4])
    delivered = await queue.read(max_entries=10, block_ms=100)
    await queue.dead_letter([(delivered[1], "training on it made the weights non-finite")])
    await queue.dead_letter([(delivered[1], "a second time changes nothing")])

    assert (await queue.stats()).pending_examples == 6
    letters, total = await queue.dead_letters(limit=10)
    assert total == 1
    assert letters[0].entry_id == ids[1]
    assert letters[0].reason == "training on it made the weights non-finite"
    assert (letters[0].context_index, letters[0].examples) == (0, 3)
    again = await backend.reopen()  # a restarted trainer never sees it again
    assert ids_of(await again.pending()) == [ids[0], ids[2]]


async def test_a_context_over_its_share_is_refused_and_the_others_are_not(
    queue: TrainQueue,
) -> None:
    first = (await queue.enqueue(make_entry(10, context_index=3))).entry_id
    await queue.enqueue(make_entry(2, context_index=3))  # exactly its share of 12

    with pytest.raises(QueueFull) as refused:
        await queue.enqueue(make_entry(1, context_index=3))

    assert refused.value.retry_after == RETRY_AFTER
    assert "this context has 12 examples pending" in str(refused.value)
    assert "share of 12" in str(refused.value)
    await queue.enqueue(make_entry(8, context_index=4))  # another context still gets in
    assert (await queue.stats()).pending_examples == 20

    delivered = await queue.read(max_entries=3, block_ms=100)
    await queue.ack([first])
    await queue.dead_letter([(delivered[1], "set aside")])
    assert (await queue.stats()).pending_examples == 8
    await queue.enqueue(make_entry(12, context_index=3))  # its share is free again


async def test_an_idempotency_key_is_one_batch_across_every_shard(backend: Backend) -> None:
    entry = make_entry(2, context_index=1)
    first = await backend.queue.enqueue(entry, "client:key-1")
    other_shard = await backend.other_shard()
    try:
        again = await other_shard.enqueue(entry, "client:key-1")
        assert (again.entry_id, again.repeated) == (first.entry_id, True)
        with pytest.raises(IdempotencyConflict):
            await other_shard.enqueue(make_entry(3, context_index=1), "client:key-1")
        assert (await other_shard.stats()).pending_examples == 0
    finally:
        await other_shard.close()
