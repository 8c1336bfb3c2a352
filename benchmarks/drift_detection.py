"""Drift detection: how many switched tenants are flagged, how soon, and how many others are
flagged for nothing.

Each scenario (`_drift_streams`: `tenants`, a third of the tenants switching label permutation
halfway; `rotating-digits`, a third jumping a quarter turn halfway) is learned in-process by one
superposed model with the service's defaults, scoring every row before learning it. The scores
then go through the registry's own code path, as the trainer sends them: every
`--blocks-per-checkpoint` blocks, one `RegistryStore.commit_training` with each context's
`(seen, correct)` since the last checkpoint, on a throwaway SQLite file (or PostgreSQL
database with `--postgres`). The drifts are read back with `RegistryStore.drift_events`.

A switched tenant is detected when its first drift after the switch comes within `--within`
of its rows after the switch (counted to the end of the checkpoint that flagged it). A false
alarm is a drift of a tenant that did not switch, or of a switched one before its switch.

Run: `python benchmarks/drift_detection.py [--scenarios tenants,rotating-digits] [--seeds 0]
[--tenants 300] [--rows-per-tenant 1000] [--blocks-per-checkpoint 1,128] [--postgres]`.
Goal: >= 95 % detected within 300 rows, <= 2 % false alarms among the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from _drift_streams import DriftStream, ScoredBlock, add_stream_options, learn_stream, streams_of
from _harness import machine_line, print_table
from _stores import throwaway_postgres

from service.registry.database import make_engine
from service.registry.migrate import upgrade
from service.registry.store import RegistryStore


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint's counts, and the wall-clock span of its commit to the registry."""

    counts: dict[int, tuple[int, int]]
    after_switch_rows: dict[int, int]  # each switched tenant's rows after its switch, so far
    started: datetime
    ended: datetime


@dataclass(frozen=True)
class Outcome:
    """What one run measured."""

    switched: int
    detected: int
    delays: list[int]
    others: int
    false_others: int
    false_before_switch: int
    commit_ms: float


def _checkpoint_counts(
    scored: Sequence[ScoredBlock], per_checkpoint: int
) -> Iterator[tuple[dict[int, tuple[int, int]], dict[int, int]]]:
    """Each checkpoint's per-tenant `(seen, correct)`, and the rows each tenant has sent after
    its switch by the end of that checkpoint."""
    after: dict[int, int] = defaultdict(int)
    for start in range(0, len(scored), per_checkpoint):
        counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for block in scored[start : start + per_checkpoint]:
            counts[block.tenant][0] += block.seen
            counts[block.tenant][1] += block.correct
            if block.after_switch:
                after[block.tenant] += block.seen
        yield {t: (seen, right) for t, (seen, right) in counts.items()}, dict(after)


async def replay_through_registry(
    database_url: str, stream: DriftStream, scored: Sequence[ScoredBlock], per_checkpoint: int
) -> tuple[list[Checkpoint], dict[int, list[datetime]]]:
    """Commits every checkpoint through `RegistryStore`; the drifts found, by tenant."""
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        store = RegistryStore(engine, "complex")
        created = await store.create_many([(f"tenant-{t}", t, None) for t in range(stream.tenants)])
        index_of = {int(row.key.split("-")[1]): row.index for row, _ in created}
        checkpoints = []
        for number, (counts, after) in enumerate(_checkpoint_counts(scored, per_checkpoint), 1):
            started = datetime.now(UTC)
            await store.commit_training(
                shard=0,
                last_entry_id=f"{number}-0",
                counts={index_of[t]: value for t, value in counts.items()},
            )
            checkpoints.append(Checkpoint(counts, after, started, datetime.now(UTC)))
        drifts = {}
        for tenant in range(stream.tenants):
            found = await store.drift_events(index_of[tenant], checkpoints[0].started)
            drifts[tenant] = [event.at for event in found]
        return checkpoints, drifts
    finally:
        engine.dispose()


