"""Superposed Linear and Conv2d layers: `y = W (c(k) ⊙ x)` with one context per batch row.

Following the adapter pattern of peft, `SuperposedLayer` is a mixin holding the shared state
(the wrapped `base_layer`, the context dimension, the imaginary weight of complex kinds and the
layer's contexts), and `SuperposedLinear` / `SuperposedConv2d` are concrete `nn.Module`s.
`superpose` turns every `nn.Linear` and `nn.Conv2d` of a plain architecture into its superposed
twin. What a context is and how it binds a batch belongs to the layer's kind
(`layer.contexts`, a `psp_core.kinds.LayerContexts`): the layers only hand their batch to it.

A layer takes the batch's context rows as an argument, or, called without them, from the
innermost `batch_rows` block: `SuperposedModel` runs its whole body inside one, so superposed
layers work at any depth of nested containers and custom blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import torch
from torch import nn

from psp_core.kinds import LayerContexts, kind_class

# A context variable rather than state on the layers keeps concurrent forward passes in other
# threads or asyncio tasks apart.
_batch_rows: ContextVar[torch.Tensor | None] = ContextVar("psp_batch_rows", default=None)


@contextmanager
def batch_rows(context_index: torch.Tensor) -> Iterator[None]:
    """Gives `context_index` to every superposed layer called without one inside the block."""
    token = _batch_rows.set(context_index)
    try:
        yield
    finally:
        _batch_rows.reset(token)


def _rows_of(layer: nn.Module, context_index: torch.Tensor | None) -> torch.Tensor:
    """The rows passed to `layer`, else those of the enclosing `batch_rows` block."""
    rows = _batch_rows.get() if context_index is None else context_index
    if rows is None:
        raise TypeError(
            f"{type(layer).__name__} needs the batch's context rows: pass context_index, or "
            "call it inside a SuperposedModel (or a `batch_rows` block)"
        )
    return rows


class LayerWeights(NamedTuple):
    """A superposed layer's weights as its contexts bind them.

    Attributes:
        real: `W`, or its real part `A` for complex kinds, as an `(N, M)` matrix.
        imag: The imaginary part `B` `(N, M)` for complex kinds, else None.
        bias: `(N,)`, or None.
    """

    real: torch.Tensor
    imag: torch.Tensor | None
    bias: torch.Tensor | None


class SuperposedLayer:
    """Shared state of superposed layers (the mixin of the peft pattern).

    Attributes:
        base_layer: The wrapped plain layer; its weight is `W` (the real part for complex kinds).
        context_dim: `M`, the length of this layer's context vector.
        contexts: The layer's kind: its table of contexts on the layer's device, and how they
            bind a batch.
        weight_imag: The imaginary part of `W` for complex kinds, else None.
        complex_input: Whether the layer receives complex activations as `[Re ; Im]`.
        complex_output: Whether it returns them.
    """

    base_layer: nn.Module
    context_dim: int
    contexts: LayerContexts
    weight_imag: nn.Parameter | None
    complex_input: bool
    complex_output: bool

    def _init_superposition(
        self,
        base_layer: nn.Module,
        weight: torch.Tensor,
        kind: str,
        *,
        context_dim: int,
        model_seed: int,
        layer_index: int,
        local_mix: bool,
    ) -> None:
        self.base_layer = base_layer
        self.context_dim = context_dim
        self.contexts = kind_class(kind)(
            model_seed=model_seed, layer_index=layer_index, dim=context_dim, local_mix=local_mix
        )
        self.weight_imag = self.contexts.imaginary_weight(weight)
        self.complex_input = self.complex_output = False

    def set_complex_sides(self, *, complex_input: bool, complex_output: bool) -> None:
        """Whether this layer receives and returns complex activations as `[Re ; Im]`.

        Raises:
            ValueError: The layer's kind has real contexts.
        """
        if (complex_input or complex_output) and not self.contexts.is_complex:
            raise ValueError(f"{self.contexts.kind} layers have no complex activations")
        self.complex_input, self.complex_output = complex_input, complex_output

    @property
    def carries_complex(self) -> bool:
        """Whether either side of this layer is complex."""
        return self.complex_input or self.complex_output

    def weights(self) -> LayerWeights:
        """The weights as matrices over the flattened input (see `LayerWeights`)."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        assert isinstance(weight, torch.Tensor)
        assert bias is None or isinstance(bias, torch.Tensor)
        imag = None if self.weight_imag is None else self.weight_imag.flatten(1)
        return LayerWeights(weight.flatten(1), imag, bias)


