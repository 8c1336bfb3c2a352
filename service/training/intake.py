"""The producer side of the train queue: validate a train batch, resolve its context, enqueue it,
and optionally wait for the trainer (`service.training.trainer`, the consumer) to apply it."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service import metrics
from service.api.payloads import input_matrix, label_vector
from service.contexts.service import ContextService
from service.queue.base import TrainEntry
from service.queue.lanes import ShardQueue
from service.settings import Settings


class NotAppliedInTime(TimeoutError):
    """A `wait=true` batch was queued but not applied within the wait limit."""


@dataclass(frozen=True)
class Submission:
    """What became of a submitted batch.

    Attributes:
        batch_id: The queue entry id (the first one's, for a repeated idempotency key).
        accepted: Rows accepted.
        model_version: With `wait`, the version once the trainer was done with the batch.
        refused: With `wait`, why the trainer refused to learn the batch; None if it learned it.
    """

    batch_id: str
    accepted: int
    model_version: int | None = None
    refused: str | None = None


class TrainIntake:
    """Puts `POST /train` batches on the train queue."""

    def __init__(
        self,
        contexts: ContextService,
        lanes: Mapping[int, ShardQueue],
        settings: Settings,
    ) -> None:
        self.contexts = contexts
        self.lanes = dict(lanes)  # by shard
        self.settings = settings

    async def submit(
        self,
        key: str,
        inputs: Sequence[Any],
        labels: Sequence[int],
        *,
        wait: bool,
        idempotency_key: str | None = None,
        client: str = "",
    ) -> Submission:
        """Queues one batch for `key` on its shard's queue; with `wait`, returns once the
        trainer is done with it.

        A retry with the same `idempotency_key`, context and rows queues nothing new, is not
        counted again, and answers with the first attempt's batch id. Idempotency keys are
        scoped to the `client` (the API key's id), so tenants cannot collide.

        Raises:
            PayloadError, ContextNotFound, RegistryUnavailable, QueueFull, QueueUnavailable,
            IdempotencyConflict, NotAppliedInTime.
        """
        model = self.settings.model
        matrix = input_matrix(inputs, model.input_shape, self.settings.limits.max_rows)
        vector = label_vector(labels, len(matrix), model.num_classes)
        index = await self.contexts.resolve(key)
        token = f"{client}:{idempotency_key}" if idempotency_key else None
        lane = self.lanes[self.contexts.shard_of(index)]
        queued = await lane.queue.enqueue(TrainEntry(index, matrix, vector, time.time()), token)
        batch_id = queued.entry_id
        if not queued.repeated:
            metrics.TRAIN_ACCEPTED.inc(len(vector))
        if not wait:
            return Submission(batch_id, len(vector))
        timeout = self.settings.limits.wait_seconds
        try:
            version = await lane.applied.wait(batch_id, timeout)
        except TimeoutError:
            raise NotAppliedInTime(
                f"batch {batch_id} is queued but was not applied within {timeout:g} s; "
                "it will still be applied, so send it without wait=true or retry later"
            ) from None
        return Submission(batch_id, len(vector), version, await lane.applied.refusal(batch_id))
