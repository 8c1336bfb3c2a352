"""Answering predict requests from the hosted model."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import metrics
from service.contexts import ContextService
from service.model_host import ModelHost
from service.payloads import input_matrix
from service.settings import Settings


@dataclass(frozen=True)
class Prediction:
    """Probabilities `(n, num_classes)` and the model version that produced them."""

    probabilities: np.ndarray
    model_version: int


class PredictionService:
    """Validates inputs, resolves the context and runs the forward pass off the event loop."""

    def __init__(self, contexts: ContextService, host: ModelHost, settings: Settings) -> None:
        self.contexts = contexts
        self.host = host
        self.settings = settings

    async def predict(self, key: str, inputs: Sequence[Any]) -> Prediction:
        """Raises PayloadError, ContextNotFound or RegistryUnavailable."""
        model = self.settings.model
        matrix = input_matrix(inputs, model.input_shape, self.settings.limits.max_rows)
        index = await self.contexts.resolve(key)
        rows = self.host.bank_rows([index] * len(matrix))
        metrics.PREDICT_BATCH_ROWS.observe(len(matrix))
        probabilities, version = await asyncio.to_thread(self.host.predict, matrix, rows)
        return Prediction(probabilities, version)
