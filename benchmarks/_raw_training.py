"""The raw psp_core training loop that P5 divides the service's rate by: `OnlineLearner.step`
in this process, no HTTP, no queue."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import torch
from _cpu_usage import CpuWatch, cpu_seconds

from psp_core import ContextSpec, ModelConfig, OnlineLearner, TrainingConfig, build_model
from psp_core.replay import DEFAULT_REPLAY_ROWS, ReplayBuffer


@dataclass
class RawFigures:
    """The plain psp_core loop: examples/s and CPU milliseconds per 1000 examples."""

    rate: float
    cpu_ms_per_1000: float


def raw_training_rate(
    args: argparse.Namespace, seconds: float, rehearsal: bool = True
) -> RawFigures:
    """The plain psp_core loop: `OnlineLearner.step` on minibatches of 32 rows mixed over
    `--contexts` contexts, the model of the same shape and `--torch-threads`, no HTTP, no queue.

    With `rehearsal` it learns as the service does by default: a buffer of
    `DEFAULT_REPLAY_ROWS` rows, 64 of them mixed into every step (96 rows a step in all), so the
    ratio to it is the cost of the service itself; without, the plain 32-row step.
    """
    config = ModelConfig(kind=args.kind, input_shape=(args.input,), hidden=tuple(args.hidden))
    model = build_model(config)
    model.bank.extend([ContextSpec(seed=n) for n in range(args.contexts)])
    replay = ReplayBuffer(DEFAULT_REPLAY_ROWS, args.input) if rehearsal else None
    learner = OnlineLearner(model, TrainingConfig(), replay=replay)
    threads = torch.get_num_threads()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    try:
        return _step_loop(learner, args, seconds)
    finally:
        torch.set_num_threads(threads)


def _step_loop(learner: OnlineLearner, args: argparse.Namespace, seconds: float) -> RawFigures:
    """Runs `learner.step` on 32-row minibatches for `seconds`."""
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.rand(32, args.input, generator=generator),
            torch.randint(0, args.contexts, (32,), generator=generator),
            torch.randint(0, 10, (32,), generator=generator),
        )
        for _ in range(64)
    ]
    for x, index, y in batches[:8]:  # warm-up
        learner.step(x, index, y)
    examples, began, cpu = 0, time.perf_counter(), cpu_seconds(os.getpid())
    while time.perf_counter() - began < seconds:
        x, index, y = batches[examples // 32 % len(batches)]
        learner.step(x, index, y)
        examples += 32
    used = cpu_seconds(os.getpid()) - cpu
    return RawFigures(examples / (time.perf_counter() - began), used / examples * 1e6)


def raw_block(args: argparse.Namespace) -> tuple[RawFigures, str]:
    """The raw loop for half of `--seconds`, and which other processes used the CPU meanwhile."""
    watch = CpuWatch()
    figures = raw_training_rate(args, args.seconds / 2)
    return figures, watch.line()
