"""The Redis Streams train queue: a durable log read by the single trainer through a consumer group.

Layout (names in `service.queue.keys`): one stream per shard whose entries are
`{"e": TrainEntry.encode(), "n": examples}`, and a counter of unacknowledged examples that Lua
scripts (`lua/*.lua`) keep in step with the stream. Entry ids are the stream ids.

Failures: every call maps a Redis failure to `QueueUnavailable`, and a lost connection is tried
once more (`RedisLink.call`), which is safe because every operation is made repeatable:

- `enqueue` carries a one-off token, so an entry whose reply was lost is not queued twice;
- `ack` decrements the counter only for ids that XACK really acknowledged;
- a `read` that failed after Redis delivered entries leaves them in this consumer's pending list,
  so the next `read` hands those out first (`redis_reader`).

A Redis restart without persistence loses the consumer group; it is recreated from id `0` on the
first `NOGROUP` error (`redis_group`). Entries must leave the stream only through `ack`,
`dead_letter` and `trim_below`: an entry deleted by hand while unacknowledged keeps its examples
in the counter.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from functools import partial

from service.entry_ids import entry_id_key
from service.queue.base import (
    IDEMPOTENCY_SECONDS,
    ContextShareFull,
    DeadLetter,
    Enqueued,
    IdempotencyConflict,
    QueuedEntry,
    QueueFull,
    QueueStats,
    QueueUnavailable,
    TrainEntry,
    TrainQueue,
)
from service.queue.keys import DEFAULT_KEY_PREFIX, ShardKeys
from service.queue.redis_dead_letters import RedisDeadLetters
from service.queue.redis_group import ConsumerGroup
from service.queue.redis_link import RedisLink, text
from service.queue.redis_reader import StreamReader


class RedisStreamQueue(TrainQueue):
    """A train queue on a Redis stream, read by this process's consumer in the `trainers` group.

    Args:
        link: The connection to Redis; closing the queue closes it.
        shard: The shard whose stream this queue serves.
        consumer: This reader's name in the group; a restarted trainer that keeps its name finds
            its own pending entries at once, others only after `claim_idle_ms`.
        max_pending_examples: `enqueue` refuses batches beyond this many unacknowledged examples.
        max_pending_per_context: ... and beyond this many of one context (None: no share).
        retry_after_seconds: The `Retry-After` hint carried by `QueueFull`.
        key_prefix: Prefix of every key, so deployments and tests can share one Redis.
        claim_idle_ms: `pending` takes over entries another consumer has held unacknowledged
            this long. Keep it above the checkpoint interval: a live trainer holds entries
            until its next checkpoint.
    """

    durable = True

    def __init__(
        self,
        link: RedisLink,
        *,
        shard: int = 0,
        consumer: str | None = None,
        max_pending_examples: int,
        max_pending_per_context: int | None = None,
        retry_after_seconds: int = 1,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.max_pending_examples = max_pending_examples
        self.max_pending_per_context = max_pending_per_context
        self.retry_after_seconds = retry_after_seconds
        self.keys = ShardKeys(key_prefix, shard)
        self._link = link
        self._client = link.client
        self._group = ConsumerGroup(link, self.keys)
        self._reader = StreamReader(
            link,
            self.keys,
            self._group,
            consumer=consumer or f"{socket.gethostname()}-{os.getpid()}",
            claim_idle_ms=claim_idle_ms,
            set_aside=partial(self._dead_letter_one, context=None),
        )
        self._dead_letters = RedisDeadLetters(link, self.keys, self._group)
        self._put_script = link.script("put")
        self._ack_script = link.script("ack", needs=("release", "fence"))
        self._trim_script = link.script("trim", needs=("helpers", "fence"))
        self._stats_script = link.script("stats", needs=("helpers",))
        self._fence_script = link.script("fence")
        self._token = ""  # the writer token the trainer's writes carry; '' for none

    async def enqueue(self, entry: TrainEntry, idempotency_key: str | None = None) -> Enqueued:
        token = self.keys.put_token(idempotency_key or uuid.uuid4().hex)
        share = self.max_pending_per_context
        outcome, value = await self._group.call(
            partial(
                self._put_script,
                keys=[
                    self.keys.stream,
                    self.keys.pending_examples,
                    token,
                    self.keys.pending_by_context,
                ],
                args=[
                    self.max_pending_examples,
                    entry.size,
                    entry.encode(),
                    IDEMPOTENCY_SECONDS,
                    entry.fingerprint(),
                    entry.context_index,
                    "" if share is None else share,
                ],
            ),
            "queue a train batch",
        )
        if outcome == 0:
            raise QueueFull(self.retry_after_seconds, int(value), self.max_pending_examples)
        if outcome == 4:
            assert share is not None
            raise ContextShareFull(self.retry_after_seconds, int(value), share)
        if outcome == 2:
            raise IdempotencyConflict(idempotency_key or "")
        # A one-off token seen again is this very call, retried after a lost reply.
        return Enqueued(text(value), repeated=outcome == 3 and idempotency_key is not None)

    async def read(self, max_entries: int, block_ms: int) -> list[QueuedEntry]:
        return await self._reader.read(max_entries, block_ms)

    async def pending(self) -> list[QueuedEntry]:
        return await self._reader.pending()

    async def fence(self, token: int) -> None:
        self._token = str(token)
        await self._group.call(
            partial(self._fence_script, keys=[self.keys.fence], args=[self._token]),
            "fence out older writers",
            needs_group=False,
        )

    async def ack(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        keys = [
            self.keys.stream,
            self.keys.pending_examples,
            self.keys.pending_by_context,
            self.keys.fence,
        ]
        await self._group.call(
            partial(self._ack_script, keys=keys, args=[self._token, self.keys.group, *entry_ids]),
            "acknowledge train entries",
        )
        self._reader.forget(entry_ids)

    async def dead_letter(self, entries: Sequence[tuple[QueuedEntry, str]]) -> None:
        for queued, reason in entries:
            await self._dead_letter_one(queued.entry_id, reason, queued.entry.context_index)

    async def _dead_letter_one(self, entry_id: str, reason: str, context: int | None) -> None:
        await self._dead_letters.set_aside(entry_id, reason, context, self._token)
        self._reader.forget([entry_id])

    async def dead_letters(self, limit: int) -> tuple[list[DeadLetter], int]:
        return await self._dead_letters.newest(limit)

    async def trim_below(self, entry_id: str) -> None:
        """Drops entries with ids below `entry_id`; never `entry_id` itself or anything newer.

        Exact `XTRIM MINID`, lowered to the oldest entry that is still pending or undelivered, so
        a trim can only ever remove acknowledged history.
        """
        await self._group.call(
            partial(
                self._trim_script,
                keys=[self.keys.stream, self.keys.fence],
                args=[self._token, self.keys.group, entry_id],
            ),
            "trim the train stream",
        )

    async def stats(self) -> QueueStats:
        examples, oldest, now_ms = await self._group.call(
            partial(
                self._stats_script,
                keys=[self.keys.stream, self.keys.pending_examples],
                args=[self.keys.group],
            ),
            "read train queue stats",
        )
        oldest_id = text(oldest)
        age = (int(now_ms) - entry_id_key(oldest_id)[0]) / 1000 if oldest_id else 0.0
        return QueueStats(int(examples), max(0.0, age))

    async def ping(self) -> bool:
        try:
            return bool(await self._group.call(self._client.ping, "ping Redis", needs_group=False))
        except QueueUnavailable:
            return False

    async def close(self) -> None:
        await self._link.close()
