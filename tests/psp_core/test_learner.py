"""The online learner: test-then-train, refusal of non-finite steps, and continual learning."""

import numpy as np
import pytest
import torch

from psp_core.contexts import ContextSpec
from psp_core.learner import OnlineLearner, TrainingConfig
from psp_core.models import ModelConfig, build_model
from psp_core.replay import ReplayBuffer


def _learner(
    kind: str = "complex", optimizer: str = "sgd", input_scaling: str = "context"
) -> OnlineLearner:
    model = build_model(ModelConfig(kind=kind, hidden=(32,), input_scaling=input_scaling))
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
    # Unscaled, so that `predict` and the step's own scoring see the rows the same way (a
    # scaled step scores with input statistics that already include its rows).
    learner = _learner(input_scaling="none")
    x, index = torch.randn(16, 64), torch.zeros(16, dtype=torch.long)
    y = learner.predict(x, index).argmax(1)  # labels the current model already gets right
    result = learner.step(x, index, y)
    assert result.applied and result.model_version == 1 == learner.model_version
    assert result.correct.dtype == torch.bool and bool(result.correct.all())
    wrong = (y + 1) % 10
    assert not learner.step(x, index, wrong).correct.any()


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


def test_adam_is_fused_on_the_cpu_and_steps_as_per_tensor_adam_does() -> None:
    fused, reference = _learner(optimizer="adam"), _learner(optimizer="adam")
    assert fused.optimizer.param_groups[0]["fused"] is True
    reference.optimizer = torch.optim.Adam(reference.model.parameters(), lr=0.05)
    assert not reference.optimizer.param_groups[0]["fused"]
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        x = torch.randn(16, 64, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        index = torch.randint(0, 3, (16,), generator=generator)
        fused.step(x, index, y)
        reference.step(x, index, y)
    pairs = zip(fused.model.parameters(), reference.model.parameters(), strict=True)
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


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
    model = build_model(ModelConfig(kind=kind, input_shape=(64,), hidden=(128, 128)))
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


def _replaying_learner(capacity: int = 100, per_step: int = 8) -> OnlineLearner:
    model = build_model(ModelConfig(kind="complex", hidden=(32,)))
    model.bank.extend([ContextSpec(seed=i) for i in range(3)])
    return OnlineLearner(
        model,
        TrainingConfig(optimizer="sgd", lr=0.05, replay_per_step=per_step),
        replay=ReplayBuffer(capacity, 64, seed=0),
    )


def test_replayed_rows_are_learned_but_never_scored() -> None:
    learner = _replaying_learner()
    x, y = torch.randn(4, 64), torch.randint(0, 10, (4,))
    first = learner.step(x, torch.zeros(4, dtype=torch.long), y)
    assert first.correct.shape == (4,) and learner.replay is not None and len(learner.replay) == 4
    second = learner.step(x[:2], torch.ones(2, dtype=torch.long), y[:2])
    assert second.correct.shape == (2,)  # the 8 replayed rows are not scored
    assert len(learner.replay) == 6 and learner.replay.contexts() == {0, 1}


def test_replay_changes_what_a_step_learns() -> None:
    plain, replaying = _learner(), _replaying_learner()
    replaying.model.load_state_dict(plain.model.state_dict())
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    index = torch.zeros(8, dtype=torch.long)
    for learner in (plain, replaying):
        learner.step(x, index, y)  # the buffer is empty: the same step
    assert torch.equal(
        plain.model.body[1].base_layer.weight, replaying.model.body[1].base_layer.weight
    )
    for learner in (plain, replaying):
        learner.step(x, index + 1, (y + 1) % 10)
    assert not torch.equal(
        plain.model.body[1].base_layer.weight, replaying.model.body[1].base_layer.weight
    )


def test_a_refused_step_keeps_its_rows_out_of_the_buffer() -> None:
    learner = _replaying_learner()
    learner.step(
        torch.randn(4, 64), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    )
    poisoned = torch.full((4, 64), float("nan"))
    result = learner.step(
        poisoned, torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    )
    assert not result.applied
    assert learner.replay is not None and learner.replay.contexts() == {0}


def test_gradients_are_clipped_to_the_configured_norm() -> None:
    learner = _learner()
    learner.config = TrainingConfig(optimizer="sgd", lr=1.0, momentum=0.0, clip_norm=0.5)
    learner.optimizer = learner.config.build(learner.model.parameters())
    before = [p.detach().clone() for p in learner.model.parameters()]
    x = torch.randn(16, 64) * 255  # raw-scale inputs give huge gradients
    learner.step(x, torch.zeros(16, dtype=torch.long), torch.randint(0, 10, (16,)))
    moved = torch.cat(
        [
            (p.detach() - b).flatten()
            for p, b in zip(learner.model.parameters(), before, strict=True)
        ]
    )
    assert float(moved.norm()) == pytest.approx(0.5, rel=1e-4)  # lr 1, no momentum: the update


def test_clipping_and_replay_settings_validate() -> None:
    with pytest.raises(ValueError, match="clip_norm"):
        TrainingConfig(clip_norm=0.0)
    with pytest.raises(ValueError, match="replay_per_step"):
        TrainingConfig(replay_per_step=-1)


def test_prepare_changes_no_weight_and_commit_steps_as_step_does() -> None:
    stepped, split = _learner(optimizer="adam"), _learner(optimizer="adam")
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    index = torch.arange(16) % 3
    before = _snapshot(split)

    prepared = split.prepare_step(x, index, y)
    assert _snapshot(split) == before and split.model_version == 0
    assert all(p.grad is not None for p in split.model.parameters())
    result = split.commit_step(prepared)

    expected = stepped.step(x, index, y)
    assert (result.applied, result.loss, result.model_version) == (True, expected.loss, 1)
    assert torch.equal(result.correct, expected.correct)
    assert _snapshot(split) == _snapshot(stepped)


def test_a_step_commits_once_and_only_the_latest_preparation() -> None:
    learner = _learner()
    x, y, index = torch.randn(4, 64), torch.randint(0, 10, (4,)), torch.zeros(4).long()
    first = learner.prepare_step(x, index, y)
    latest = learner.prepare_step(x, index, y)
    with pytest.raises(RuntimeError, match="latest prepare_step"):
        learner.commit_step(first)
    assert learner.commit_step(latest).model_version == 1
    with pytest.raises(RuntimeError, match="once"):
        learner.commit_step(latest)
    assert learner.model_version == 1


def test_the_optimizer_is_built_at_its_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[TrainingConfig] = []
    build = TrainingConfig.build

    def counted(config: TrainingConfig, params: object) -> torch.optim.Optimizer:
        built.append(config)
        return build(config, params)

    monkeypatch.setattr(TrainingConfig, "build", counted)
    learner = _learner(optimizer="adam")
    x, index = torch.randn(4, 64), torch.zeros(4, dtype=torch.long)
    learner.predict(x, index)
    assert built == []  # a learner that only predicts (a read replica) builds none
    learner.step(x, index, torch.zeros(4).long())
    learner.step(x, index, torch.zeros(4).long())
    assert built == [learner.config]
    assert isinstance(learner.optimizer, torch.optim.Adam)
