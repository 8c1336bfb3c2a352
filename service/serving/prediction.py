"""Answering predict requests from the hosted model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.api.payloads import PayloadError, input_matrix
from service.contexts.service import ContextService
from service.serving.batcher import PredictBatcher
from service.settings import Settings


@dataclass(frozen=True)
class Prediction:
    """Probabilities `(n, num_classes)` and the model version that produced them."""

    probabilities: np.ndarray
    model_version: int

    @property
    def classes(self) -> np.ndarray:
        """The most probable class of each row, `(n,)`."""
        return self.probabilities.argmax(axis=1)

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most probable classes of each row, most probable first, and their
        probabilities: two `(n, k)` arrays."""
        # A stable sort of the negated probabilities keeps the lower class first on ties, as
        # `argmax` does, so the first column always equals `classes`.
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(self.probabilities, order, axis=1)


class PredictionService:
    """Validates inputs, resolves the context and hands the rows to its shard's batcher."""

    def __init__(
        self,
        contexts: ContextService,
        batchers: Mapping[int, PredictBatcher],
        settings: Settings,
    ) -> None:
        self.contexts = contexts
        self.batchers = dict(batchers)  # by shard
        self.settings = settings

    def check_top_k(self, top_k: int | None) -> None:
        """Raises PayloadError for a `top_k` above the number of classes."""
        classes = self.settings.model.num_classes
        if top_k is not None and top_k > classes:
            raise PayloadError(
                f"top_k={top_k} asks for more classes than the model has; send ?top_k= from 1 "
                f"to {classes}"
            )

    async def predict(
        self, key: str, inputs: Sequence[Any], *, top_k: int | None = None
    ) -> Prediction:
        """Raises PayloadError (also for a `top_k` above the number of classes), ContextNotFound
        or RegistryUnavailable."""
        model = self.settings.model
        self.check_top_k(top_k)
        matrix = input_matrix(inputs, model.input_shape, self.settings.limits.max_rows)
        index = await self.contexts.resolve(key)
        return await self.run(matrix, index)

    async def run(self, matrix: np.ndarray, index: int) -> Prediction:
        """The rows of a checked `matrix` under the resolved context `index`, batched with the
        other requests of its shard."""
        batcher = self.batchers[self.contexts.shard_of(index)]
        probabilities, version = await batcher.predict(matrix, index)
        return Prediction(probabilities, version)
