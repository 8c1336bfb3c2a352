"""What the noisy-neighbour defences cost the service's training throughput (P5), in one run.

The defence with a cost on every step is the per-context input scaling (standardisation and the
row bound, `psp_core.scaling`); the others (a request's own non-finite rows, refused steps
retried entry by entry, per-context shares of the queue and of remembered predictions) do
nothing until a tenant misbehaves. This runs `psp serve` on the in-process queue with the
scaling (the default) and without (`PSP_MODEL__INPUT_SCALING=none`) in turns, `--rounds`
times, under the same train load as `training_throughput.py`, and prints each round's applied
rates and the median of the rounds' ratios. Taking turns puts the machine's changes in load on
both alike. Goal: scaled ÷ unscaled >= 0.95.

    python benchmarks/defences_cost.py [--rounds 3] [--seconds 15] [--json PATH]

`benchmarks/scaling_cost.py` measures the same cost on the bare training step, where it is
largest.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from _serving import add_load_options, add_service_options, run_benchmark
from training_throughput import service_training_rate

UNSCALED = {"PSP_MODEL__INPUT_SCALING": "none"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_options(parser, "round and setting")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each setting")
    parser.add_argument("--train-clients", type=int, default=16, help="concurrent train clients")
    parser.add_argument("--train-rows", type=int, default=32, help="rows per train request")
    add_service_options(parser)
    return parser.parse_args(argv)


def defences_cost(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Each round: the scaled service's applied examples/s, then the unscaled one's (the
    order swaps every round)."""
    rounds = []
    for number in range(args.rounds):
        settings = [("scaled", {}), ("unscaled", UNSCALED)]
        if number % 2:
            settings.reverse()
        rates = {
            name: service_training_rate(args, workdir, f"psp-{name}-{number}", env).applied_rate
            for name, env in settings
        }
        ratio = rates["scaled"] / rates["unscaled"]
        print(
            f"  round {number + 1}: scaled {rates['scaled']:,.0f} examples/s, unscaled "
            f"{rates['unscaled']:,.0f} examples/s, ratio {ratio:.3f}"
        )
        rounds.append({**rates, "ratio": ratio})
    median = statistics.median(r["ratio"] for r in rounds)
    print(f"  median ratio over {args.rounds} rounds: {median:.3f}   goal >= 0.95")
    return {"rounds": rounds, "median_ratio": median}


def main(argv: list[str] | None = None) -> None:
    run_benchmark("defences_cost", "p5_scaled_over_unscaled", defences_cost, parse_args(argv))


if __name__ == "__main__":
    main()
