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
    DeadLetter,
    Enqueued,
    IdempotencyConflict,
    QueuedEntry,
    QueueFull,
    QueueStats,
    TrainEntry,
    TrainQueue,
)


class InProcessQueue(TrainQueue):
    """Entries are kept until acknowledged; ids are `"<ms>-<seq>"` and strictly increasing."""

    def __init__(self, *, max_pending_examples: int, retry_after_seconds: int = 1) -> None:
        self.max_pending_examples = max_pending_examples
        self.retry_after_seconds = retry_after_seconds
        self._entries: OrderedDict[str, TrainEntry] = OrderedDict()
        self._undelivered: deque[str] = deque()
        self._delivered: set[str] = set()
        self._pending_examples = 0
        self._last_id = (0, 0)
        self._changed = asyncio.Condition()
        # Idempotency key -> (entry id, entry fingerprint, when).
        self._idempotency: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        # Like the queue itself, the dead letters live as long as the process.
        self._dead: deque[DeadLetter] = deque(maxlen=DEAD_LETTERS_KEPT)

    def _forget_old_idempotency_keys(self) -> None:
        horizon = time.monotonic() - IDEMPOTENCY_SECONDS
        while self._idempotency and next(iter(self._idempotency.values()))[2] < horizon:
            self._idempotency.popitem(last=False)

    def _next_id(self) -> str:
        millis = int(time.time() * 1000)
        last_millis, last_seq = self._last_id
        self._last_id = (millis, 0) if millis > last_millis else (last_millis, last_seq + 1)
        return f"{self._last_id[0]}-{self._last_id[1]}"

    async def enqueue(self, entry: TrainEntry, idempotency_key: str | None = None) -> Enqueued:
        fingerprint = entry.fingerprint() if idempotency_key is not None else ""
        if idempotency_key is not None:
            self._forget_old_idempotency_keys()
            known = self._idempotency.get(idempotency_key)
            if known is not None:
                if known[1] != fingerprint:
                    raise IdempotencyConflict(idempotency_key)
                return Enqueued(known[0], repeated=True)
        if self._pending_examples + entry.size > self.max_pending_examples:
            raise QueueFull(
                self.retry_after_seconds, self._pending_examples, self.max_pending_examples
            )
        entry_id = self._next_id()
        self._entries[entry_id] = entry
        self._undelivered.append(entry_id)
        self._pending_examples += entry.size
        if idempotency_key is not None:
            self._idempotency[idempotency_key] = (entry_id, fingerprint, time.monotonic())
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

    async def ack(self, entry_ids: Sequence[str]) -> None:
        for entry_id in entry_ids:
            # Like XACK, only a delivered entry can be acknowledged; an undelivered one stays
            # queued (dropping it here would also break `read`, which still holds its id).
            if entry_id not in self._delivered:
                continue
            self._delivered.discard(entry_id)
            self._pending_examples -= self._entries.pop(entry_id).size

    async def dead_letter(self, entries: Sequence[tuple[QueuedEntry, str]]) -> None:
        for queued, reason in entries:
            if queued.entry_id not in self._delivered:
                continue  # already acknowledged or set aside
            self._delivered.discard(queued.entry_id)
            entry = self._entries.pop(queued.entry_id)
            self._pending_examples -= entry.size
            self._dead.append(
                DeadLetter(queued.entry_id, reason, entry.context_index, entry.size, time.time())
            )

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