def judge(
    stream: DriftStream,
    checkpoints: Sequence[Checkpoint],
    drifts: dict[int, list[datetime]],
    within: int,
) -> Outcome:
    """Maps each drift to the checkpoint that committed it, then scores the detector."""
    delays, false_before, false_others = [], 0, 0
    for tenant, times in drifts.items():
        flagged = [_checkpoint_at(checkpoints, at) for at in times]
        rows_after = [checkpoints[c].after_switch_rows.get(tenant, 0) for c in flagged]
        if tenant not in stream.switched:
            false_others += bool(flagged)
            continue
        false_before += any(rows == 0 for rows in rows_after)
        after = [rows for rows in rows_after if rows > 0]
        if after:
            delays.append(after[0])
    spans = [(c.ended - c.started).total_seconds() for c in checkpoints]
    return Outcome(
        switched=len(stream.switched),
        detected=sum(1 for delay in delays if delay <= within),
        delays=sorted(delays),
        others=stream.tenants - len(stream.switched),
        false_others=false_others,
        false_before_switch=false_before,
        commit_ms=1000 * statistics.mean(spans),
    )


def _checkpoint_at(checkpoints: Sequence[Checkpoint], at: datetime) -> int:
    for number, checkpoint in enumerate(checkpoints):
        if checkpoint.started <= at <= checkpoint.ended:
            return number
    raise AssertionError(f"a drift at {at} lies outside every checkpoint's commit")


@contextlib.contextmanager
def _database(postgres: bool) -> Iterator[str]:
    if postgres:
        with throwaway_postgres() as url:
            yield url
        return
    with tempfile.TemporaryDirectory(prefix="psp-drift-") as directory:
        yield f"sqlite:///{Path(directory) / 'registry.db'}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stream_options(parser)
    parser.add_argument("--blocks-per-checkpoint", default="1,128")
    parser.add_argument("--within", type=int, default=300)
    parser.add_argument("--postgres", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("service.registry.store").setLevel(logging.ERROR)  # a line per drift
    print(f"drift_detection: {machine_line()}")
    print(
        f"{args.tenants} tenants x {args.rows_per_tenant} rows in blocks of {args.block_rows}, "
        f"{args.switch_share:.0%} switch halfway; registry: "
        f"{'PostgreSQL' if args.postgres else 'SQLite'}; detected = within {args.within} rows"
    )
    rows = []
    for scenario, seed, stream in streams_of(args):
        started = time.perf_counter()
        scored = learn_stream(stream, seed=seed)
        learned_s = time.perf_counter() - started
        for per in (int(p) for p in args.blocks_per_checkpoint.split(",")):
            with _database(args.postgres) as url:
                checkpoints, drifts = asyncio.run(replay_through_registry(url, stream, scored, per))
            outcome = judge(stream, checkpoints, drifts, args.within)
            rows.append(_row(scenario, seed, per, len(checkpoints), outcome, learned_s))
    print_table(
        [
            "scenario",
            "seed",
            "blocks/ckpt",
            "ckpts",
            "detected",
            "delay rows med/p95/max",
            "false alarms (others)",
            "before switch",
            "commit ms",
            "learn s",
        ],
        rows,
    )


def _row(
    scenario: str, seed: int, per: int, checkpoints: int, outcome: Outcome, learned_s: float
) -> list[object]:
    delays = outcome.delays
    spread = (
        f"{delays[len(delays) // 2]}/{delays[int(0.95 * (len(delays) - 1))]}/{delays[-1]}"
        if delays
        else "-"
    )
    return [
        scenario,
        seed,
        per,
        checkpoints,
        f"{outcome.detected}/{outcome.switched} = {outcome.detected / outcome.switched:.1%}",
        spread,
        f"{outcome.false_others}/{outcome.others} = {outcome.false_others / outcome.others:.1%}",
        outcome.false_before_switch,
        f"{outcome.commit_ms:.1f}",
        f"{learned_s:.0f}",
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
