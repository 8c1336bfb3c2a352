"""A long randomized fault campaign: `--faults` faults over at least `--minutes` minutes against
real `psp` processes on a PostgreSQL and a Redis of their own, then the invariants (every
accepted example applied exactly once, deleted tenants out of the newest checkpoint,
predictions back after each fault, versions that only grow).

The campaign itself is `service.testing.campaign`, which tests/service/faults/test_campaign.py
runs in short; see its docstring for the processes, the faults and the traffic. The summary
names the seed and the command that runs it again; the exit status is 1 when an invariant
failed.

Run: `python benchmarks/fault_campaign.py [--faults 200] [--minutes 10] [--seed 0]
[--topology split|all] [--no-second-writer] [--keep] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from service.testing.campaign import CampaignPlan, run_campaign


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=200, help="faults to inject at least")
    parser.add_argument("--minutes", type=float, default=10, help="minutes to go on at least")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--topology",
        choices=("split", "all"),
        default="split",
        help="split: an API process and a worker; all: one process whose steps run in a child",
    )
    parser.add_argument(
        "--second-writer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start a second worker for shard 0 now and then, which must exit with status 2",
    )
    parser.add_argument(
        "--recovery-seconds",
        type=float,
        default=30,
        help="how soon predictions must answer after a fault healed",
    )
    parser.add_argument("--pause-seconds", type=float, default=0.5, help="mean pause at least")
    parser.add_argument("--keep", action="store_true", help="keep the data folders and logs")
    parser.add_argument("--json", default=None, help="save the figures to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = CampaignPlan(
        seed=args.seed,
        faults=args.faults,
        minutes=args.minutes,
        topology=args.topology,
        second_writer=args.second_writer,
        recovery_seconds=args.recovery_seconds,
        pause_seconds=args.pause_seconds,
    )
    directory = Path(tempfile.mkdtemp(prefix="psp-fault-campaign-"))
    result = run_campaign(plan, directory, log=lambda line: print(line, flush=True))
    print(result.summary())
    if args.json:
        figures = {
            "seed": result.seed,
            "topology": result.topology,
            "seconds": round(result.seconds, 1),
            "faults": dict(result.faults),
            "not_injected": dict(result.skipped),
            "requests": dict(result.requests),
            "checks": [
                {"name": c.name, "passed": c.passed, "detail": c.detail} for c in result.checks
            ],
            "passed": result.passed,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if args.keep or not result.passed:
        print(f"data folders and logs kept in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
