"""Predictions for many contexts in one request, answered by one forward pass.

Superposition lets rows of different contexts share one matrix multiply, so the items of the
request are concatenated, each row tagged with its context's bank row, and run together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import metrics
from service.contexts import ContextService
from service.model_host import ModelHost
from service.payloads import PayloadError, TooManyRows, input_matrix
from service.settings import Settings


@dataclass(frozen=True)
class ItemPrediction:
    """One item's probabilities `(n, num_classes)`."""

    context: str
    probabilities: np.ndarray


class MultiPredictionService:
    """Checks every item, resolves every context, then runs all rows in one forward pass."""

    def __init__(self, contexts: ContextService, host: ModelHost, settings: Settings) -> None:
        self.contexts = contexts
        self.host = host
        self.settings = settings

    async def predict(
        self, items: Sequence[tuple[str, Sequence[Any]]]
    ) -> tuple[list[ItemPrediction], int]:
        """Probabilities per item and the model version that produced them all.

        Raises:
            PayloadError (naming the item), TooManyRows, ContextNotFound, RegistryUnavailable,
            ModelUnhealthy.
        """
        limit = self.settings.limits.max_rows
        shape = self.settings.model.input_shape
        matrices = []
        for position, (_, inputs) in enumerate(items):
            try:
                matrices.append(input_matrix(inputs, shape, limit))
            except TooManyRows:
                raise
            except PayloadError as error:  # say which item is wrong
                raise PayloadError(f"items[{position}]: {error}") from None
        total = sum(len(m) for m in matrices)
        if total > limit:
            raise TooManyRows(
                f"the items hold {total} rows together, more than the limit of {limit}; "
                f"split them into requests of at most {limit} rows"
            )
        indices = [await self.contexts.resolve(key) for key, _ in items]
        batch = np.concatenate(matrices)
        per_row = np.concatenate(
            [
                np.full(len(m), index, dtype=np.int64)
                for m, index in zip(matrices, indices, strict=True)
            ]
        )
        metrics.PREDICT_BATCH_ROWS.observe(len(batch))
        rows = self.host.bank_rows(per_row)
        probabilities, version = await asyncio.to_thread(self.host.predict, batch, rows)
        answers, offset = [], 0
        for (key, _), matrix in zip(items, matrices, strict=True):
            answers.append(ItemPrediction(key, probabilities[offset : offset + len(matrix)]))
            offset += len(matrix)
        return answers, version
