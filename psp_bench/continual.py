"""The continual-learning experiment: every method trains on the same stream and is scored alike.

For each method the loop walks the stream step by step. It registers the context of the batch's
task when first needed, trains the batch through the method's runner (test-then-train, which
gives the prequential score), and measures test accuracy:

- on task 0 every `eval_every` steps (and before the first step): the curve of the paper's
  Fig. 6, or at angle 0° the curve of Fig. 9-11;
- on every task already trained, after each segment of the last cycle: the rows of the accuracy
  matrix `R` from which `metrics` computes average accuracy, forgetting and BWT.

A task is always evaluated under its own context, at its reference position (its index; for a
rotating stream, the angle where its slice starts).
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from psp_bench import metrics
from psp_bench.continual_config import ContinualConfig
from psp_bench.continual_results import ContinualResults, MethodResult, Trace
from psp_bench.datasets import Dataset, load_digits_dataset
from psp_bench.footprint import footprint
from psp_bench.methods import Method, parse_methods
from psp_bench.runners import Runner, in_process_runner
from psp_bench.streams import Stream, make_stream
from psp_bench.tenants import TenantsStream, run_tenants_method
from psp_core import ModelConfig

StepProgress = Callable[[int, int], None]
"""Called with (steps done, total steps) while a method runs."""

RunnerFactory = Callable[[Method, ModelConfig], Runner]
"""Builds the runner of a method on an architecture (whose kind the method sets)."""


def accuracy(runner: Runner, key: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows of `x` `(N, D)` whose predicted class under `key` equals `y` `(N,)`."""
    return float((runner.predict(key, x) == y).float().mean())


def run_method(
    stream: Stream,
    method: Method,
    runner: Runner,
    *,
    eval_every: int,
    progress: StepProgress | None = None,
) -> Trace:
    """Runs one method over the whole stream through `runner`."""
    registered: set[str] = set()

    def context(task: int, position: float) -> str:
        key, spec = method.context(task, position)
        if key not in registered:
            runner.register(key, spec)
            registered.add(key)
        return key

    def evaluate(task: int) -> float:
        x, y = stream.test_set(task)
        return accuracy(runner, context(task, float(task)), x, y)

    tasks, total = stream.num_tasks, stream.total_steps
    first_row_segment = stream.cycles * tasks - tasks  # the last cycle's first segment
    trained: set[int] = set()
    matrix: list[list[float]] = []
    curve_steps, curve_accuracy = [0], [evaluate(0)]
    correct = 0
    for step in range(total):
        task = stream.task_at(step)
        x, y = stream.train_batch(step)
        correct += int(runner.train(context(task, stream.position_at(step)), x, y).sum())
        trained.add(task)
        done = step + 1
        if done % eval_every == 0 or done == total:
            curve_steps.append(done)
            curve_accuracy.append(evaluate(0))
        segment = step // stream.steps_per_task
        if done % stream.steps_per_task == 0 and segment >= first_row_segment:
            matrix.append([evaluate(j) if j in trained else math.nan for j in range(tasks)])
        if progress is not None and (done % 50 == 0 or done == total):
            progress(done, total)
    return Trace(
        matrix=matrix,
        curve_steps=curve_steps,
        curve_accuracy=curve_accuracy,
        prequential_accuracy=metrics.prequential_accuracy(correct, total * stream.batch_size),
        contexts=len(registered),
    )


def _environment(config: ContinualConfig) -> dict[str, object]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "transport": f"http {config.via_http}" if config.via_http else "in-process",
    }


Measure = Callable[[Method, Runner, StepProgress | None], Trace]
"""Runs one method over the run's stream through its runner."""