class SuperposedLinear(nn.Module, SuperposedLayer):
    """`y = Re(W (c[idx] ⊙ x)) + b` for a batch that may mix any contexts."""

    def __init__(
        self,
        base_layer: nn.Linear,
        kind: str,
        *,
        model_seed: int,
        layer_index: int,
        local_mix: bool = False,
    ) -> None:
        super().__init__()
        self._init_superposition(
            base_layer,
            base_layer.weight,
            kind,
            context_dim=base_layer.in_features,
            model_seed=model_seed,
            layer_index=layer_index,
            local_mix=local_mix,
        )

    def forward(self, x: torch.Tensor, context_index: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: `(B, M)` real inputs, or `(B, 2M)` `[Re ; Im]` when `complex_input`.
            context_index: `(B,)` int64 row indices into the context table; by default those
                of the enclosing `batch_rows` block.

        Returns:
            `(B, N)` real outputs, or `(B, 2N)` `[Re ; Im]` when `complex_output`.
        """
        return self.contexts.linear(self, x, _rows_of(self, context_index))


class SuperposedConv2d(nn.Module, SuperposedLayer):
    """A convolution whose kernel is bound to the context over (in_channels, kh, kw) (eq. 10)."""

    def __init__(
        self,
        base_layer: nn.Conv2d,
        kind: str,
        *,
        model_seed: int,
        layer_index: int,
        local_mix: bool = False,
    ) -> None:
        super().__init__()
        if base_layer.groups != 1 or base_layer.padding_mode != "zeros":
            raise ValueError("superposed convolutions support groups=1 and zero padding only")
        kh, kw = base_layer.kernel_size
        self._init_superposition(
            base_layer,
            base_layer.weight,
            kind,
            context_dim=base_layer.in_channels * kh * kw,
            model_seed=model_seed,
            layer_index=layer_index,
            local_mix=local_mix,
        )

    def forward(self, x: torch.Tensor, context_index: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: `(B, C, H, W)` real inputs, or `(B, 2C, H, W)` (real channels, then imaginary
                ones) when `complex_input`.
            context_index: `(B,)` int64 row indices into the context table; by default those
                of the enclosing `batch_rows` block.

        Returns:
            `(B, N, H', W')` real outputs, or `(B, 2N, H', W')` when `complex_output`.
        """
        return self.contexts.conv2d(self, x, _rows_of(self, context_index))


_TWINS: dict[type[nn.Module], Callable[..., SuperposedLayer]] = {
    nn.Linear: SuperposedLinear,
    nn.Conv2d: SuperposedConv2d,
}


def make_superposed(
    layer: nn.Module, kind: str, *, model_seed: int, layer_index: int, local_mix: bool
) -> SuperposedLayer:
    """The superposed twin of a plain layer (the one place that dispatches on layer type)."""
    twin = _TWINS.get(type(layer))
    if twin is None:
        raise TypeError(f"no superposed twin for {type(layer).__name__}; use Linear or Conv2d")
    return twin(layer, kind, model_seed=model_seed, layer_index=layer_index, local_mix=local_mix)


def superpose(
    module: nn.Module, kind: str, *, model_seed: int, local_mix: bool = False
) -> list[SuperposedLayer]:
    """Replaces, in place, every Linear and Conv2d in `module`, at any depth, by its superposed
    twin of kind `kind` (a name in `psp_core.kinds.CONTEXT_KINDS`).

    Layers are numbered in `named_modules` order; the number is part of each context's seed.

    Returns:
        The superposed layers in that order.
    """
    targets = [(name, child) for name, child in module.named_modules() if type(child) in _TWINS]
    layers: list[SuperposedLayer] = []
    for layer_index, (name, child) in enumerate(targets):
        twin = make_superposed(
            child, kind, model_seed=model_seed, layer_index=layer_index, local_mix=local_mix
        )
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        assert isinstance(twin, nn.Module)
        setattr(parent, attr, twin)
        layers.append(twin)
    return layers
