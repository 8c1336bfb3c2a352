"""The plain baseline: the same architecture without contexts."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from psp_core.contexts import ContextSpec
from psp_core.kinds.base import LayerContexts

if TYPE_CHECKING:
    from psp_core.layers import SuperposedLayer


class NoContexts(LayerContexts):
    """Layers run their wrapped plain layer; contexts are registered but store nothing."""

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
        self, layer: SuperposedLayer, x: torch.Tensor, context_index: torch.Tensor
    ) -> torch.Tensor:
        output: torch.Tensor = layer.base_layer(x)
        return output

    def conv2d(
        self, layer: SuperposedLayer, x: torch.Tensor, context_index: torch.Tensor
    ) -> torch.Tensor:
        output: torch.Tensor = layer.base_layer(x)
        return output

    def bound_weights(
        self, layer: SuperposedLayer, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`W` itself for each context: the plain model's contexts leave it unbound."""
        weights = layer.weights()
        return weights.real.expand(len(context), -1, -1), weights.bias
