"""The streams of the drift benchmark: tenants whose data changes halfway, learned in-process.

Two scenarios over scikit-learn's digits (no download):
- `tenants`: each tenant names the ten digits through its own permutation of the labels (the
  tenants stream of `psp bench`); the switched tenants change to a new permutation halfway.
- `rotating-digits`: every tenant sees the digits under their usual labels, at the angle of
  task 0 of the rotating-digits stream; the switched tenants jump a quarter turn (to task 1 of a
  four-task revolution) halfway. `turn_others` turns every tenant's input gradually as well, by
  that many degrees over its rows, as the rotating stream does.

Tenants send `block_rows` rows at a time and the blocks of all tenants are interleaved in a
random order, as in `psp_bench.tenants`. One superposed model learns them in-process with the
service's defaults (complex 2 × 256, Adam 3e-4, rehearsal), scoring each row before learning it
(prequential), which is what the trainer reports to the registry at each checkpoint.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from psp_bench.datasets import load_digits_dataset
from psp_bench.runners import PSPRunner
from psp_bench.streams import rotate_images
from psp_core import ContextSpec, ModelConfig, TrainingConfig
from psp_core.replay import DEFAULT_REPLAY_ROWS

SCENARIOS = ("tenants", "rotating-digits")
QUARTER_TURN = 90.0


@dataclass(frozen=True)
class ScoredBlock:
    """One block as the trainer scored it.

    Attributes:
        tenant: Who sent it.
        seen: Rows in the block.
        correct: Rows the model got right just before learning them.
        after_switch: The block comes after its tenant's switch.
    """

    tenant: int
    seen: int
    correct: int
    after_switch: bool


class DriftStream:
    """`tenants` tenants of `rows_per_tenant` rows each, in interleaved blocks; a share of
    them (`switched`) changes its data after half of its rows.

    Args:
        scenario: One of `SCENARIOS`.
        tenants: How many tenants.
        rows_per_tenant: Rows each tenant sends (a multiple of `block_rows`).
        block_rows: Rows per block.
        switch_share: The share of tenants that switch.
        seed: Fixes the data, the switched tenants and the order of the blocks.
        turn_others: Degrees every tenant's input turns gradually over its rows
            (`rotating-digits` only).
    """

    def __init__(
        self,
        scenario: str,
        *,
        tenants: int,
        rows_per_tenant: int,
        block_rows: int,
        switch_share: float,
        seed: int,
        turn_others: float = 0.0,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, not {scenario!r}")
        if rows_per_tenant % block_rows or rows_per_tenant < 2 * block_rows:
            raise ValueError("rows per tenant must be a multiple of the block, at least two")
        self.scenario = scenario
        self.tenants = tenants
        self.rows_per_tenant = rows_per_tenant
        self.block_rows = block_rows
        self.turn_others = turn_others
        self.switch_row = rows_per_tenant // 2
        self.dataset = load_digits_dataset(seed)
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(tenants, generator=generator)[: round(switch_share * tenants)]
        self.switched = frozenset(int(t) for t in chosen)
        classes = self.dataset.num_classes
        identity = torch.arange(classes)
        permuted = scenario == "tenants"
        self.before = [
            torch.randperm(classes, generator=generator) if permuted else identity
            for _ in range(tenants)
        ]
        self.after = [
            _another_permutation(self.before[t], generator) if permuted else identity
            for t in range(tenants)
        ]
        self.rows = torch.randint(
            0, len(self.dataset.y_train), (tenants, rows_per_tenant), generator=generator
        )
        # The tenants' turns are shuffled; each tenant's own blocks go out in row order.
        turns = torch.arange(tenants).repeat_interleave(rows_per_tenant // block_rows)
        order = turns[torch.randperm(len(turns), generator=generator)].tolist()
        sent = [0] * tenants
        self.blocks: list[tuple[int, int]] = []
        for tenant in order:
            self.blocks.append((tenant, sent[tenant]))
            sent[tenant] += block_rows

    def block(self, position: int) -> tuple[int, torch.Tensor, torch.Tensor, bool]:
        """The tenant, `(b, D)` inputs and `(b,)` labels of the block sent at `position`, and
        whether it comes after its tenant's switch."""
        tenant, start = self.blocks[position]
        rows = self.rows[tenant, start : start + self.block_rows]
        after = tenant in self.switched and start >= self.switch_row
        labels = (self.after if after else self.before)[tenant][self.dataset.y_train[rows]]
        x = self.dataset.x_train[rows]
        if self.scenario == "rotating-digits":
            angle = self.turn_others * start / self.rows_per_tenant
            angle += QUARTER_TURN if after else 0.0
            if angle:
                assert self.dataset.image_shape is not None
                x = rotate_images(x, self.dataset.image_shape, angle)
        return tenant, x, labels, after


def _another_permutation(current: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random permutation that moves at least half of the labels of `current`."""
    while True:
        candidate = torch.randperm(len(current), generator=generator)
        if int((candidate == current).sum()) <= len(current) // 2:
            return candidate


def learn_stream(
    stream: DriftStream,
    *,
    hidden: tuple[int, ...] = (256, 256),
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    after_block: Callable[[PSPRunner, ScoredBlock], None] | None = None,
) -> list[ScoredBlock]:
    """Learns every block in order with the service's defaults and returns their scores;
    `after_block` sees the runner and each block's scores as they come."""
    config = ModelConfig(
        kind="complex",
        input_shape=(stream.dataset.input_size,),
        hidden=hidden,
        num_classes=stream.dataset.num_classes,
        seed=seed,
    )
    runner = PSPRunner(config, TrainingConfig(), DEFAULT_REPLAY_ROWS)
    for tenant in range(stream.tenants):
        runner.register(f"tenant-{tenant}", ContextSpec(seed=tenant))
    scored = []
    for position in range(len(stream.blocks)):
        tenant, x, y, after = stream.block(position)
        correct = runner.send(f"tenant-{tenant}", x, y, batch_size=batch_size, wait=False)
        scored.append(ScoredBlock(tenant, len(y), int(correct.sum()), after))
        if after_block is not None:
            after_block(runner, scored[-1])
        if progress is not None and position % 500 == 0:
            progress(position, len(stream.blocks))
    return scored


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose the drift streams (see `streams_of`)."""
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--tenants", type=int, default=300)
    parser.add_argument("--rows-per-tenant", type=int, default=1000)
    parser.add_argument("--block-rows", type=int, default=50)
    parser.add_argument("--switch-share", type=float, default=1 / 3)
    parser.add_argument("--turn-others", type=float, default=0.0)


def streams_of(args: argparse.Namespace) -> Iterator[tuple[str, int, DriftStream]]:
    """(scenario, seed, stream) for every scenario and seed of `add_stream_options`."""
    for scenario in args.scenarios.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            stream = DriftStream(
                scenario,
                tenants=args.tenants,
                rows_per_tenant=args.rows_per_tenant,
                block_rows=args.block_rows,
                switch_share=args.switch_share,
                seed=seed,
                turn_others=args.turn_others,
            )
            yield scenario, seed, stream
