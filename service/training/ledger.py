"""The trainer's ledger: what it applied, what a durable checkpoint holds, what the registry has
counted and what the queue has let go.

Exactly once rests on the order of three moves, each only after the one before succeeded:

1. a checkpoint file, fsynced, holds the effect of every applied entry up to an id, and the
   counts the registry has not taken yet;
2. the registry adds those counts, one batch per checkpoint, each guarded by the id of the last
   entry it holds (a batch the registry already holds is skipped, so a retry after an answer
   that was lost never counts twice);
3. the queue acknowledges the entries and trims them.

`stage` says what the next checkpoint would hold without changing the ledger; only `adopt`,
once that checkpoint is durable, makes it so. A failed write changes nothing: the entries stay
pending and the next checkpoint holds them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from service.entry_ids import entry_id_key

Counts = dict[int, list[int]]
"""Per context: [examples learned, of those right before learning, examples refused]."""


def new_counts() -> Counts:
    return defaultdict(lambda: [0, 0, 0])


@dataclass
class Progress:
    """What has been applied since the last checkpoint."""

    entry_ids: list[str] = field(default_factory=list)
    counts: Counts = field(default_factory=new_counts)
    steps: int = 0


@dataclass(frozen=True)
class CountBatch:
    """The counts of one checkpoint, which the registry adds at once or not at all.

    Attributes:
        last_entry_id: The last entry the checkpoint holds: the registry's guard.
        counts: Per context: examples learned, of those right, refused.
    """

    last_entry_id: str
    counts: dict[int, tuple[int, int, int]]


@dataclass(frozen=True)
class Staged:
    """What a checkpoint written now holds (`Ledger.stage`)."""

    checkpointed_id: str | None
    batches: tuple[CountBatch, ...]
    unacked: tuple[str, ...]

    def metadata(self) -> dict[str, str]:
        """The checkpoint metadata that lets a restart finish what this checkpoint began."""
        return {
            "last_entry_id": self.checkpointed_id or "",
            "count_batches": json.dumps(
                [
                    [batch.last_entry_id, {str(k): list(v) for k, v in batch.counts.items()}]
                    for batch in self.batches
                ]
            ),
        }


class Ledger:
    """The applied, checkpointed, counted and acknowledged state of one shard's trainer."""

    def __init__(self) -> None:
        self.progress = Progress()
        self.checkpointed_id: str | None = None
        # Checkpointed, not yet in the registry, oldest first.
        self.batches: list[CountBatch] = []
        # Checkpointed, not yet acknowledged.
        self.unacked: list[str] = []

    def is_checkpointed(self, entry_id: str) -> bool:
        return self.checkpointed_id is not None and entry_id_key(entry_id) <= entry_id_key(
            self.checkpointed_id
        )

    @property
    def unsettled(self) -> bool:
        """Whether the registry or the queue has yet to take what a checkpoint holds."""
        return bool(self.batches or self.unacked)

    def stage(self) -> Staged:
        """The state a checkpoint written now would hold: the progress since the last one
        folded in as one more count batch. Changes nothing."""
        progress = self.progress
        checkpointed = self.checkpointed_id
        batches = list(self.batches)
        if progress.entry_ids:
            checkpointed = max(progress.entry_ids, key=entry_id_key)
            counts = {k: (v[0], v[1], v[2]) for k, v in progress.counts.items() if any(v)}
            if counts:
                batches.append(CountBatch(checkpointed, counts))
        return Staged(checkpointed, tuple(batches), (*self.unacked, *progress.entry_ids))

    def adopt(self, staged: Staged) -> None:
        """The staged checkpoint is durable: its state is the ledger's now."""
        self.checkpointed_id = staged.checkpointed_id
        self.batches = list(staged.batches)
        self.unacked = list(staged.unacked)
        self.progress = Progress()

    def restore(self, metadata: dict[str, str]) -> None:
        """The state of a checkpoint loaded at start-up or after a rewind; its entries were
        never acknowledged as far as this ledger knows, so they stay in the queue's pending
        list until `unacked` is acknowledged again."""
        self.progress = Progress()
        self.checkpointed_id = metadata.get("last_entry_id") or None
        self.batches = _decode_batches(metadata, self.checkpointed_id)
        self.unacked = []

    def forget_unsaved(self) -> None:
        """Drops what was applied since the newest checkpoint (the caller re-applies it)."""
        self.progress = Progress()
        self.batches = []
        self.unacked = []
        self.checkpointed_id = None


def _decode_batches(metadata: dict[str, str], checkpointed_id: str | None) -> list[CountBatch]:
    """A checkpoint's count batches; checkpoints written before batches had one merged dict
    of counts, under the checkpoint's own last entry id."""
    if "count_batches" in metadata:
        return [
            CountBatch(last, {int(k): _three(v) for k, v in counts.items()})
            for last, counts in json.loads(metadata["count_batches"])
        ]
    merged = json.loads(metadata.get("counts", "{}"))
    if not merged or checkpointed_id is None:
        return []
    return [CountBatch(checkpointed_id, {int(k): _three(v) for k, v in merged.items()})]


def _three(values: list[int]) -> tuple[int, int, int]:
    """Counts written before refusals were counted have two fields."""
    full = [*map(int, values), 0][:3]
    return full[0], full[1], full[2]