def run_continual(
    config: ContinualConfig,
    *,
    runner_factory: RunnerFactory | None = None,
    progress: Callable[[Method], StepProgress | None] | None = None,
    methods: Sequence[Method] | None = None,
) -> ContinualResults:
    """Runs every method of `config` on its stream.

    Args:
        config: The run.
        runner_factory: Builds each method's runner; in-process models when None.
        progress: Gives the progress callback of each method (e.g. a progress bar).
        methods: Parsed methods; parsed from `config.methods` when None.
    """
    torch.set_num_threads(config.threads)
    if config.stream == "tenants":
        measure, described, dataset = _tenants_measure(config)
    else:
        measure, described, dataset = _tasks_measure(config)
    model_config = config.model_config(dataset)
    factory = runner_factory or _in_process_factory(config)
    parsed = list(methods) if methods is not None else parse_methods(",".join(config.methods))
    results = ContinualResults(config, described, environment=_environment(config))
    for method in parsed:
        runner = factory(method, model_config)
        try:
            steps = progress(method) if progress is not None else None
            started = time.perf_counter()
            trace = measure(method, runner, steps)
            seconds = time.perf_counter() - started
            results.methods.append(_method_result(method, runner, model_config, trace, seconds))
        finally:
            runner.close()
    return results


def _in_process_factory(config: ContinualConfig) -> RunnerFactory:
    training, ewc = config.training_config(), config.ewc_config()

    def in_process(method: Method, architecture: ModelConfig) -> Runner:
        return in_process_runner(method, architecture, training, ewc, config.replay_rows)

    return in_process


def _method_result(
    method: Method, runner: Runner, model_config: ModelConfig, trace: Trace, seconds: float
) -> MethodResult:
    return MethodResult(
        method=method.name,
        matrix=trace.matrix,
        curve_steps=trace.curve_steps,
        curve_accuracy=trace.curve_accuracy,
        prequential_accuracy=trace.prequential_accuracy,
        refused_steps=runner.refused_steps,
        footprint=footprint(method, model_config, trace.contexts),
        seconds=seconds,
        last_cycle=trace.last_cycle,
        tenant_accuracy=trace.tenant_accuracy,
    )


def _tasks_measure(config: ContinualConfig) -> tuple[Measure, dict[str, Any], Dataset]:
    """How a method is measured on a permuted or rotating stream; the stream's description
    and data."""
    stream = make_stream(
        config.stream,
        tasks=config.tasks,
        steps_per_task=config.steps_per_task,
        cycles=config.cycles,
        batch_size=config.batch_size,
        seed=config.seed,
        data_dir=Path(config.data_dir) if config.data_dir else None,
        test_limit=config.test_limit,
        input_scale=config.input_scale,
    )

    def measure(method: Method, runner: Runner, progress: StepProgress | None) -> Trace:
        eval_every = config.resolved_eval_every
        trace = run_method(stream, method, runner, eval_every=eval_every, progress=progress)
        if not stream.rotating:
            return trace
        start = stream.total_steps - stream.period
        window = [
            value
            for step, value in zip(trace.curve_steps, trace.curve_accuracy, strict=True)
            if step >= start
        ]
        return replace(trace, last_cycle=metrics.window_summary(window))

    return measure, stream.describe(), stream.dataset


def _tenants_measure(config: ContinualConfig) -> tuple[Measure, dict[str, Any], Dataset]:
    """How a method is measured on the tenants stream (the matrix and the task-0 curve stay
    empty); the stream's description and data."""
    stream = TenantsStream(
        tenants=config.tenants,
        rows_per_tenant=config.rows_per_tenant,
        block_rows=config.block_rows,
        seed=config.seed,
        skew=config.tenant_skew,
        dataset=load_digits_dataset(config.seed).scaled(config.input_scale),
    )

    def measure(method: Method, runner: Runner, progress: StepProgress | None) -> Trace:
        batch_size = config.batch_size
        trace = run_tenants_method(stream, method, runner, batch_size=batch_size, progress=progress)
        prequential = trace.prequential_accuracy
        return Trace(
            matrix=[],
            curve_steps=[],
            curve_accuracy=[],
            prequential_accuracy=prequential if prequential is not None else math.nan,
            contexts=trace.contexts,
            tenant_accuracy=trace.accuracies,
        )

    return measure, stream.describe(), stream.dataset
