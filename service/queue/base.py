"""The queue interface between `POST /train` and the single-writer trainer.

Entry ids have the Redis Streams form `"<milliseconds>-<sequence>"` in both implementations, so
the trainer compares them the same way (see `service.entry_ids`). An entry is delivered to the
trainer by `read`, stays pending until `ack`, and is handed out again by `pending` after a
restart, which is what makes exactly-once possible (docs/design.md, "Exactly-once training").
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

IDEMPOTENCY_SECONDS = 300
"""How long an `enqueue`'s idempotency key is remembered."""


class QueueFull(Exception):
    """The queue holds more pending examples than allowed; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int, pending_examples: int, limit: int) -> None:
        super().__init__(
            f"the train queue holds {pending_examples} pending examples (limit {limit})"
        )
        self.retry_after = retry_after


class ContextShareFull(QueueFull):
    """One context holds its whole share of the queue's pending examples; the other contexts
    are still accepted."""

    def __init__(self, retry_after: int, pending_examples: int, limit: int) -> None:
        Exception.__init__(
            self,
            f"this context has {pending_examples} examples pending in the train queue, its "
            f"whole share of {limit}; the other contexts are not held up by it",
        )
        self.retry_after = retry_after


class QueueUnavailable(Exception):
    """The queue's backing store cannot be reached."""


class IdempotencyConflict(Exception):
    """An idempotency key came back with a different batch than the one it first queued."""

    def __init__(self, idempotency_key: str) -> None:
        super().__init__(
            "this Idempotency-Key was first used with a different batch (another context or "
            "other rows); send a new key for a new batch, or resend the first batch unchanged"
        )
        self.idempotency_key = idempotency_key


@dataclass(frozen=True)
class Enqueued:
    """What an `enqueue` did.

    Attributes:
        entry_id: The id of the queued entry.
        repeated: True when an earlier `enqueue` with the same idempotency key queued it, and
            this one queued nothing.
    """

    entry_id: str
    repeated: bool = False


@dataclass(frozen=True)
class TrainEntry:
    """One accepted `POST /train` batch, all for one context.

    Attributes:
        context_index: The context's registry index.
        inputs: float32 `(n, prod(input_shape))`.
        labels: int64 `(n,)`.
        enqueued_at: Unix time of acceptance, for the lag metric.
    """

    context_index: int
    inputs: np.ndarray
    labels: np.ndarray
    enqueued_at: float

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def encode(self) -> bytes:
        """A compact binary form: raw little-endian arrays in msgpack."""
        return msgpack.packb(
            {
                "c": self.context_index,
                "n": self.size,
                "x": np.ascontiguousarray(self.inputs, dtype="<f4").tobytes(),
                "y": np.ascontiguousarray(self.labels, dtype="<i8").tobytes(),
                "t": self.enqueued_at,
            }
        )

    def fingerprint(self) -> str:
        """A digest of the context and the rows (not the time), to tell a retry of this batch
        from a different batch sent with the same idempotency key."""
        digest = hashlib.sha256(str(self.context_index).encode())
        digest.update(np.ascontiguousarray(self.inputs, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        return digest.hexdigest()

    @classmethod
    def decode(cls, payload: bytes) -> TrainEntry:
        data = msgpack.unpackb(payload)
        n = int(data["n"])
        inputs = np.frombuffer(data["x"], dtype="<f4").reshape(n, -1)
        labels = np.frombuffer(data["y"], dtype="<i8")
        return cls(int(data["c"]), inputs, labels, float(data["t"]))


@dataclass(frozen=True)
class QueuedEntry:
    """An entry as delivered to the trainer, with its id."""

    entry_id: str
    entry: TrainEntry


@dataclass(frozen=True)
class DeadLetter:
    """An entry set aside as poison: it left the queue unlearned and counts as rejected.

    Attributes:
        entry_id: The entry's queue id.
        reason: Why it was set aside, as a sentence.
        context_index: The entry's context, or None when the entry could not be decoded.
        examples: How many examples it carried (0 when unknown).
        dead_lettered_at: Unix time it was set aside.
    """

    entry_id: str
    reason: str
    context_index: int | None
    examples: int
    dead_lettered_at: float


DEAD_LETTERS_KEPT = 10_000
"""How many dead-lettered entries are kept for inspection (the oldest are dropped first)."""


@dataclass(frozen=True)
class QueueStats:
    """Depth and lag of the queue.

    Attributes:
        pending_examples: Examples accepted but not yet acknowledged.
        oldest_age_seconds: Age of the oldest unacknowledged entry, 0 when empty.
    """

    pending_examples: int
    oldest_age_seconds: float


class TrainQueue(abc.ABC):
    """A durable (Redis) or in-memory (embedded) queue of train entries.

    Producers call `enqueue`; the single trainer calls `read`, `pending`, `ack` and `trim_below`.
    Producers waiting for their entries to be applied use `service.queue.applied.AppliedNotices`.
    """

    max_pending_examples: int
    # One context's share of the pending examples; None: no share, only the whole limit.
    max_pending_per_context: int | None
    retry_after_seconds: int
    # Whether accepted entries survive a crash of this process (Redis: yes; in-process: no).
    durable: bool = False

    @abc.abstractmethod
    async def fence(self, token: int) -> None:
        """Makes the trainer's acknowledgements, trims and set-asides carry its writer token,
        and refuses those of older writers from now on (`service.training.fencing`)."""

    @abc.abstractmethod
    async def enqueue(self, entry: TrainEntry, idempotency_key: str | None = None) -> Enqueued:
        """Appends an entry durably.

        A put repeated with the same `idempotency_key` and the same entry (context and rows)
        within `IDEMPOTENCY_SECONDS` answers with the first put's id and queues nothing, so a
        client may retry a request whose answer it lost.

        Idempotency keys are remembered across the shards of a deployment: the same key with
        the same entry on any shard is the same put.

        Raises:
            IdempotencyConflict: The key was first used with a different entry.
            ContextShareFull: Accepting it would take the entry's context past its share of
                the pending examples (`max_pending_per_context`).
            QueueFull: Accepting it would exceed the pending-examples limit.
            QueueUnavailable: The backing store cannot be reached.
        """

    @abc.abstractmethod
    async def read(self, max_entries: int, block_ms: int) -> list[QueuedEntry]:
        """New entries for the trainer, in id order; waits up to `block_ms` when none."""

    @abc.abstractmethod
    async def pending(self) -> list[QueuedEntry]:
        """Entries delivered before but never acknowledged, in id order (used at start-up)."""

    @abc.abstractmethod
    async def ack(self, entry_ids: Sequence[str]) -> None:
        """Marks entries done; only called once their effect is in a durable checkpoint."""

    @abc.abstractmethod
    async def dead_letter(self, entries: Sequence[tuple[QueuedEntry, str]]) -> None:
        """Moves delivered entries, each with its reason, out of the queue into the dead-letter
        store, acknowledging them: they are never learned, and the queue moves on."""

    @abc.abstractmethod
    async def dead_letters(self, limit: int) -> tuple[list[DeadLetter], int]:
        """The newest `limit` dead-lettered entries, newest first, and how many are kept."""

    @abc.abstractmethod
    async def trim_below(self, entry_id: str) -> None:
        """Drops acknowledged history strictly below `entry_id`."""

    @abc.abstractmethod
    async def stats(self) -> QueueStats:
        """The queue's depth and lag."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the backing store answers."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases connections."""
