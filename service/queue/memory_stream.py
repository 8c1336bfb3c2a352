"""The embedded in-process queue: an ordered in-memory log with the same semantics as Redis.

It lives as long as the process. A graceful shutdown drains it into a final checkpoint; a crash
loses what was not yet checkpointed, which is why production deployments use Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Sequence

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
    TrainEntry,
    TrainQueue,
)


class IdempotencyMemory:
    """The idempotency keys of recent puts, shared by the queues of every shard of a process,
    so that one key names one batch whichever shard it went to."""

    def __init__(self) -> None:
        # Idempotency key -> (entry id, entry fingerprint, when).
        self._puts: OrderedDict[str, tuple[str, str, float]] = OrderedDict()

    def recall(self, key: str) -> tuple[str, str] | None:
        """The entry id and fingerprint first put under `key`, if that was recent."""
        horizon = time.monotonic() - IDEMPOTENCY_SECONDS
        while self._puts and next(iter(self._puts.values()))[2] < horizon:
            self._puts.popitem(last=False)
        known = self._puts.get(key)
        return None if known is None else (known[0], known[1])

    def remember(self, key: str, entry_id: str, fingerprint: str) -> None:
        self._puts[key] = (entry_id, fingerprint, time.monotonic())


class InProcessQueue(TrainQueue):
    """Entries are kept until acknowledged; ids are `"<ms>-<seq>"` and strictly increasing."""

    def __init__(
        self,
        *,
        max_pending_examples: int,
        max_pending_per_context: int | None = None,
        retry_after_seconds: int = 1,
        idempotency: IdempotencyMemory | None = None,
    ) -> None:
        self.max_pending_examples = max_pending_examples
        self.max_pending_per_context = max_pending_per_context
        self.retry_after_seconds = retry_after_seconds
        self._entries: OrderedDict[str, TrainEntry] = OrderedDict()
        self._undelivered: deque[str] = deque()
        self._delivered: set[str] = set()
        self._pending_examples = 0
        self._pending_by_context: dict[int, int] = {}
        self._last_id = (0, 0)
        self._changed = asyncio.Condition()
        self._idempotency = idempotency or IdempotencyMemory()
        # Like the queue itself, the dead letters live as long as the process.
        self._dead: deque[DeadLetter] = deque(maxlen=DEAD_LETTERS_KEPT)

    def _next_id(self) -> str:
        millis = int(time.time() * 1000)
        last_millis, last_seq = self._last_id
        self._last_id = (millis, 0) if millis > last_millis else (last_millis, last_seq + 1)
        return f"{self._last_id[0]}-{self._last_id[1]}"

    async def enqueue(self, entry: TrainEntry, idempotency_key: str | None = None) -> Enqueued:
        fingerprint = entry.fingerprint() if idempotency_key is not None else ""
        if idempotency_key is not None:
            known = self._idempotency.recall(idempotency_key)
            if known is not None:
                if known[1] != fingerprint:
                    raise IdempotencyConflict(idempotency_key)
                return Enqueued(known[0], repeated=True)
        context = entry.context_index
        mine = self._pending_by_context.get(context, 0)
        share = self.max_pending_per_context
        if share is not None and mine + entry.size > share:
            raise ContextShareFull(self.retry_after_seconds, mine, share)
        if self._pending_examples + entry.size > self.max_pending_examples:
            raise QueueFull(
                self.retry_after_seconds, self._pending_examples, self.max_pending_examples
            )
        entry_id = self._next_id()
        self._entries[entry_id] = entry
        self._undelivered.append(entry_id)
        self._pending_examples += entry.size
        self._pending_by_context[context] = mine + entry.size
        if idempotency_key is not None:
            self._idempotency.remember(idempotency_key, entry_id, fingerprint)
        async with self._changed:
            self._changed.notify_all()
        return Enqueued(entry_id)

    async def read(self, max_entries: int, block_ms: int) -> list[QueuedEntry]:
        async with self._changed:
            if not self._undelivered:
                try:
                    await asyncio.wait_for(self._changed.wait(), block_ms / 1000)
                except TimeoutError:
                    return []
        batch: list[QueuedEntry] = []
        while self._undelivered and len(batch) < max_entries:
            entry_id = self._undelivered.popleft()
            self._delivered.add(entry_id)
            batch.append(QueuedEntry(entry_id, self._entries[entry_id]))
        return batch

    async def pending(self) -> list[QueuedEntry]:
        return [QueuedEntry(i, e) for i, e in self._entries.items() if i in self._delivered]

    async def fence(self, token: int) -> None:
        """Nothing to fence: the queue lives in its writer's process, which has no rival."""

    async def ack(self, entry_ids: Sequence[str]) -> None:
        for entry_id in entry_ids:
            # Like XACK, only a delivered entry can be acknowledged; an undelivered one stays
            # queued (dropping it here would also break `read`, which still holds its id).
            if entry_id not in self._delivered:
                continue
            self._delivered.discard(entry_id)
            self._release(self._entries.pop(entry_id))

    async def dead_letter(self, entries: Sequence[tuple[QueuedEntry, str]]) -> None:
        for queued, reason in entries:
            if queued.entry_id not in self._delivered:
                continue  # already acknowledged or set aside
            self._delivered.discard(queued.entry_id)
            entry = self._entries.pop(queued.entry_id)
            self._release(entry)
            self._dead.append(
                DeadLetter(queued.entry_id, reason, entry.context_index, entry.size, time.time())
            )

    def _release(self, entry: TrainEntry) -> None:
        """Takes an entry that left the queue out of the pending counts."""
        self._pending_examples -= entry.size
        left = self._pending_by_context.get(entry.context_index, 0) - entry.size
        if left > 0:
            self._pending_by_context[entry.context_index] = left
        else:
            self._pending_by_context.pop(entry.context_index, None)

    async def dead_letters(self, limit: int) -> tuple[list[DeadLetter], int]:
        return list(reversed(self._dead))[:limit], len(self._dead)

    async def trim_below(self, entry_id: str) -> None:
        # Acknowledged entries are already gone from memory; nothing older is kept.
        return None

    async def stats(self) -> QueueStats:
        oldest = next(iter(self._entries.values()), None)
        age = max(0.0, time.time() - oldest.enqueued_at) if oldest else 0.0
        return QueueStats(self._pending_examples, age)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
