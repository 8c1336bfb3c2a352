"""Predictions for many contexts in one request, answered by one forward pass per shard.

Superposition lets rows of different contexts share one matrix multiply, so the items of one
shard are concatenated, each row tagged with its context's bank row, and run together; the
shards' passes run side by side and the answers come back in item order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import metrics
from service.api.payloads import PayloadError, TooManyRows, input_matrix
from service.contexts.service import ContextService
from service.model.answers import InputsOverflow
from service.serving.batcher import PredictBatcher
from service.settings import Settings


@dataclass(frozen=True)
class ItemPrediction:
    """One item's probabilities `(n, num_classes)` and the version of its shard's model that
    produced them."""

    context: str
    probabilities: np.ndarray
    model_version: int


class MultiPredictionService:
    """Checks every item, resolves every context, then runs the rows of each shard in one
    forward pass of that shard's model."""

    def __init__(
        self, contexts: ContextService, batchers: Mapping[int, PredictBatcher], settings: Settings
    ) -> None:
        self.contexts = contexts
        self.batchers = dict(batchers)  # by shard
        self.settings = settings

    async def predict(self, items: Sequence[tuple[str, Sequence[Any]]]) -> list[ItemPrediction]:
        """Probabilities per item, in item order, each with its shard's model version.

        Raises:
            PayloadError (naming the item), TooManyRows, ContextNotFound, RegistryUnavailable,
            ModelUnhealthy.
        """
        matrices = self._checked_matrices(items)
        indices = [await self.contexts.resolve(key) for key, _ in items]
        positions_by_shard: dict[int, list[int]] = {}
        for position, index in enumerate(indices):
            positions_by_shard.setdefault(self.contexts.shard_of(index), []).append(position)
        answers: list[ItemPrediction | None] = [None] * len(items)
        passes = [
            self._forward(
                self.batchers[shard], [matrices[p] for p in positions], indices, positions
            )
            for shard, positions in positions_by_shard.items()
        ]
        for positions, (probabilities, version) in zip(
            positions_by_shard.values(), await asyncio.gather(*passes), strict=True
        ):
            for position, item_probabilities in zip(positions, probabilities, strict=True):
                answers[position] = ItemPrediction(items[position][0], item_probabilities, version)
        return [answer for answer in answers if answer is not None]

    def _checked_matrices(self, items: Sequence[tuple[str, Sequence[Any]]]) -> list[np.ndarray]:
        limit = self.settings.limits.max_rows
        total = sum(len(inputs) for _, inputs in items)
        if total > limit:  # counted before any item is converted
            raise TooManyRows(
                f"the items hold {total} rows together, more than the limit of {limit}; "
                f"split them into requests of at most {limit} rows"
            )
        shape = self.settings.model.input_shape
        matrices = []
        for position, (_, inputs) in enumerate(items):
            try:
                matrices.append(input_matrix(inputs, shape, limit))
            except PayloadError as error:  # say which item is wrong
                raise PayloadError(f"items[{position}]: {error}") from None
        return matrices

    async def _forward(
        self,
        batcher: PredictBatcher,
        matrices: Sequence[np.ndarray],
        indices: Sequence[int],
        positions: Sequence[int],
    ) -> tuple[list[np.ndarray], int]:
        """One forward pass over the items at `positions`, all of one shard: each item's
        probabilities and the version that produced them."""
        batch = np.concatenate(matrices)
        per_row = np.concatenate(
            [
                np.full(len(m), indices[p], dtype=np.int64)
                for m, p in zip(matrices, positions, strict=True)
            ]
        )
        metrics.PREDICT_BATCH_ROWS.observe(len(batch))
        probabilities, version = await batcher.forward(batch, per_row)
        split, offset = [], 0
        for matrix, position in zip(matrices, positions, strict=True):
            mine = probabilities[offset : offset + len(matrix)]
            try:
                batcher.host.check_answer(mine, matrix, version)
            except InputsOverflow as error:  # say which item is too large
                raise PayloadError(f"items[{position}]: {error}") from None
            split.append(mine)
            offset += len(matrix)
        return split, version
