"""The tenants stream: many tenants share the inputs but not the labels, and arrive in blocks.

Each tenant maps the 8x8 digits to classes through its own fixed permutation of the ten labels,
so a model that cannot tell tenants apart cannot serve them all. The training rows arrive the
way HTTP clients send them: one tenant's block of `block_rows` rows at a time, with the tenants'
blocks interleaved in a random order.

Runners learn each block as it arrives (`Runner.send`): in-process, the block is cut into
minibatches of `batch_size` rows in order, as a trainer that keeps up with its clients would
(the worst case for mixing tenants); over HTTP, the block is one `POST /train/{key}` without
waiting, and the service forms its own minibatches. At the end every tenant is scored on the
held-out digits under its own labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from psp_bench.datasets import Dataset, load_digits_dataset
from psp_bench.methods import Method
from psp_bench.runners import Runner


class TenantsStream:
    """Label-permuted digits for `tenants` tenants, as interleaved per-tenant blocks.

    Args:
        tenants: How many tenants.
        rows_per_tenant: Training rows each tenant sends on average, drawn with replacement.
        block_rows: Rows per block (per request).
        skew: Tenant `t` sends rows in proportion to `(t + 1) ** -skew` (at least one block):
            0 makes every tenant equal, 1 gives a few loud tenants and many quiet ones.
        seed: Fixes the test split, the label maps, the rows and the order of the blocks.
        dataset: The data; scikit-learn's digits when None.
    """

    def __init__(
        self,
        *,
        tenants: int,
        rows_per_tenant: int,
        block_rows: int,
        seed: int,
        skew: float = 0.0,
        dataset: Dataset | None = None,
    ) -> None:
        if min(tenants, rows_per_tenant, block_rows) < 1:
            raise ValueError("tenants, rows per tenant and block rows must all be >= 1")
        self.dataset = dataset or load_digits_dataset(seed)
        self.tenants = tenants
        self.rows_per_tenant = rows_per_tenant
        self.block_rows = block_rows
        self.skew = skew
        generator = torch.Generator().manual_seed(seed)
        classes = self.dataset.num_classes
        self.label_maps = torch.stack(
            [torch.randperm(classes, generator=generator) for _ in range(tenants)]
        )  # (K, C): tenant t calls class c `label_maps[t, c]`
        weights = (torch.arange(tenants, dtype=torch.float64) + 1) ** -skew
        sizes = (weights / weights.mean() * rows_per_tenant).round().long().clamp(min=block_rows)
        self.rows_sent: list[int] = sizes.tolist()
        # The stream is a few flat tensors, whatever its length: the training rows of every
        # tenant one after another, and per block its tenant, first row and length.
        self._rows = torch.cat(
            [
                torch.randint(0, len(self.dataset.y_train), (size,), generator=generator)
                for size in self.rows_sent
            ]
        ).int()
        first_row = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
        per_tenant = (sizes + block_rows - 1) // block_rows
        tenants_of = torch.repeat_interleave(torch.arange(tenants), per_tenant)
        block_in_tenant = torch.arange(len(tenants_of)) - torch.repeat_interleave(
            per_tenant.cumsum(0) - per_tenant, per_tenant
        )
        starts = first_row[tenants_of] + block_in_tenant * block_rows
        ends = torch.minimum(starts + block_rows, (first_row + sizes)[tenants_of])
        order = torch.randperm(len(tenants_of), generator=generator)
        self._block_tenant = tenants_of[order].int()
        self._block_start = starts[order]
        self._block_end = ends[order]

    def __len__(self) -> int:
        """Blocks in the stream."""
        return len(self._block_tenant)

    def block_tenant(self, position: int) -> int:
        """The tenant whose block is sent at `position`."""
        return int(self._block_tenant[position])

    def block_rows_of(self, position: int) -> torch.Tensor:
        """The training rows of the dataset that the block at `position` sends."""
        start, end = int(self._block_start[position]), int(self._block_end[position])
        return self._rows[start:end].long()

    def block(self, position: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The tenant, `(b, D)` inputs and `(b,)` labels of the block sent at `position`."""
        tenant, rows = self.block_tenant(position), self.block_rows_of(position)
        labels = self.label_maps[tenant][self.dataset.y_train[rows]]
        return tenant, self.dataset.x_train[rows], labels

    def test_set(self, tenant: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out inputs `(N_test, D)` and the tenant's labels for them `(N_test,)`."""
        return self.dataset.x_test, self.label_maps[tenant][self.dataset.y_test]

    def describe(self) -> dict[str, Any]:
        return {
            "name": "tenants",
            "data": self.dataset.name,
            "family": "tenants",
            "tenants": self.tenants,
            "rows_per_tenant": self.rows_per_tenant,
            "block_rows": self.block_rows,
            "skew": self.skew,
            "blocks": len(self),
            "test_rows": len(self.dataset.y_test),
            "input_size": self.dataset.input_size,
        }


@dataclass(frozen=True)
class TenantsTrace:
    """What the loop measured for one method.

    Attributes:
        accuracies: Final test accuracy of each tenant, in tenant order.
        prequential_accuracy: Test-then-train accuracy over every row, or None where the
            runner does not report it (over HTTP, blocks are sent without waiting).
        contexts: Contexts registered (for `separate`, networks created).
    """

    accuracies: list[float]
    prequential_accuracy: float | None
    contexts: int


def run_tenants_method(
    stream: TenantsStream,
    method: Method,
    runner: Runner,
    *,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> TenantsTrace:
    """Sends every block through `runner`, then scores every tenant."""
    keys: dict[int, str] = {}

    def key_of(tenant: int) -> str:
        if tenant not in keys:
            key, spec = method.context(tenant, float(tenant))
            runner.register(key, spec)
            keys[tenant] = key
        return keys[tenant]

    total = len(stream)
    correct, scored = 0, 0
    for position in range(total):
        tenant, x, y = stream.block(position)
        last = position == total - 1
        outcome = runner.send(key_of(tenant), x, y, batch_size=batch_size, wait=last)
        if outcome is not None:
            correct += int(outcome.sum())
            scored += len(outcome)
        if progress is not None and (position % 50 == 0 or last):
            progress(position + 1, total)
    accuracies = []
    for tenant in range(stream.tenants):
        x, y = stream.test_set(tenant)
        accuracies.append(float((runner.predict(key_of(tenant), x) == y).float().mean()))
    return TenantsTrace(
        accuracies=accuracies,
        prequential_accuracy=correct / scored if scored else None,
        contexts=len(keys),
    )
