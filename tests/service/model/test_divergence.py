"""The divergence guard: bad weights are caught under the model lock and predict answers 503."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psp_core.learner import TrainingConfig
from psp_core.models import ModelConfig
from service.contexts.definition import ContextDefinition
from service.model.answers import ModelUnhealthy
from service.model.divergence import Diverged, DivergenceGuard, largest_weight
from service.model.host import ModelHost, TrainRows
from service.settings import GuardSettings
from service.testing.faults import FaultInjector, FaultSettings


def _host(lr: float = 0.05) -> ModelHost:
    # Plain SGD on unscaled inputs: the step size follows the gradient, so a huge learning rate
    # or input shows.
    config = ModelConfig(kind="binary", input_shape=(8,), hidden=(16,), input_scaling="none")
    host = ModelHost(config, TrainingConfig(optimizer="sgd", lr=lr), torch.device("cpu"))
    host.add_contexts([ContextDefinition(0, seed=1, power=None)])
    return host


def _rows(n: int = 4, scale: float = 1.0) -> TrainRows:
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((n, 8)) * scale).astype(np.float32)
    return TrainRows(np.zeros(n, dtype=np.int64), inputs, np.arange(n) % 10)


def test_non_finite_weights_mark_the_host_unhealthy_and_predict_refuses() -> None:
    host = _host()
    host.step_watchers += [
        FaultInjector(FaultSettings(nonfinite_steps=1)),
        DivergenceGuard(GuardSettings(), host.state),
    ]
    with pytest.raises(Diverged, match="the weights became non-finite"):
        host.train_step(_rows())
    assert not host.healthy
    with pytest.raises(ModelUnhealthy, match="being restored"):
        host.predict(_rows().inputs, np.array([0]))


def test_a_huge_learning_rate_is_caught_by_the_weight_ceiling() -> None:
    host = _host(lr=1e30)
    host.step_watchers.append(DivergenceGuard(GuardSettings(), host.state))
    with pytest.raises(Diverged, match="above PSP_GUARD__MAX_ABS_WEIGHT=1e\\+06"):
        host.train_step(_rows())
    assert largest_weight(host.learner) > 1e6


def test_a_runaway_loss_is_caught_after_the_warm_up() -> None:
    host = _host()
    guard = DivergenceGuard(
        GuardSettings(warmup_steps=3, runaway_factor=10, runaway_min_loss=1), host.state
    )
    host.step_watchers.append(guard)
    for _ in range(5):
        host.train_step(_rows())
    assert guard.mean_loss is not None and guard.mean_loss < 5
    with pytest.raises(Diverged, match="the loss ran away"):
        host.train_step(_rows(scale=1e4))


def test_healthy_steps_pass_and_predictions_stay_finite() -> None:
    host = _host()
    host.step_watchers.append(DivergenceGuard(GuardSettings(), host.state))
    for _ in range(10):
        assert host.train_step(_rows()).applied
    probabilities, version = host.predict(_rows().inputs, np.array([0] * 4))
    assert version == 10 and np.isfinite(probabilities).all()


def test_a_non_finite_probability_is_never_answered() -> None:
    host = _host()
    with torch.no_grad():
        next(host.learner.model.parameters()).fill_(float("inf"))
    with pytest.raises(ModelUnhealthy, match="non-finite weights"):
        host.predict(_rows().inputs, np.array([0] * 4))
