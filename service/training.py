"""Accepting train batches: validate, resolve the context, enqueue, and optionally wait."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service import metrics
from service.contexts import ContextService
from service.payloads import input_matrix, label_vector
from service.queue.base import TrainEntry, TrainQueue
from service.settings import Settings


class NotAppliedInTime(TimeoutError):
    """A `wait=true` batch was queued but not applied within the wait limit."""


@dataclass(frozen=True)
class Submission:
    batch_id: str
    accepted: int
    model_version: int | None = None


class TrainingService:
    """The producer side of the train queue."""

    def __init__(self, contexts: ContextService, queue: TrainQueue, settings: Settings) -> None:
        self.contexts = contexts
        self.queue = queue
        self.settings = settings

    async def submit(
        self,
        key: str,
        inputs: Sequence[Any],
        labels: Sequence[int],
        *,
        wait: bool,
        idempotency_key: str | None = None,
    ) -> Submission:
        """Queues one batch for `key`; with `wait`, returns once the trainer has applied it.

        A retry with the same `idempotency_key` (for the same context) queues nothing new and
        answers with the first attempt's batch id.

        Raises:
            PayloadError, ContextNotFound, RegistryUnavailable, QueueFull, QueueUnavailable,
            NotAppliedInTime.
        """
        model = self.settings.model
        matrix = input_matrix(inputs, model.input_shape, self.settings.limits.max_rows)
        vector = label_vector(labels, len(matrix), model.num_classes)
        index = await self.contexts.resolve(key)
        token = f"{index}:{idempotency_key}" if idempotency_key else None
        batch_id = await self.queue.put(TrainEntry(index, matrix, vector, time.time()), token)
        metrics.TRAIN_ACCEPTED.inc(len(vector))
        if not wait:
            return Submission(batch_id, len(vector))
        timeout = self.settings.limits.wait_seconds
        try:
            version = await self.queue.wait_applied(batch_id, timeout)
        except TimeoutError:
            raise NotAppliedInTime(
                f"batch {batch_id} is queued but was not applied within {timeout:g} s; "
                "it will still be applied, so send it without wait=true or retry later"
            ) from None
        return Submission(batch_id, len(vector), version)
