"""The Redis Streams train queue: a durable log read by the single trainer through a consumer group.

Layout (names in `service.queue.keys`): one stream per shard whose entries are
`{"e": TrainEntry.encode(), "n": examples}`, and a counter of unacknowledged examples that Lua
scripts (`lua/*.lua`) keep in step with the stream. Entry ids are the stream ids.

Failures: every call maps a Redis failure to `QueueUnavailable`, and a lost connection is tried
once more (`RedisLink.call`), which is safe because every operation is made repeatable:

- `put` carries a one-off token, so a put whose reply was lost is not queued twice;
- `ack` decrements the counter only for ids that XACK really acknowledged;
- a `read` that failed after Redis delivered entries leaves them in this consumer's pending list,
  so the next `read` hands those out first.

A Redis restart without persistence loses the consumer group; it is recreated from id `0` on the
first `NOGROUP` error. Entries must leave the stream only through `ack` and `trim_below`: an entry
deleted by hand while unacknowledged keeps its examples in the counter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from service.queue.base import (
    DEAD_LETTERS_KEPT,
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
from service.queue.entry_ids import entry_id_key
from service.queue.keys import DEFAULT_KEY_PREFIX, ShardKeys
from service.queue.redis_link import RedisLink, text

logger = logging.getLogger(__name__)

T = TypeVar("T")

BLOCK_SLICE_MS = 3_000
"""Longest single XREADGROUP BLOCK, below the socket timeout so a quiet stream is not an error."""

PAGE = 256
"""Entries per XREADGROUP / XAUTOCLAIM page when listing pending entries."""


def _stream_page(response: Any) -> list[tuple[Any, Any]]:
    """The `(id, fields)` pairs of a one-stream XREADGROUP reply, in either reply shape."""
    if not response:
        return []
    if isinstance(response, dict):  # RESP3-style replies map stream -> entries
        return list(next(iter(response.values())))
    return list(response[0][1])


class RedisStreamQueue(TrainQueue):
    """A train queue on a Redis stream, read by this process's consumer in the `trainers` group.

    Args:
        link: The connection to Redis; closing the queue closes it.
        shard: The shard whose stream this queue serves.
        consumer: This reader's name in the group; a restarted trainer that keeps its name finds
            its own pending entries at once, others only after `claim_idle_ms`.
        max_pending_examples: `put` refuses batches beyond this many unacknowledged examples.
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
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.keys = ShardKeys(key_prefix, shard)
        self._claim_idle_ms = claim_idle_ms
        self._link = link
        self._client = self._link.client
        self._put_script = self._link.script("put")
        self._ack_script = self._link.script("ack", needs=("release", "fence"))
        self._trim_script = self._link.script("trim", needs=("helpers", "fence"))
        self._stats_script = self._link.script("stats", needs=("helpers",))
        self._dead_letter_script = self._link.script("dead_letter", needs=("release", "fence"))
        self._fence_script = self._link.script("fence")
        self._token = ""  # the writer token the trainer's writes carry; '' for none
        # Entries that could not be decoded while reading, set aside after the read.
        self._undecodable: dict[str, str] = {}
        self._group_ready = False
        # Examples per entry handed to the trainer and not yet acked: `ack` gets ids only.
        self._sizes: dict[str, int] = {}
        # Set when a read may have failed after Redis delivered entries to this consumer.
        self._unseen_deliveries = False

    async def enqueue(self, entry: TrainEntry, idempotency_key: str | None = None) -> Enqueued:
        token = self.keys.put_token(idempotency_key or uuid.uuid4().hex)
        share = self.max_pending_per_context
        outcome, value = await self._call(
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
        # A one-off token seen again is this very put, retried after a lost reply.
        return Enqueued(text(value), repeated=outcome == 3 and idempotency_key is not None)

    async def read(self, max_entries: int, block_ms: int) -> list[QueuedEntry]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(block_ms, 0) / 1000
        while True:
            left_ms = int((deadline - loop.time()) * 1000)
            block = min(left_ms, BLOCK_SLICE_MS)
            entries = await self._call(
                partial(self._read_once, max_entries, block), "read train entries"
            )
            await self._bury_undecodable()
            if entries or left_ms <= BLOCK_SLICE_MS:
                return entries

    async def pending(self) -> list[QueuedEntry]:
        own, stale = await self._call(self._pending_once, "list pending train entries")
        await self._bury_undecodable()
        by_id = {queued.entry_id: queued for queued in [*own, *stale]}
        entries = sorted(by_id.values(), key=lambda queued: entry_id_key(queued.entry_id))
        self._remember(entries)
        # Everything this consumer holds has now been handed out, lost deliveries included.
        self._unseen_deliveries = False
        return entries

    async def fence(self, token: int) -> None:
        self._token = str(token)
        await self._call(
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
        await self._call(
            partial(self._ack_script, keys=keys, args=[self._token, self.keys.group, *entry_ids]),
            "acknowledge train entries",
        )
        for entry_id in entry_ids:
            self._sizes.pop(entry_id, None)

    async def dead_letter(self, entries: Sequence[tuple[QueuedEntry, str]]) -> None:
        for queued, reason in entries:
            await self._dead_letter_one(queued.entry_id, reason, queued.entry.context_index)

    async def _dead_letter_one(self, entry_id: str, reason: str, context: int | None) -> None:
        await self._call(
            partial(
                self._dead_letter_script,
                keys=[
                    self.keys.stream,
                    self.keys.pending_examples,
                    self.keys.dead_letters,
                    self.keys.pending_by_context,
                    self.keys.fence,
                ],
                args=[
                    self._token,
                    self.keys.group,
                    entry_id,
                    reason,
                    "" if context is None else context,
                    DEAD_LETTERS_KEPT,
                ],
            ),
            "set a train entry aside",
        )
        self._sizes.pop(entry_id, None)

    async def _bury_undecodable(self) -> None:
        """Sets aside the entries the last read could not decode, so the queue moves on."""
        while self._undecodable:
            entry_id, reason = next(iter(self._undecodable.items()))
            logger.warning("setting aside train entry %s: %s", entry_id, reason)
            await self._dead_letter_one(entry_id, reason, None)
            del self._undecodable[entry_id]

    async def dead_letters(self, limit: int) -> tuple[list[DeadLetter], int]:
        async def newest() -> tuple[list[Any], int]:
            page: list[Any] = list(
                await self._client.xrevrange(self.keys.dead_letters, count=limit) or []
            )
            return page, int(await self._client.xlen(self.keys.dead_letters))

        page, total = await self._call(newest, "list dead-lettered entries", needs_group=False)
        letters = []
        for stream_id, fields in page:
            context = text(fields.get(b"c", b""))
            letters.append(
                DeadLetter(
                    entry_id=text(fields[b"id"]),
                    reason=text(fields[b"reason"]),
                    context_index=int(context) if context else None,
                    examples=int(fields.get(b"n", 0)),
                    dead_lettered_at=entry_id_key(text(stream_id))[0] / 1000,
                )
            )
        return letters, total

    async def trim_below(self, entry_id: str) -> None:
        """Drops entries with ids below `entry_id`; never `entry_id` itself or anything newer.

        Exact `XTRIM MINID`, lowered to the oldest entry that is still pending or undelivered, so
        a trim can only ever remove acknowledged history.
        """
        await self._call(
            partial(
                self._trim_script,
                keys=[self.keys.stream, self.keys.fence],
                args=[self._token, self.keys.group, entry_id],
            ),
            "trim the train stream",
        )

    async def stats(self) -> QueueStats:
        examples, oldest, now_ms = await self._call(
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
            return bool(await self._call(self._client.ping, "ping Redis", needs_group=False))
        except QueueUnavailable:
            return False

    async def close(self) -> None:
        await self._link.close()

    async def _call(
        self, operation: Callable[[], Awaitable[T]], doing: str, *, needs_group: bool = True
    ) -> T:
        """Runs a repeatable operation through the link, in the consumer group if it needs one;
        a group Redis lost is created again."""
        if not needs_group:
            return await self._link.call(operation, doing)

        async def in_group() -> T:
            if not self._group_ready:
                await self._create_group()
            return await operation()

        return await self._link.call(in_group, doing, on_lost_group=self._forget_group)

    def _forget_group(self) -> None:
        self._group_ready = False

    async def _create_group(self) -> None:
        # From id 0, so entries queued before the group existed (after data loss) are delivered.
        try:
            await self._client.xgroup_create(
                self.keys.stream, self.keys.group, id="0", mkstream=True
            )
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    async def _read_once(self, max_entries: int, block_ms: int) -> list[QueuedEntry]:
        if self._unseen_deliveries:
            unseen = [q for q in await self._own_pending() if q.entry_id not in self._sizes]
            if len(unseen) <= max_entries:
                self._unseen_deliveries = False
            if unseen:
                self._remember(unseen[:max_entries])
                return unseen[:max_entries]
        try:
            response = await self._client.xreadgroup(
                self.keys.group,
                self.consumer,
                {self.keys.stream: ">"},
                count=max_entries,
                # BLOCK 0 would wait forever; no BLOCK at all answers at once.
                block=block_ms if block_ms > 0 else None,
            )
        except BaseException:
            # Redis may have delivered entries whose reply never reached us (or a cancellation
            # dropped it); they sit in our pending list, and the next read returns them.
            self._unseen_deliveries = True
            raise
        entries = self._decoded(_stream_page(response))
        self._remember(entries)
        return entries

    async def _pending_once(self) -> tuple[list[QueuedEntry], list[QueuedEntry]]:
        return await self._own_pending(), await self._claim_stale()

    async def _own_pending(self) -> list[QueuedEntry]:
        """This consumer's delivered, unacknowledged entries, page by page."""
        found: list[QueuedEntry] = []
        after: bytes | str = "0"
        while True:
            response = await self._client.xreadgroup(
                self.keys.group, self.consumer, {self.keys.stream: after}, count=PAGE
            )
            page = _stream_page(response)
            if not page:
                return found
            after = page[-1][0]
            found += self._decoded(page)

    async def _claim_stale(self) -> list[QueuedEntry]:
        """Takes over entries other consumers have left unacknowledged for `claim_idle_ms`."""
        found: list[QueuedEntry] = []
        start: bytes | str = "0-0"
        while True:
            # Redis 7 drops deleted entries from the pending list and reports them apart.
            start, claimed, *_ = await self._client.xautoclaim(
                self.keys.stream,
                self.keys.group,
                self.consumer,
                self._claim_idle_ms,
                start,
                count=PAGE,
            )
            found += self._decoded(claimed)
            if text(start) == "0-0":
                return found

    def _remember(self, entries: Sequence[QueuedEntry]) -> None:
        for queued in entries:
            self._sizes[queued.entry_id] = queued.entry.size

    def _decoded(self, page: Sequence[tuple[Any, Any]]) -> list[QueuedEntry]:
        """The entries of a page that decode; the others are noted for `_bury_undecodable`.

        A pending entry deleted from the stream comes back without fields and is skipped.
        """
        entries = []
        for raw_id, fields in page:
            if not fields:
                continue
            entry_id = text(raw_id)
            try:
                entries.append(QueuedEntry(entry_id, TrainEntry.decode(fields[b"e"])))
            except Exception as error:  # any malformed payload: msgpack, keys, array sizes
                self._undecodable[entry_id] = (
                    f"the entry cannot be decoded ({type(error).__name__}: {error})"
                )
        return entries
