"""Runners: in-process ones, and the HTTP one against a stand-in of the contract."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch

from psp_bench.baselines import EWCConfig
from psp_bench.continual import run_method
from psp_bench.http_runner import BenchHTTPError, HttpRunner
from psp_bench.methods import Method
from psp_bench.runners import EWCRunner, PSPRunner, SeparateRunner, in_process_runner
from psp_bench.streams import make_stream
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


def _http_runner(service: Any, kind: str = "complex") -> HttpRunner:
    return HttpRunner(
        "http://psp.test", expected_kind=kind, key_prefix="run-", transport=service.transport()
    )


def test_the_http_runner_measures_what_the_in_process_runner_measures(
    fake_service: Callable[..., Any],
) -> None:
    config = ModelConfig(kind="complex", input_shape=(64,), hidden=(32,), seed=0)
    stream = make_stream("permuted-digits", tasks=2, steps_per_task=20, seed=0)
    method = Method.parse("complex")
    service = fake_service(config, TRAINING)
    over_http = run_method(stream, method, _http_runner(service), eval_every=10)
    in_process = run_method(stream, method, PSPRunner(config, TRAINING), eval_every=10)
    assert over_http == in_process
    assert set(service.rows) == {"run-task-0", "run-task-1"}
    assert service.authorizations == {None}
    assert service.learner.model_version == stream.total_steps


def test_the_http_runner_waits_out_a_full_queue_and_reports_refusals(
    fake_service: Callable[..., Any],
) -> None:
    service = fake_service(ModelConfig(kind="complex", input_shape=(64,), hidden=(32,)), TRAINING)
    runner = _http_runner(service)
    service.busy_answers = 2
    runner.register("task-0", ContextSpec(seed=0))
    assert service.log[:3] == ["POST /contexts"] * 3
    runner.train("task-0", *_batch(4))
    service.refuse_steps = True
    runner.train("task-0", *_batch(5))
    assert runner.refused_steps == 1 and service.learner.model_version == 1


def test_the_http_runner_checks_the_service_model(fake_service: Callable[..., Any]) -> None:
    config = ModelConfig(kind="complex", input_shape=(64,), hidden=(32,), seed=0)
    service = fake_service(config, TRAINING)
    runner = _http_runner(service)
    assert runner.check_model(config) == []
    runner.register("task-0", ContextSpec(seed=0))
    runner.train("task-0", *_batch(6))
    warnings = runner.check_model(replace(config, seed=3))
    assert len(warnings) == 2
    assert "already applied 1 steps" in warnings[0] and "seed is 0 and --seed is 3" in warnings[1]
    with pytest.raises(BenchHTTPError, match=r"hidden=\[32\] \(the run needs \[256, 256\]\)"):
        runner.check_model(replace(config, hidden=(256, 256)))


def test_the_http_runner_sends_the_api_key(fake_service: Callable[..., Any]) -> None:
    service = fake_service(ModelConfig(kind="complex", input_shape=(64,), hidden=(32,)), TRAINING)
    runner = HttpRunner(
        "http://psp.test", expected_kind="complex", api_key="psp_k_s", transport=service.transport()
    )
    runner.register("task-0", ContextSpec(seed=0))
    assert service.authorizations == {"Bearer psp_k_s"}
    assert runner.key_prefix.startswith("bench-") and len(runner.key_prefix) == 15


def test_the_http_runner_explains_refusals(fake_service: Callable[..., Any]) -> None:
    service = fake_service(ModelConfig(kind="binary", input_shape=(64,), hidden=(32,)), TRAINING)
    runner = _http_runner(service, kind="complex")
    with pytest.raises(BenchHTTPError, match="PSP_MODEL__KIND=complex"):
        runner.register("task-0", ContextSpec(seed=0))
    with pytest.raises(BenchHTTPError, match="404: no context run-task-9"):
        runner.predict("task-9", torch.zeros(2, 64))
