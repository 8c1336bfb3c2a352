"""The context bank: every registered context, as specs plus per-layer tables on the device."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from psp_core.contexts import ContextKind, ContextSpec
from psp_core.layers import LayerContexts


class ContextBank:
    """All contexts of one model.

    The bank keeps each context's spec (8 bytes: a seed or an exponent) and appends one row to
    the table of every superposed layer, so the vectors live on the model's device and are
    gathered per batch. Adding a context never rebuilds the model.

    Memory per context, summed over layers with context dimensions `M_l` (float32 tables):
    binary `4 ΣM_l` bytes, complex `8 ΣM_l`, rotation `4 ΣM_l²`, one-power 8 bytes per layer
    (the exponent; the base phases are shared, so the vectors stay O(1) in the number of
    contexts), none 0. `bytes_per_context` reports the figure for a given model.
    """

    def __init__(self, kind: ContextKind, layers: Sequence[LayerContexts]) -> None:
        self.kind = kind
        self.layers = list(layers)
        self.specs: list[ContextSpec] = []

    def __len__(self) -> int:
        return len(self.specs)

    def add(self, spec: ContextSpec) -> int:
        """Registers one context and returns its row."""
        return self.extend([spec])[0]

    def extend(self, specs: Sequence[ContextSpec]) -> range:
        """Registers contexts in order and returns their rows."""
        checked = [spec.for_kind(self.kind) for spec in specs]
        for layer in self.layers:
            layer.append(checked)
        start = len(self.specs)
        self.specs.extend(checked)
        return range(start, len(self.specs))

    def gather(self, layer: int, context_index: torch.Tensor) -> torch.Tensor:
        """The context vectors of layer `layer` for a batch; see `LayerContexts.gather`."""
        return self.layers[layer].gather(context_index)

    def bytes_per_context(self) -> int:
        """Bytes stored on the device for each additional context."""
        return sum(layer.bytes_per_context() for layer in self.layers)

    def check_index(self, context_index: torch.Tensor) -> None:
        """Raises IndexError unless every entry names a registered row (reads the tensor)."""
        if context_index.numel() and (
            int(context_index.min()) < 0 or int(context_index.max()) >= len(self)
        ):
            raise IndexError(f"context rows must lie in [0, {len(self)})")
