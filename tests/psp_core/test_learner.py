"""The online learner: test-then-train, refusal of non-finite steps, and continual learning."""

import numpy as np
import pytest
import torch

from psp_core.contexts import ContextSpec
from psp_core.learner import OnlineLearner, TrainingConfig
from psp_core.models import ModelConfig, build_model


def _learner(kind: str = "complex", optimizer: str = "sgd") -> OnlineLearner:
    model = build_model(ModelConfig(kind=kind, hidden=(32,)))
    model.bank.extend(
        [
            ContextSpec(power=float(i)) if kind == "onepower" else ContextSpec(seed=i)
            for i in range(3)
        ]
    )
    return OnlineLearner(model, TrainingConfig(optimizer=optimizer, lr=0.05))


def _snapshot(learner: OnlineLearner) -> list[bytes]:
    weights = [p.detach().numpy().tobytes() for p in learner.model.parameters()]
    optim = [
        v.numpy().tobytes()
        for state in learner.optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    ]
    return weights + optim


def test_step_scores_before_learning() -> None:
    learner = _learner()
    x, index = torch.randn(16, 64), torch.zeros(16, dtype=torch.long)
    y = learner.predict(x, index).argmax(1)  # labels the current model already gets right
    result = learner.step(x, index, y)
    assert result.applied and result.model_version == 1 == learner.model_version
    assert result.correct.dtype == torch.bool and bool(result.correct.all())
    assert result.accuracy == 1.0
    wrong = (y + 1) % 10
    assert learner.step(x, index, wrong).accuracy == 0.0


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_steps_reduce_the_loss(optimizer: str) -> None:
    learner = _learner(optimizer=optimizer)
    learner.config = TrainingConfig(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01)
    learner.optimizer = learner.config.build(learner.model.parameters())
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    index = torch.arange(32) % 3
    first = learner.step(x, index, y).loss
    for _ in range(30):
        last = learner.step(x, index, y).loss
    assert last < first / 2


def _one_element_infinite(grad: torch.Tensor) -> torch.Tensor:
    poisoned = grad.clone()
    poisoned.view(-1)[-1] = float("-inf")
    return poisoned


@pytest.mark.parametrize("poison", ["nan_input", "inf_input", "nan_gradient", "inf_gradient"])
def test_non_finite_step_leaves_everything_byte_identical(poison: str) -> None:
    learner = _learner(optimizer="adam")
    learner.step(torch.randn(8, 64), torch.zeros(8, dtype=torch.long), torch.zeros(8).long())
    before, version = _snapshot(learner), learner.model_version
    x = torch.randn(8, 64)
    if poison == "nan_gradient":  # a finite loss whose gradient is not finite
        first = next(learner.model.parameters())
        first.register_hook(lambda grad: grad * float("nan"))
    elif poison == "inf_gradient":  # one element of the last parameter's gradient
        last = list(learner.model.parameters())[-1]
        last.register_hook(_one_element_infinite)
    else:
        x[0, 0] = float("nan") if poison == "nan_input" else float("inf")
    result = learner.step(x, torch.zeros(8, dtype=torch.long), torch.zeros(8).long())
    assert not result.applied
    assert learner.refused_steps == 1 and learner.model_version == version
    assert _snapshot(learner) == before
    assert all(p.grad is None for p in learner.model.parameters())


def test_predict_returns_probabilities_for_mixed_contexts() -> None:
    learner = _learner()
    probs = learner.predict(torch.randn(5, 64), torch.tensor([0, 1, 2, 1, 0]))
    assert probs.shape == (5, 10)
    assert torch.allclose(probs.sum(1), torch.ones(5))
    assert not probs.requires_grad


def test_training_config_validates() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        TrainingConfig(optimizer="lbfgs")


def _average_accuracy(kind: str, digits, tasks: int = 5, steps: int = 200) -> float:
    x_train, y_train, x_test, y_test = digits
    rng = np.random.default_rng(0)
    perms = [torch.arange(64)] + [torch.tensor(rng.permutation(64)) for _ in range(tasks - 1)]
    model = build_model(ModelConfig(kind=kind, input_shape=(64,), hidden=(256, 256)))
    model.bank.extend(
        [
            ContextSpec(power=float(t)) if kind == "onepower" else ContextSpec(seed=t)
            for t in range(tasks)
        ]
    )
    learner = OnlineLearner(model, TrainingConfig())
    g = torch.Generator().manual_seed(0)
    for task, perm in enumerate(perms):
        for _ in range(steps):
            batch = torch.randint(0, len(x_train), (32,), generator=g)
            learner.step(x_train[batch][:, perm], torch.full((32,), task), y_train[batch])
    accuracies = [
        float(
            (learner.predict(x_test[:, perm], torch.full((len(x_test),), task)).argmax(1) == y_test)
            .float()
            .mean()
        )
        for task, perm in enumerate(perms)
    ]
    return float(np.mean(accuracies))


def test_superposition_remembers_permuted_digits_far_better_than_none(digits) -> None:
    baseline = _average_accuracy("none", digits)
    best_psp = max(_average_accuracy(kind, digits) for kind in ("binary", "onepower"))
    assert best_psp >= baseline + 0.25, (best_psp, baseline)
