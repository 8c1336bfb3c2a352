"""Rewriting kept checkpoints without deleted contexts."""

from pathlib import Path

import numpy as np
import torch

from psp_core.checkpoint import load_checkpoint, save_checkpoint
from psp_core.checkpoint_scrub import forget_contexts_in, held_contexts
from psp_core.contexts import ContextSpec
from psp_core.learner import OnlineLearner, TrainingConfig
from psp_core.models import ModelConfig, build_model
from psp_core.replay import ReplayBuffer


def _trained_on_three_contexts() -> OnlineLearner:
    model = build_model(ModelConfig(kind="complex", hidden=(16,)))
    model.bank.extend([ContextSpec(seed=i) for i in range(3)])
    config = TrainingConfig(lr=0.01, replay_per_step=8)
    learner = OnlineLearner(model, config, replay=ReplayBuffer(64, 64))
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        learner.step(
            torch.randn(9, 64, generator=g) * 5,
            torch.arange(9) % 3,
            torch.randint(0, 10, (9,), generator=g),
        )
    return learner


def test_a_rewritten_checkpoint_restores_the_learner_that_forgot_the_context(
    tmp_path: Path,
) -> None:
    learner = _trained_on_three_contexts()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, learner, {"last_entry_id": "5-0"})
    assert held_contexts(path) == {0, 1, 2}
    rows_of_one = learner.replay.rows_of(1)  # type: ignore[union-attr]
    assert rows_of_one > 0

    assert forget_contexts_in(path, {1}) == rows_of_one
    assert held_contexts(path) == {0, 2}
    restored, metadata = load_checkpoint(path)
    assert metadata == {"last_entry_id": "5-0"}
    replay, scaler = restored.replay, restored.scaler
    assert replay is not None and scaler is not None
    assert replay.contexts() == {0, 2}
    assert len(replay) == len(learner.replay) - rows_of_one  # type: ignore[arg-type]
    assert sorted(scaler.rows().ids.tolist()) == [0, 2]
    replay.add(np.zeros((2, 64), np.float32), np.array([1, 1]), np.array([0, 1]))
    assert replay.rows_of(1) == 0  # a forgotten context's rows are refused from now on
    for kept, saved in zip(restored.model.parameters(), learner.model.parameters(), strict=True):
        assert torch.equal(kept, saved)  # the weights are left as they were


def test_a_checkpoint_without_the_contexts_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, _trained_on_three_contexts())
    before = path.read_bytes()
    assert forget_contexts_in(path, {7, 8}) == 0
    assert path.read_bytes() == before
