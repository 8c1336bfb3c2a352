"""The rows of a batch grouped by context, for kinds that do one product per distinct context."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowGroups:
    """The rows of a batch grouped by context.

    Attributes:
        contexts: `(U,)` the distinct context rows, ascending, on the batch's device.
        inverse: `(B,)` each row's position in `contexts`.
        order: `(B,)` row positions sorted by context (stable).
        sizes: How many rows each distinct context has, in the order of `contexts`.
    """

    contexts: torch.Tensor
    inverse: torch.Tensor
    order: torch.Tensor
    sizes: list[int]

    @classmethod
    def of(cls, context_index: torch.Tensor) -> RowGroups:
        """Groups a batch's `(B,)` context rows (one host sync, for the group sizes)."""
        contexts, inverse, sizes = torch.unique(
            context_index, return_inverse=True, return_counts=True
        )
        order = torch.argsort(inverse, stable=True)
        return cls(contexts, inverse, order, sizes.tolist())

    def __len__(self) -> int:
        return len(self.sizes)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rows of `x` `(B, ...)`, one tensor per distinct context."""
        if len(self.sizes) == 1:  # one context: the batch is its group, copied nowhere
            return (x,)
        return x[self.order].split(self.sizes)

    def merge(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        """Puts per-context results back in the batch's row order (the inverse of `split`)."""
        if len(pieces) == 1:
            return pieces[0]
        grouped = torch.cat(list(pieces))
        return grouped.new_empty(grouped.shape).index_copy(0, self.order, grouped)
