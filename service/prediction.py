"""Answering predict requests from the hosted model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.batcher import PredictBatcher
from service.contexts import ContextService
from service.payloads import input_matrix
from service.settings import Settings


@dataclass(frozen=True)
class Prediction:
    """Probabilities `(n, num_classes)` and the model version that produced them."""

    probabilities: np.ndarray
    model_version: int


class PredictionService:
    """Validates inputs, resolves the context and hands the rows to the batcher."""

    def __init__(
        self, contexts: ContextService, batcher: PredictBatcher, settings: Settings
    ) -> None:
        self.contexts = contexts
        self.batcher = batcher
        self.settings = settings

    async def predict(self, key: str, inputs: Sequence[Any]) -> Prediction:
        """Raises PayloadError, ContextNotFound or RegistryUnavailable."""
        model = self.settings.model
        matrix = input_matrix(inputs, model.input_shape, self.settings.limits.max_rows)
        index = await self.contexts.resolve(key)
        probabilities, version = await self.batcher.predict(matrix, index)
        return Prediction(probabilities, version)
