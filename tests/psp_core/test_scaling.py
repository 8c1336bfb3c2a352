"""Per-context input standardisation: running statistics, the transform and the row bound."""

import numpy as np
import pytest
import torch

from psp_core.contexts import ContextSpec
from psp_core.learner import OnlineLearner, TrainingConfig
from psp_core.models import ModelConfig, build_model
from psp_core.scaling import ContextScaler

WIDTH = 16


def _fed(scaler: ContextScaler, ids: np.ndarray, x: np.ndarray) -> None:
    scaler.apply(scaler.fold(ids, torch.from_numpy(x)))


def test_the_statistics_are_those_of_every_value_a_context_sent() -> None:
    rng = np.random.default_rng(0)
    scaler = ContextScaler(WIDTH)
    a, b = rng.normal(3.0, 2.0, (50, WIDTH)), rng.normal(-1.0, 0.5, (30, WIDTH))
    _fed(scaler, np.full(20, 7), a[:20])
    # Then the rest of both, mixed in one call.
    _fed(scaler, np.array([7] * 30 + [9] * 30), np.concatenate([a[20:], b]))
    stats = scaler.rows(np.array([7, 9, 9]))
    assert stats.ids.tolist() == [7, 9]
    for row, values in ((0, a), (1, b)):
        assert stats.count[row] == values.size
        assert stats.mean[row] == pytest.approx(values.mean())
        assert np.sqrt(stats.m2[row] / stats.count[row]) == pytest.approx(values.std())


def test_a_context_is_standardised_whatever_the_scale_it_sends() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((64, WIDTH)).astype(np.float32)
    plain, scaled = ContextScaler(WIDTH), ContextScaler(WIDTH)
    ids = np.zeros(64, dtype=np.int64)
    _fed(plain, ids, x)
    _fed(scaled, ids, x * 1e6)
    z = plain.transform(ids, torch.from_numpy(x)).inputs
    z_scaled = scaled.transform(ids, torch.from_numpy(x * 1e6)).inputs
    assert torch.allclose(z, z_scaled, atol=1e-4)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(z.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_the_largest_float32_standardises_to_a_finite_bounded_row() -> None:
    scaler = ContextScaler(WIDTH)
    ids = np.array([0, 0, 1])
    x = np.array([[0.5] * WIDTH, [0.1] * WIDTH, [3e38] * WIDTH], dtype=np.float32)
    scaler.apply(scaler.fold(ids, torch.from_numpy(x)))
    scaled = scaler.transform(ids, torch.from_numpy(x))
    assert torch.isfinite(scaled.inputs).all()
    rms = scaled.inputs.square().mean(dim=1).sqrt()
    assert float(rms.max()) <= scaler.row_bound + 1e-5
    # Context 0's far row is outside a typical row's size; context 1 sent one row only.
    outlier = np.array([[0.5] * WIDTH, [50.0] * WIDTH], dtype=np.float32)
    bounded = scaler.transform(np.array([0, 0]), torch.from_numpy(outlier)).bounded
    assert bounded.tolist() == [False, True]


def test_fold_stores_nothing_until_applied_and_forget_drops_a_context() -> None:
    scaler = ContextScaler(WIDTH)
    ids = np.array([3, 3, 5])
    x = torch.rand(3, WIDTH)
    pending = scaler.fold(ids, x)
    assert len(scaler) == 0
    scaler.apply(pending)
    assert scaler.rows().ids.tolist() == [3, 5]
    scaler.forget({3})
    assert scaler.rows().ids.tolist() == [5]


def test_the_statistics_follow_a_context_whose_scale_changes() -> None:
    scaler = ContextScaler(WIDTH, memory_rows=100)
    ids = np.zeros(50, dtype=np.int64)
    for _ in range(20):
        _fed(scaler, ids, np.random.default_rng(2).random((50, WIDTH)))
    for _ in range(20):  # ten times the memory, at a thousand times the scale
        _fed(scaler, ids, np.random.default_rng(3).random((50, WIDTH)) * 1000)
    mean = float(scaler.rows().mean[0])
    assert 450 < mean < 550


def test_the_state_round_trips() -> None:
    scaler = ContextScaler(WIDTH)
    _fed(scaler, np.array([4, 1, 4]), np.random.default_rng(4).random((3, WIDTH)))
    copy = ContextScaler(WIDTH)
    copy.load_state_tensors(scaler.state_tensors())
    x = torch.rand(5, WIDTH)
    ids = np.array([1, 4, 4, 1, 8])
    assert torch.equal(copy.transform(ids, x).inputs, scaler.transform(ids, x).inputs)
    copy.load_state_tensors({})
    assert len(copy) == 0


def test_a_refused_step_leaves_the_statistics_as_they_were() -> None:
    model = build_model(ModelConfig(kind="complex", input_shape=(WIDTH,), hidden=(8,)))
    model.bank.extend([ContextSpec(seed=1)])
    learner = OnlineLearner(model, TrainingConfig())
    x, index, y = torch.rand(4, WIDTH), torch.zeros(4, dtype=torch.long), torch.arange(4)
    assert learner.step(x, index, y).applied
    assert learner.scaler is not None
    before = learner.scaler.state_tensors()
    with torch.no_grad():  # a NaN weight makes the loss NaN: the step is refused
        next(learner.model.parameters()).fill_(float("nan"))
    assert not learner.step(x * 100, index, y).applied
    after = learner.scaler.state_tensors()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_an_old_checkpoint_config_means_unscaled_inputs() -> None:
    stored = ModelConfig().to_dict()
    del stored["input_scaling"]
    assert ModelConfig.from_dict(stored).input_scaling == "none"
    with pytest.raises(ValueError, match="input_scaling"):
        ModelConfig(input_scaling="minmax")


def test_a_step_scales_and_folds_as_transform_then_fold_would() -> None:
    rng = np.random.default_rng(5)
    scaler = ContextScaler(WIDTH)
    _fed(scaler, np.array([2, 6, 6]), rng.normal(5.0, 3.0, (3, WIDTH)))
    ids = np.array([6, 9, 2, 6, 2])  # 9 is new; the last two rows are "replayed"
    x = torch.from_numpy(rng.normal(5.0, 3.0, (5, WIDTH)))
    scaled, update = scaler.transform_and_fold(ids, x, 3)
    alone = scaler.transform(ids, x)
    assert torch.equal(scaled.inputs, alone.inputs)
    assert scaled.bounded.tolist() == alone.bounded.tolist()
    folded = scaler.fold(ids[:3], x[:3])
    assert update.ids.tolist() == folded.ids.tolist() == [2, 6, 9]
    for name in ("count", "mean", "m2"):
        assert np.array_equal(getattr(update, name), getattr(folded, name))


def test_contexts_the_scaler_does_not_know_are_only_bounded() -> None:
    scaler = ContextScaler(WIDTH)
    _fed(scaler, np.array([1]), np.full((1, WIDTH), 7.0))
    x = torch.tensor([[5.0] * WIDTH, [2.0] * WIDTH], dtype=torch.float64)
    # Id 1 is known (mean 7, no spread: only shifted); 500 is beyond every id seen.
    z = scaler.transform(np.array([1, 500]), x).inputs
    assert z[0].tolist() == [-2.0] * WIDTH
    assert z[1].tolist() == [2.0] * WIDTH
