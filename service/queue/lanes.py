"""A shard's way in for training: its train queue and the notices of what its writer applied."""

from __future__ import annotations

from dataclasses import dataclass

from service.queue.applied import AppliedNotices
from service.queue.base import TrainQueue


@dataclass(frozen=True)
class ShardQueue:
    """The train queue of one shard and the applied notices that `?wait=true` awaits."""

    queue: TrainQueue
    applied: AppliedNotices
