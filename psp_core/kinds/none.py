"""The plain baseline: the same architecture without contexts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from psp_core.contexts import ContextSpec
from psp_core.kinds.base import ComplexSides, LayerContexts, LayerWeights


class NoContexts(LayerContexts):
    """Contexts are registered but store nothing and bind nothing: the layers run their wrapped
    plain layer (they ask `has_contexts`), and the maths below is the plain layer's."""

    kind = "none"
    has_contexts = False

    def row_shape(self) -> tuple[int, ...]:
        return (0,)

    def make_row(self, spec: ContextSpec) -> torch.Tensor:
        return torch.zeros(0)

    @classmethod
    def check_spec(cls, spec: ContextSpec) -> ContextSpec:
        """Any seed or finite power names a context of the plain model."""
        if spec.power is not None and not math.isfinite(spec.power):
            raise ValueError("the power must be a finite number")
        return spec

    def linear(
        self, x: torch.Tensor, rows: torch.Tensor, weights: LayerWeights, sides: ComplexSides
    ) -> torch.Tensor:
        """`W x + b` whatever the rows."""
        return F.linear(x, weights.real, weights.bias)

    def bound_weights(
        self, context: torch.Tensor, weights: LayerWeights, sides: ComplexSides
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`W` itself for each context: the plain model's contexts leave it unbound."""
        return weights.real.expand(len(context), -1, -1), weights.bias
