"""What drift detection adds to a checkpoint's registry transaction.

A checkpoint moves each trained context's counts into the registry in one transaction
(`RegistryStore.commit_training`): the counters, the hourly bucket and, since drift detection,
the context's detector. This times that transaction with and without the detectors, rounds
alternating, with `--contexts` contexts in every checkpoint (the worst case: every context
trained since the last one), on SQLite and on PostgreSQL. Predictions never touch any of it.

Run: `python benchmarks/drift_cost.py [--contexts 5000] [--rounds 15]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from _harness import machine_line, print_table
from _stores import throwaway_postgres

from service.feedback.drift import DriftConfig
from service.registry.accuracy import Scores, add_scores
from service.registry.counters import add_training_counts
from service.registry.database import make_engine, make_session_factory
from service.registry.drift import observe_scores
from service.registry.migrate import upgrade
from service.registry.registration import create_contexts


def time_checkpoints(url: str, contexts: int, rounds: int) -> tuple[float, float]:
    """Median seconds of a checkpoint's transaction without and with the detectors."""
    upgrade(url)
    engine = make_engine(url)
    try:
        sessions = make_session_factory(engine)
        with sessions.begin() as session:
            items = [(f"tenant-{n}", n, None) for n in range(contexts)]
            created = create_contexts(session=session, kind="complex", items=items)
            indices = [row.index for row, _ in created]
        counts = {index: (50, 45) for index in indices}
        scores = {index: Scores(50, 45) for index in indices}
        spans: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for detect in (False, True):
                started = time.perf_counter()
                with sessions.begin() as session:
                    at = datetime.now(UTC)
                    add_training_counts(session=session, counts=counts)
                    add_scores(session=session, train=scores, at=at)
                    if detect:
                        observe_scores(
                            session=session,
                            source="train",
                            scores=scores,
                            config=DriftConfig(),
                            at=at,
                            max_events=20,
                        )
                spans[detect].append(time.perf_counter() - started)
        return statistics.median(spans[False]), statistics.median(spans[True])
    finally:
        engine.dispose()


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    print(f"drift_cost: {machine_line()}")
    print(f"{args.contexts:,} contexts in every checkpoint, {args.rounds} rounds, medians")
    rows = []
    with tempfile.TemporaryDirectory(prefix="psp-drift-cost-") as directory:
        sqlite = time_checkpoints(f"sqlite:///{directory}/r.db", args.contexts, args.rounds)
    with throwaway_postgres() as url:
        postgres = time_checkpoints(url, args.contexts, args.rounds)
    for name, (without, with_) in (("SQLite", sqlite), ("PostgreSQL", postgres)):
        per_context_us = 1e6 * (with_ - without) / args.contexts
        rows.append(
            [
                name,
                f"{1000 * without:.0f}",
                f"{1000 * with_:.0f}",
                f"{with_ / without:.2f}",
                f"{per_context_us:.0f}",
            ]
        )
    print_table(
        ["registry", "without ms", "with detectors ms", "with / without", "µs per context"],
        rows,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
