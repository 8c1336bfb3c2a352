"""What the per-context input scaling costs a training step, measured in one run.

Two learners of the service's default model (complex 2x256, 64 inputs, Adam, the default
rehearsal buffer with 64 replayed rows per step, 1,000 contexts), one with
`input_scaling="context"` and one with `"none"`, take turns: a step of one, then the same
minibatch (32 fresh rows over random contexts) on the other, `--steps` times, on one torch
thread. Taking turns puts any change in the machine's load on both alike, which back-to-back
service runs (`training_throughput.py --paths memory,memory-unscaled`) do not manage on a
shared 2-core machine. The figure is the ratio of the median step times; goal: at most 1.05.

    python benchmarks/scaling_cost.py [--steps 2000] [--contexts 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _harness import machine_line

from psp_core import ContextSpec, ModelConfig, OnlineLearner, TrainingConfig, build_model
from psp_core.replay import DEFAULT_REPLAY_ROWS, ReplayBuffer


def learner(scaling: str, contexts: int) -> OnlineLearner:
    config = ModelConfig(
        kind="complex", input_shape=(64,), hidden=(256, 256), input_scaling=scaling
    )
    model = build_model(config)
    model.bank.extend([ContextSpec(seed=i) for i in range(contexts)])
    return OnlineLearner(model, TrainingConfig(), replay=ReplayBuffer(DEFAULT_REPLAY_ROWS, 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--contexts", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"scaling_cost: {machine_line()}")
    learners = {name: learner(name, args.contexts) for name in ("context", "none")}
    times: dict[str, list[float]] = {name: [] for name in learners}
    rng = np.random.default_rng(0)
    for step in range(args.steps + 100):
        x = torch.from_numpy(rng.random((32, 64), dtype=np.float32) * 16)
        index = torch.from_numpy(rng.integers(0, args.contexts, 32))
        y = torch.from_numpy(rng.integers(0, 10, 32))
        for name in ("context", "none") if step % 2 else ("none", "context"):
            started = time.perf_counter()
            learners[name].step(x, index, y)
            if step >= 100:  # the first steps fill the buffer and warm the caches
                times[name].append(time.perf_counter() - started)
    scaled, plain = (statistics.median(times[n]) * 1e3 for n in ("context", "none"))
    print(
        f"median step over {args.steps} turns, {args.contexts} contexts: with input scaling "
        f"{scaled:.3f} ms, without {plain:.3f} ms; ratio {scaled / plain:.3f} (goal <= 1.05)"
    )


if __name__ == "__main__":
    main()
