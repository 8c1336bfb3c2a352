"""The train queue and its applied notices: in-process (embedded default) or on Redis, each
behind one interface.

- `base`: the queue interface (`TrainQueue`) and what travels through it;
- `applied`: the interface of the applied notices (`AppliedNotices`) that `?wait=true` awaits;
- `memory_stream`, `memory_applied`: both in this process;
- `redis_stream`, `redis_applied`: both on Redis (`redis_link` holds their connection handling
  and `lua/` their scripts); the stream queue reads through `redis_reader`, in the consumer
  group of `redis_group`, and keeps its set-aside entries in `redis_dead_letters`; `keys` names
  every Redis key.
"""

from service.entry_ids import entry_id_key
from service.queue.applied import AppliedNotices
from service.queue.base import (
    Enqueued,
    IdempotencyConflict,
    QueuedEntry,
    QueueFull,
    QueueStats,
    QueueUnavailable,
    TrainEntry,
    TrainQueue,
)

__all__ = [
    "AppliedNotices",
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
