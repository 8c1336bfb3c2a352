"""The in-process runners; the HTTP one is tested against the service in test_http_runner."""

from __future__ import annotations

import torch

from psp_bench.baselines import EWCConfig
from psp_bench.methods import Method
from psp_bench.runners import EWCRunner, PSPRunner, SeparateRunner, in_process_runner
from psp_core import ContextSpec, ModelConfig, TrainingConfig

CONFIG = ModelConfig(kind="none", input_shape=(64,), hidden=(32,), seed=0)
TRAINING = TrainingConfig()


def _batch(seed: int, rows: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(rows, 64, generator=generator), torch.randint(
        0, 10, (rows,), generator=generator
    )


def test_the_factory_builds_the_method_runner() -> None:
    ewc = EWCConfig()
    assert isinstance(in_process_runner(Method.parse("ewc"), CONFIG, TRAINING, ewc), EWCRunner)
    assert isinstance(
        in_process_runner(Method.parse("separate"), CONFIG, TRAINING, ewc), SeparateRunner
    )
    runner = in_process_runner(Method.parse("onepower-local"), CONFIG, TRAINING, ewc)
    assert isinstance(runner, PSPRunner)
    assert runner.learner.model.config.kind == "onepower"
    assert runner.learner.model.config.local_mix


def test_psp_runner_keeps_one_row_per_key_and_scores_before_learning() -> None:
    runner = PSPRunner(ModelConfig(kind="complex", input_shape=(64,), hidden=(32,)), TRAINING)
    runner.register("a", ContextSpec(seed=0))
    runner.register("a", ContextSpec(seed=0))
    runner.register("b", ContextSpec(seed=1))
    assert runner.rows == {"a": 0, "b": 1}
    x, y = _batch(0, rows=100)
    before = runner.predict("a", x)
    assert before.shape == (100,) and before.dtype == torch.int64
    correct = runner.train("a", x, y)
    assert correct.dtype == torch.bool and torch.equal(correct, before == y)
    assert not torch.equal(runner.predict("a", x), runner.predict("b", x))


def test_ewc_runner_consolidates_when_the_key_changes() -> None:
    runner = EWCRunner(CONFIG, TRAINING, EWCConfig(lam=1.0, samples=20))
    for _ in range(3):
        runner.train("task-0", *_batch(1))
    assert runner.consolidations == 0 and runner.recent_rows == 32  # keeps >= 20 recent rows
    runner.train("task-1", *_batch(2))
    assert runner.consolidations == 1 and runner.ewc.fisher is not None
    assert runner.recent_rows == 16
    runner.train("task-1", *_batch(3))
    assert runner.consolidations == 1
