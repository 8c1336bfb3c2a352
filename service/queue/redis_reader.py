"""Reading one shard's Redis train stream as one consumer of its group: new entries (`read`) and,
at start-up, the entries this consumer or a dead one still holds unacknowledged (`pending`).

A `read` that failed after Redis delivered entries leaves them in this consumer's pending list;
the next `read` hands those out first. Entries that do not decode are set aside with their
reason, so the queue moves on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from service.entry_ids import entry_id_key
from service.queue.base import QueuedEntry, TrainEntry
from service.queue.keys import ShardKeys
from service.queue.redis_group import ConsumerGroup
from service.queue.redis_link import RedisLink, text

logger = logging.getLogger(__name__)

BLOCK_SLICE_MS = 3_000
"""Longest single XREADGROUP BLOCK, below the socket timeout so a quiet stream is not an error."""

PAGE = 256
"""Entries per XREADGROUP / XAUTOCLAIM page when listing pending entries."""


class StreamReader:
    """Hands the entries of one stream to `consumer`.

    Args:
        link: The connection to Redis.
        keys: The shard's keys.
        group: Runs the reads in the consumer group.
        consumer: This reader's name in the group.
        claim_idle_ms: `pending` takes over entries another consumer has held unacknowledged
            this long.
        set_aside: Called with the id of an entry that does not decode, and why.
    """

    def __init__(
        self,
        link: RedisLink,
        keys: ShardKeys,
        group: ConsumerGroup,
        *,
        consumer: str,
        claim_idle_ms: int,
        set_aside: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._client = link.client
        self._keys = keys
        self._group = group
        self._consumer = consumer
        self._claim_idle_ms = claim_idle_ms
        self._set_aside = set_aside
        # Entries that could not be decoded while reading, set aside after the read.
        self._undecodable: dict[str, str] = {}
        # Ids handed out and not yet acknowledged, told apart from deliveries a read lost.
        self._handed_out: set[str] = set()
        # Set when a read may have failed after Redis delivered entries to this consumer.
        self._unseen_deliveries = False

    async def read(self, max_entries: int, block_ms: int) -> list[QueuedEntry]:
        """New entries, in id order; waits up to `block_ms` when none, in slices of at most
        `BLOCK_SLICE_MS`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(block_ms, 0) / 1000
        while True:
            left_ms = int((deadline - loop.time()) * 1000)
            block = min(left_ms, BLOCK_SLICE_MS)
            entries = await self._group.call(
                partial(self._read_once, max_entries, block), "read train entries"
            )
            await self._set_aside_undecodable()
            if entries or left_ms <= BLOCK_SLICE_MS:
                return entries

    async def pending(self) -> list[QueuedEntry]:
        """This consumer's unacknowledged entries and those it claimed from others, in id
        order."""
        own, stale = await self._group.call(self._pending_once, "list pending train entries")
        await self._set_aside_undecodable()
        by_id = {queued.entry_id: queued for queued in [*own, *stale]}
        entries = sorted(by_id.values(), key=lambda queued: entry_id_key(queued.entry_id))
        self._remember(entries)
        # Everything this consumer holds has now been handed out, lost deliveries included.
        self._unseen_deliveries = False
        return entries

    def forget(self, entry_ids: Sequence[str]) -> None:
        """Entries that left the consumer's pending list (acknowledged or set aside)."""
        self._handed_out.difference_update(entry_ids)

    async def _set_aside_undecodable(self) -> None:
        while self._undecodable:
            entry_id, reason = next(iter(self._undecodable.items()))
            logger.warning("setting aside train entry %s: %s", entry_id, reason)
            await self._set_aside(entry_id, reason)
            del self._undecodable[entry_id]

    async def _read_once(self, max_entries: int, block_ms: int) -> list[QueuedEntry]:
        if self._unseen_deliveries:
            unseen = [q for q in await self._own_pending() if q.entry_id not in self._handed_out]
            if len(unseen) <= max_entries:
                self._unseen_deliveries = False
            if unseen:
                self._remember(unseen[:max_entries])
                return unseen[:max_entries]
        try:
            response = await self._client.xreadgroup(
                self._keys.group,
                self._consumer,
                {self._keys.stream: ">"},
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
                self._keys.group, self._consumer, {self._keys.stream: after}, count=PAGE
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
                self._keys.stream,
                self._keys.group,
                self._consumer,
                self._claim_idle_ms,
                start,
                count=PAGE,
            )
            found += self._decoded(claimed)
            if text(start) == "0-0":
                return found

    def _remember(self, entries: Sequence[QueuedEntry]) -> None:
        self._handed_out.update(queued.entry_id for queued in entries)

    def _decoded(self, page: Sequence[tuple[Any, Any]]) -> list[QueuedEntry]:
        """The entries of a page that decode; the others are noted to be set aside.

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


def _stream_page(response: Any) -> list[tuple[Any, Any]]:
    """The `(id, fields)` pairs of a one-stream XREADGROUP reply, in either reply shape."""
    if not response:
        return []
    if isinstance(response, dict):  # RESP3-style replies map stream -> entries
        return list(next(iter(response.values())))
    return list(response[0][1])
