"""The per-tenant models a practitioner would build instead of superposition, on one shared MLP.

- `TenantEmbeddingMLP` (`embed`): each row enters the shared MLP beside a learned embedding of
  its tenant (32 numbers per tenant), the usual way of conditioning one network on an id.
- `TenantGainsMLP` (`gains`): every layer multiplies its input by a learned gain vector of the
  tenant (BatchEnsemble-style rank-1 adapters), initialised to random signs. At initialisation
  this is exactly the binary superposition; the gains then learn, where the contexts stay fixed.

Both take the interface of `psp_core.SuperposedModel` that `OnlineLearner` and the benchmark's
runner use: `config`, `device`, `forward(x, context_index)` and `add_context(spec)`. Their
per-tenant tables grow in blocks of `ROWS_PER_BLOCK` tenants, each block a parameter of its own,
so a new tenant never rebuilds the optimiser's state of the others (the runner hands each new
block to the optimiser).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from psp_core import ContextSpec, ModelConfig

EMBEDDING_SIZE = 32
ROWS_PER_BLOCK = 256


class GrowingTable(nn.Module):
    """One row of `width` learned numbers per tenant, in blocks of `ROWS_PER_BLOCK` rows.

    Args:
        width: Numbers per row.
        initial: Fills a new block `(ROWS_PER_BLOCK, width)` in place, from the block's number.
    """

    def __init__(self, width: int, initial: Callable[[torch.Tensor, int], object]) -> None:
        super().__init__()
        self.width = width
        self.initial = initial
        self.blocks = nn.ParameterList()
        self.rows = 0

    def add_row(self) -> int:
        if self.rows == len(self.blocks) * ROWS_PER_BLOCK:
            device = self.blocks[0].device if len(self.blocks) else torch.device("cpu")
            block = torch.empty(ROWS_PER_BLOCK, self.width, device=device)
            self.initial(block, len(self.blocks))
            self.blocks.append(nn.Parameter(block))
        self.rows += 1
        return self.rows - 1

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """`(B, width)`: the row of each example."""
        if len(rows) and (int(rows.max()) >= self.rows or int(rows.min()) < 0):
            raise IndexError(f"a row names no registered tenant (there are {self.rows})")
        table = self.blocks[0] if len(self.blocks) == 1 else torch.cat(list(self.blocks))
        return table[rows]


def _widths(config: ModelConfig, extra_input: int = 0) -> list[int]:
    return [config.input_size + extra_input, *config.hidden, config.num_classes]


def _check_mlp(config: ModelConfig) -> None:
    if config.arch != "mlp":
        raise ValueError("the embed and gains baselines are MLPs; use --arch mlp")


class TenantEmbeddingMLP(nn.Module):
    """A plain MLP whose input is the row beside a learned 32-number embedding of its tenant."""

    def __init__(self, config: ModelConfig, embedding_size: int = EMBEDDING_SIZE) -> None:
        super().__init__()
        _check_mlp(config)
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        widths = _widths(config, embedding_size)
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.body = nn.Sequential(*layers[:-1])
        self.embeddings = GrowingTable(
            embedding_size, lambda block, _: block.normal_(generator=generator)
        )

    def forward(self, x: torch.Tensor, context_index: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([x.reshape(len(x), -1), self.embeddings(context_index)], dim=1)
        logits: torch.Tensor = self.body(inputs)
        return logits

    def add_context(self, spec: ContextSpec) -> int:
        """A new tenant: a new embedding row (the spec does not matter here)."""
        return self.embeddings.add_row()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class TenantGainsMLP(nn.Module):
    """A plain MLP whose every layer multiplies its input by the tenant's learned gains."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        _check_mlp(config)
        self.config = config
        widths = _widths(config)
        self.layers = nn.ModuleList(
            nn.Linear(fan_in, fan_out) for fan_in, fan_out in itertools.pairwise(widths)
        )
        self.gain_tables = [
            GrowingTable(width, self._random_signs(position))
            for position, width in enumerate(widths[:-1])
        ]
        self.gains = nn.ModuleList(self.gain_tables)  # registers their parameters

    def _random_signs(self, layer: int) -> Callable[[torch.Tensor, int], object]:
        def fill(block: torch.Tensor, number: int) -> None:
            seed = (self.config.seed * 1_000_003 + layer) * 1_000_003 + number
            generator = torch.Generator().manual_seed(seed)
            signs = torch.randint(0, 2, block.shape, generator=generator) * 2 - 1
            block.copy_(signs)

        return fill

    def forward(self, x: torch.Tensor, context_index: torch.Tensor) -> torch.Tensor:
        hidden = x.reshape(len(x), -1)
        for position, layer in enumerate(self.layers):
            if position:
                hidden = torch.relu(hidden)
            hidden = layer(hidden * self.gain_tables[position](context_index))
        return hidden

    def add_context(self, spec: ContextSpec) -> int:
        """A new tenant: a row of random-sign gains for every layer."""
        rows = {table.add_row() for table in self.gain_tables}
        (row,) = rows
        return row

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


TENANT_MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "embed": TenantEmbeddingMLP,
    "gains": TenantGainsMLP,
}
