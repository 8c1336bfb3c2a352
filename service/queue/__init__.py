"""The train queue: the in-process embedded default and Redis Streams, behind one interface."""

from service.queue.base import (
    QueuedEntry,
    QueueFull,
    QueueStats,
    QueueUnavailable,
    TrainEntry,
    TrainQueue,
    entry_id_key,
)

__all__ = [
    "QueueFull",
    "QueueStats",
    "QueueUnavailable",
    "QueuedEntry",
    "TrainEntry",
    "TrainQueue",
    "entry_id_key",
]
