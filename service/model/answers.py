"""Whose fault a non-finite answer is: the sender's, whose inputs overflowed finite weights, or
the model's, whose weights are not finite or not loaded (nobody can be answered)."""

from __future__ import annotations

import math

import numpy as np

from psp_core.learner import OnlineLearner
from service.api.payloads import PayloadError
from service.model.divergence import largest_weight


class InputsOverflow(PayloadError):
    """A request's own rows give a non-finite output: its inputs are too large for the model.
    Its neighbours in the same forward pass are answered as usual."""

    def __init__(self, inputs: np.ndarray, row: int, version: int) -> None:
        largest = float(np.abs(inputs[row]).max())
        super().__init__(
            f"inputs row {row} gives a non-finite output under model version {version}: its "
            f"values (largest magnitude {largest:.3g}) are too large for the model; send inputs "
            "on the scale the context was trained on"
        )


class ModelUnhealthy(RuntimeError):
    """The served weights cannot give finite answers right now; the message is the sentence
    a client sees."""


def check_answer(
    probabilities: np.ndarray, inputs: np.ndarray, version: int, learner: OnlineLearner
) -> None:
    """Refuses probabilities that are not all finite, blaming whoever is at fault.

    Raises:
        InputsOverflow: A row of `inputs` overflowed finite weights: its sender's fault alone,
            so only its sender is refused.
        ModelUnhealthy: The weights themselves are not finite (which the divergence guard
            should have caught): nobody can be answered.
    """
    finite = np.isfinite(probabilities).all(axis=1)
    if finite.all():
        return
    if not math.isfinite(largest_weight(learner)):
        raise ModelUnhealthy(
            f"model version {version} has non-finite weights and gave a non-finite "
            "probability; nothing was predicted, retry later"
        )
    raise InputsOverflow(inputs, int(np.argmin(finite)), version)
