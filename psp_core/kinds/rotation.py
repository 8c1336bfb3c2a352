"""Rotation contexts: a Haar-random orthogonal matrix per context (paper §4.2.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from psp_core.contexts import ContextSpec, rotation_context
from psp_core.kinds.base import ComplexSides, LayerContexts, LayerWeights
from psp_core.kinds.groups import RowGroups


class RotationContexts(LayerContexts):
    """An `M×M` float32 matrix per context (4M² bytes).

    The contexts are matrices, so a batch is grouped by context and each distinct context does
    one product: a batch with few contexts costs about what a plain layer costs, and no `M×M`
    matrix is ever copied per row.
    """

    kind = "rotation"
    # Binding a kernel is an `M×M` product, so a convolution binds each distinct context once
    # and loops over a few of them rather than binding every row.
    MAX_LOOPED_GROUPS = 16

    def row_shape(self) -> tuple[int, ...]:
        return (self.dim, self.dim)

    def make_row(self, spec: ContextSpec) -> torch.Tensor:
        assert spec.seed is not None
        return rotation_context(self.model_seed, spec.seed, self.layer_index, self.dim)

    def linear(
        self, x: torch.Tensor, rows: torch.Tensor, weights: LayerWeights, sides: ComplexSides
    ) -> torch.Tensor:
        """`W C_k x + b`, each row rotated by its own context."""
        return F.linear(self.rotate(x, rows), weights.real, weights.bias)

    def rotate(self, flat: torch.Tensor, context_index: torch.Tensor) -> torch.Tensor:
        """`C_k x`: one `(n, M) @ (M, M)` product per distinct context.

        Args:
            flat: real inputs `(B, M)`.
            context_index: `(B,)` int64 rows of the table.

        Returns:
            `(B, M)`.
        """
        groups = RowGroups.of(context_index)
        rotations = self.gather(groups.contexts)  # (U, M, M)
        rotated = [r @ c.T for r, c in zip(groups.split(flat), rotations, strict=True)]
        return groups.merge(rotated)

    def bound_weights(
        self, context: torch.Tensor, weights: LayerWeights, sides: ComplexSides
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`W C` `(U, N, M)` for contexts `(U, M, M)`."""
        return torch.matmul(weights.real, context), weights.bias
