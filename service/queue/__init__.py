"""The train queue: the in-process embedded default and Redis Streams, behind one interface."""

from service.queue.base import (
    Enqueued,
    IdempotencyConflict,
    QueuedEntry,
    QueueFull,
    QueueStats,
    QueueUnavailable,
    TrainEntry,
    TrainQueue,
    entry_id_key,
)

__all__ = [
    "Enqueued",
    "IdempotencyConflict",
    "QueueFull",
    "QueueStats",
    "QueueUnavailable",
    "QueuedEntry",
    "TrainEntry",
    "TrainQueue",
    "entry_id_key",
]
