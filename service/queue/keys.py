"""Every Redis key, stream, consumer group and channel name the service uses, in one place.

Names are built from a key prefix (so test runs and deployments can share one Redis) and the
shard (each shard owns one stream). All of a shard's train-queue keys
share the stem `{prefix}train:{shard}`, so one `SCAN MATCH` finds them; the put tokens, which
every shard shares, live under `{prefix}train:put:`.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_KEY_PREFIX = "psp:"
"""Prefix of every key the service writes."""

TRAINER_GROUP = "trainers"
"""The consumer group of the single-writer trainer; one per stream."""


@dataclass(frozen=True)
class ShardKeys:
    """The Redis names of one shard.

    Attributes:
        prefix: The key prefix, e.g. `"psp:"`.
        shard: The shard number.
    """

    prefix: str = DEFAULT_KEY_PREFIX
    shard: int = 0

    @property
    def stream(self) -> str:
        """The train stream: one entry per accepted `POST /train` batch."""
        return f"{self.prefix}train:{self.shard}"

    @property
    def group(self) -> str:
        """The stream's consumer group."""
        return TRAINER_GROUP

    @property
    def pending_examples(self) -> str:
        """Counter of accepted but unacknowledged examples, the backpressure limit's input."""
        return f"{self.stream}:pending-examples"

    @property
    def pending_by_context(self) -> str:
        """Hash of unacknowledged examples per context index, the input of each context's
        share of the queue."""
        return f"{self.stream}:pending-by-context"

    @property
    def dead_letters(self) -> str:
        """Stream of entries set aside as poison, each with its reason (newest last)."""
        return f"{self.stream}:dead"

    @property
    def applied(self) -> str:
        """`"<newest applied entry id> <model version>"`, for waiters that subscribe late."""
        return f"{self.stream}:applied"

    @property
    def applied_channel(self) -> str:
        """Pub/sub channel announcing each new applied state (same text as `applied`)."""
        return f"{self.prefix}applied:{self.shard}"

    @property
    def model_channel(self) -> str:
        """Pub/sub channel announcing new published model versions (split mode)."""
        return f"{self.prefix}model:{self.shard}"

    @property
    def model_latest(self) -> str:
        """The newest announced checkpoint (JSON), for readers that missed a message."""
        return f"{self.model_channel}:latest"

    @property
    def control(self) -> str:
        """List of admin commands (rollback) for the shard's worker."""
        return f"{self.prefix}control:{self.shard}"

    def refusal(self, entry_id: str) -> str:
        """Why the trainer refused an entry, kept a while for producers waiting on it."""
        return f"{self.stream}:refused:{entry_id}"

    @property
    def fence(self) -> str:
        """The newest writer token seen for the shard (`service.training.fencing`)."""
        return f"{self.prefix}writer:{self.shard}:fence"

    def put_token(self, token: str) -> str:
        """Short-lived marker of one `put`, so a retried put does not queue its batch twice;
        shared by every shard, so that one idempotency key names one batch on any of them."""
        return f"{self.prefix}train:put:{token}"
