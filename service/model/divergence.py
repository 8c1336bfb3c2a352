"""The divergence guard: no step may leave the served weights non-finite or blown up.

After every training step, under the model lock, the guard reads the largest weight magnitude
(one reduction per parameter tensor and one host sync, the same check the learner makes of the
gradients) and compares the step's loss with its recent mean. When the weights are non-finite
or huge, or the loss has run away, it marks the host unhealthy (predict answers 503 at once)
and raises `Diverged`; the trainer then restores the last healthy checkpoint and sets the
offending entries aside.
"""

from __future__ import annotations

import math

import torch

from psp_core.learner import OnlineLearner, StepResult
from service.model.state import ModelState
from service.settings import GuardSettings


class Diverged(Exception):
    """A step made the weights unusable; the message says how."""


def largest_weight(learner: OnlineLearner) -> float:
    """The largest magnitude of any weight; NaN or inf when one is not finite."""
    with torch.no_grad():
        tops = [p.detach().abs().amax() for p in learner.model.parameters()]
        return float(torch.stack(tops).amax()) if tops else 0.0


class DivergenceGuard:
    """Checks the weights and the loss after each step (a `StepWatcher` of the host); a
    verdict against them clears the health flag of `state`, which predictions read."""

    def __init__(self, settings: GuardSettings, state: ModelState) -> None:
        self.settings = settings
        self.state = state
        self.mean_loss: float | None = None  # exponential moving average of applied steps
        self.steps_seen = 0

    def before_step(self, learner: OnlineLearner) -> None:
        return None

    def after_step(self, learner: OnlineLearner, result: StepResult) -> None:
        reason = self._verdict(learner, result)
        if reason is None:
            return
        self.state.healthy = False  # under the model lock: no forward pass sees these weights
        raise Diverged(reason)

    def _verdict(self, learner: OnlineLearner, result: StepResult) -> str | None:
        largest = largest_weight(learner)
        if not math.isfinite(largest):
            return "the weights became non-finite"
        limit = self.settings.max_abs_weight
        if largest > limit:
            return f"a weight reached {largest:.3g}, above PSP_GUARD__MAX_ABS_WEIGHT={limit:g}"
        if not result.applied or not math.isfinite(result.loss):
            return None  # a refused step changed nothing
        mean = self.mean_loss
        if mean is not None and self.steps_seen >= self.settings.warmup_steps:
            ceiling = max(self.settings.runaway_factor * mean, self.settings.runaway_min_loss)
            if result.loss > ceiling:
                return (
                    f"the loss ran away to {result.loss:.3g}, more than "
                    f"{self.settings.runaway_factor:g} times its recent mean {mean:.3g}"
                )
        self.steps_seen += 1
        self.mean_loss = result.loss if mean is None else 0.95 * mean + 0.05 * result.loss
        return None
