"""Whether acting on a detected drift helps the tenant relearn: rehearsal purged of its stale
rows, against rehearsal left as it is.

After a concept drift the replay buffer still holds the tenant's rows under the old meaning
(old labels, or the old angle), and rehearsing them pulls the tenant's model back to what it
was. The candidate response: when the service's detector (`service.feedback.drift`, defaults,
fed each block's prequential scores, the finest granularity a checkpoint gives) flags a
tenant, its rows leave the buffer, so its rehearsal fills again with rows of the new meaning.
(A higher learning rate for one tenant does not exist in one shared optimiser, and a larger
share of rehearsal for it would replay the stale rows more, not less.)

Each scenario of `benchmarks/drift_detection.py` (a third of the tenants switch halfway) is
learned twice with the same seed, without and with the purge. Reported: the switched tenants'
prequential accuracy on their first 300 rows after the switch and on all rows after it; the
other tenants' accuracy on their second half (what a false alarm's purge could cost them); and
how many purges hit tenants that had not switched.

Run: `python benchmarks/drift_response.py [--scenarios tenants,rotating-digits] [--seeds 0]
[--tenants 300] [--rows-per-tenant 1000]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence

import torch
from _drift_streams import (
    DriftStream,
    ScoredBlock,
    add_stream_options,
    learn_stream,
    streams_of,
)
from _harness import machine_line, print_table

from psp_bench.runners import PSPRunner
from service.feedback.drift import DetectorState, DriftConfig, observe

EARLY_ROWS = 300
"""The rows after a switch over which relearning is judged first."""


class Purger:
    """Feeds every block's scores to its tenant's detector and, when `purge` is on, takes a
    flagged tenant's rows out of the rehearsal buffer."""

    def __init__(self, tenants: int, purge: bool) -> None:
        self.states = [DetectorState() for _ in range(tenants)]
        self.config = DriftConfig()
        self.purge = purge
        self.flagged: list[int] = []

    def __call__(self, runner: PSPRunner, block: ScoredBlock) -> None:
        state, drift = observe(self.states[block.tenant], block.seen, block.correct, self.config)
        self.states[block.tenant] = state
        if drift is None:
            return
        self.flagged.append(block.tenant)
        replay = runner.learner.replay
        if self.purge and replay is not None:
            replay.purge({runner.rows[f"tenant-{block.tenant}"]})


def accuracies(stream: DriftStream, scored: list[ScoredBlock]) -> tuple[float, float, float]:
    """Mean per-tenant accuracy: switched tenants on their first `EARLY_ROWS` rows after the
    switch, and on all of them; the others on their second half."""
    counts: dict[tuple[int, str], list[int]] = {}
    sent = [0] * stream.tenants  # each tenant's rows before the block
    for block in scored:
        tenant = block.tenant
        start = sent[tenant]
        sent[tenant] += block.seen
        if block.after_switch:
            early = start - stream.switch_row < EARLY_ROWS
            parts = ["after", "early"] if early else ["after"]
        elif tenant not in stream.switched and start >= stream.switch_row:
            parts = ["others"]
        else:
            continue
        for part in parts:
            right_and_seen = counts.setdefault((tenant, part), [0, 0])
            right_and_seen[0] += block.correct
            right_and_seen[1] += block.seen

    def mean(part: str) -> float:
        return statistics.fmean(
            right / seen for (_, p), (right, seen) in counts.items() if p == part
        )

    return mean("early"), mean("after"), mean("others")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stream_options(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"drift_response: {machine_line()}")
    rows = []
    for scenario, seed, stream in streams_of(args):
        for purge in (False, True):
            purger = Purger(stream.tenants, purge)
            scored = learn_stream(stream, seed=seed, after_block=purger)
            early, after, others = accuracies(stream, scored)
            wrong = sum(1 for t in purger.flagged if t not in stream.switched)
            response = "purge" if purge else "none"
            drifts = f"{len(purger.flagged)} ({wrong} of others)"
            accuracy = [f"{early:.3f}", f"{after:.3f}", f"{others:.3f}"]
            rows.append([scenario, str(seed), response, *accuracy, drifts])
            print(" | ".join(rows[-1]), flush=True)
    print_table(
        [
            "scenario",
            "seed",
            "response",
            f"switched, first {EARLY_ROWS} rows after",
            "switched, all after",
            "others, second half",
            "drifts",
        ],
        rows,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
