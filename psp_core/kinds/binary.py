"""Binary contexts: a ±1 sign per input (paper §4.2.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from psp_core.contexts import ContextSpec, binary_context
from psp_core.kinds.base import ComplexSides, LayerContexts, LayerWeights


class BinaryContexts(LayerContexts):
    """`M` float32 signs per context (4M bytes), so binding is one multiply per input."""

    kind = "binary"

    def row_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def make_row(self, spec: ContextSpec) -> torch.Tensor:
        assert spec.seed is not None
        return binary_context(self.model_seed, spec.seed, self.layer_index, self.dim)

    def linear(
        self, x: torch.Tensor, rows: torch.Tensor, weights: LayerWeights, sides: ComplexSides
    ) -> torch.Tensor:
        """`W (c ⊙ x) + b`: each row bound to its own context, then one GEMM for the batch."""
        return F.linear(x * self.gather(rows), weights.real, weights.bias)

    def bound_weights(
        self, context: torch.Tensor, weights: LayerWeights, sides: ComplexSides
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`W ⊙ c` `(U, N, M)` for contexts `(U, M)`."""
        return weights.real * context[:, None, :], weights.bias
