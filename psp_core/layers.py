"""Superposed Linear and Conv2d layers: `y = W (c(k) ⊙ x)` with one context per batch row.

Following the adapter pattern of peft, `SuperposedLayer` is a mixin holding the shared state
(the wrapped `base_layer`, the kind, the context dimension and the layer's context table), and
`SuperposedLinear` / `SuperposedConv2d` are concrete `nn.Module`s. `superpose` turns every
`nn.Linear` and `nn.Conv2d` of a plain architecture into its superposed twin.

Complex kinds keep complex weights `W = A + iB`, where `A` is the wrapped layer's weight and `B`
is `weight_imag`, and compute in real arithmetic in one of two ways:

- complex activations (`complex_activations`, the default of `ModelConfig`): a hidden layer
  returns its complex output as the real tensor `[Re ; Im]` of twice the width, so the next
  layer multiplies a complex input by its context, ReLU acts on the real and the imaginary parts
  separately, and the logits are the real part of the last layer. With `u = c ⊙ h`, a hidden
  layer is the GEMM `[[A, -B], [B, A]] [Re u ; Im u]`, four real products per weight.
- real part only: every layer returns `Re(W (c ⊙ x)) = A (cos φ ⊙ x) - B (sin φ ⊙ x)`, one real
  GEMM with `[A B]` of twice the inner width; the hidden activations are `ReLU(Re(·))`.

A layer learns which of its sides are complex from `set_complex_sides`, which the model calls:
the first layer's input and the last layer's output are always real.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from psp_core.contexts import (
    ContextKind,
    ContextSpec,
    binary_context,
    complex_phases,
    onepower_base_phases,
    onepower_phases,
    phases_to_real_pair,
    rotation_context,
)


class LayerContexts(nn.Module):
    """The context table of one layer, kept on the layer's device.

    Memory per context, for a layer with context dimension `M`, in float32:

    - binary: `M` values (4M bytes), the ±1 signs;
    - complex: `2M` values (8M bytes), `(cos φ, -sin φ)`;
    - rotation: `M²` values (4M² bytes), the orthogonal matrix;
    - one-power: one float64 exponent (8 bytes); the `M` base phases are shared by all contexts,
      and vectors are computed when a batch is gathered;
    - none: nothing.

    Rows grow by doubling the capacity, so adding `K` contexts one at a time costs `O(K)` copies.
    """

    def __init__(
        self, kind: ContextKind, *, model_seed: int, layer_index: int, dim: int, local_mix: bool
    ) -> None:
        super().__init__()
        self.kind = kind
        self.model_seed = model_seed
        self.layer_index = layer_index
        self.dim = dim
        self.local_mix = local_mix
        self.count = 0
        row_shape: tuple[int, ...] = {
            ContextKind.NONE: (0,),
            ContextKind.BINARY: (dim,),
            ContextKind.COMPLEX: (2 * dim,),
            ContextKind.ROTATION: (dim, dim),
            ContextKind.ONEPOWER: (),
        }[kind]
        table_dtype = torch.float64 if kind is ContextKind.ONEPOWER else torch.float32
        self.table: torch.Tensor
        self.register_buffer("table", torch.zeros((0, *row_shape), dtype=table_dtype), False)
        self.base_phases: torch.Tensor
        base = (
            onepower_base_phases(model_seed, layer_index, dim)
            if kind is ContextKind.ONEPOWER
            else torch.zeros(0, dtype=torch.float64)
        )
        self.register_buffer("base_phases", base, persistent=False)

    def make_row(self, spec: ContextSpec) -> torch.Tensor:
        """The stored row of one context, generated on the CPU.

        Returns:
            binary `(M,)`, complex `(2M,)`, rotation `(M, M)`, one-power `()` (the exponent).
        """
        kind, seed, dim = self.kind, spec.seed, self.dim
        if kind is ContextKind.NONE:
            return torch.zeros(0)
        if kind is ContextKind.ONEPOWER:
            assert spec.power is not None
            return torch.tensor(spec.power, dtype=torch.float64)
        assert seed is not None
        if kind is ContextKind.BINARY:
            return binary_context(self.model_seed, seed, self.layer_index, dim)
        if kind is ContextKind.ROTATION:
            return rotation_context(self.model_seed, seed, self.layer_index, dim)
        phases = complex_phases(
            self.model_seed, seed, self.layer_index, dim, local_mix=self.local_mix
        )
        return phases_to_real_pair(phases)

    def append(self, specs: Sequence[ContextSpec]) -> None:
        """Adds one row per spec, growing the table in place."""
        self.append_rows(self.make_rows(specs))

    def make_rows(self, specs: Sequence[ContextSpec]) -> torch.Tensor:
        """The stacked rows of several contexts, generated on the CPU (see `make_row`)."""
        if not specs:
            return torch.zeros((0, *self.table.shape[1:]), dtype=self.table.dtype)
        return torch.stack([self.make_row(s) for s in specs]).to(self.table.dtype)

    def append_rows(self, rows: torch.Tensor) -> None:
        """Appends rows made by `make_rows`, growing the table by doubling."""
        if not len(rows):
            return
        rows = rows.to(self.table.device)
        needed = self.count + len(rows)
        if needed > self.table.shape[0]:
            capacity = max(needed, 2 * self.table.shape[0], 8)
            grown = torch.zeros(
                (capacity, *self.table.shape[1:]), dtype=self.table.dtype, device=self.table.device
            )
            grown[: self.count] = self.table[: self.count]
            self.table = grown
        self.table[self.count : needed] = rows
        self.count = needed

    def gather(self, context_index: torch.Tensor) -> torch.Tensor:
        """The context of every row of a batch.

        Args:
            context_index: int64 tensor of shape `(B,)`, each entry `< len(self)`.

        Returns:
            binary `(B, M)`; complex and one-power `(B, 2M)` as `(cos φ, -sin φ)`; rotation
            `(B, M, M)`.
        """
        rows = self.table[context_index]
        if self.kind is not ContextKind.ONEPOWER:
            return rows
        phases = onepower_phases(self.base_phases, rows, local_mix=self.local_mix)
        return phases_to_real_pair(phases)

    def __len__(self) -> int:
        return self.count

    def bytes_per_context(self) -> int:
        """Bytes this layer stores for each context (the shared base phases not counted)."""
        return math.prod(self.table.shape[1:]) * self.table.element_size()


class SuperposedLayer:
    """Shared state of superposed layers (the mixin of the peft pattern).

    Attributes:
        base_layer: The wrapped plain layer; its weight is `W` (the real part for complex kinds).
        kind: The context family.
        context_dim: `M`, the length of this layer's context vector.
        contexts: The per-context table on the layer's device.
        weight_imag: The imaginary part of `W` for complex kinds, else None.
    """

    base_layer: nn.Module
    kind: ContextKind
    context_dim: int
    contexts: LayerContexts
    weight_imag: nn.Parameter | None
    complex_input: bool
    complex_output: bool

    def _init_superposition(
        self,
        base_layer: nn.Module,
        weight: torch.Tensor,
        kind: ContextKind,
        *,
        context_dim: int,
        model_seed: int,
        layer_index: int,
        local_mix: bool,
    ) -> None:
        self.base_layer = base_layer
        self.kind = kind
        self.context_dim = context_dim
        self.contexts = LayerContexts(
            kind,
            model_seed=model_seed,
            layer_index=layer_index,
            dim=context_dim,
            local_mix=local_mix,
        )
        self.weight_imag = None
        self.complex_input = self.complex_output = False
        if kind.is_complex:
            # Draw the imaginary part like the real part (PyTorch's default U(±1/√fan_in)): the
            # output variance then matches the plain layer, since E[cos²] = E[sin²] = 1/2.
            imag = torch.empty_like(weight)
            bound = 1.0 / math.sqrt(context_dim)
            nn.init.uniform_(imag, -bound, bound)
            self.weight_imag = nn.Parameter(imag)

    def set_complex_sides(self, *, complex_input: bool, complex_output: bool) -> None:
        """Whether this layer receives and returns complex activations as `[Re ; Im]`.

        Raises:
            ValueError: The layer's kind has real contexts.
        """
        if (complex_input or complex_output) and not self.kind.is_complex:
            raise ValueError(f"{self.kind.value} layers have no complex activations")
        self.complex_input, self.complex_output = complex_input, complex_output

    @property
    def carries_complex(self) -> bool:
        """Whether either side of this layer is complex."""
        return self.complex_input or self.complex_output

    def bind(self, flat: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Applies the gathered context to flattened inputs.

        Args:
            flat: real inputs `(B, M)` or im2col columns `(B, M, L)`.
            context: what `LayerContexts.gather` returned for this batch.

        Returns:
            `c ⊙ x` for binary and `C x` for rotation, `(B, M[, L])`; for complex kinds
            `[cos φ ⊙ x ; -sin φ ⊙ x]`, `(B, 2M[, L])`, to multiply with `weight_matrix()`.
        """
        columns = flat.dim() == 3
        if self.kind is ContextKind.ROTATION:
            bound = torch.bmm(context, flat if columns else flat.unsqueeze(2))
            return bound if columns else bound.squeeze(2)
        if columns:
            context = context.unsqueeze(2)
        if self.kind is ContextKind.BINARY:
            return flat * context
        return flat.repeat(1, 2, 1) * context if columns else flat.repeat(1, 2) * context

    def bind_complex(self, flat: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """`u = c ⊙ h` for a complex kind, as `[Re u ; Im u]`.

        Args:
            flat: `(B, M[, L])` real inputs, or `(B, 2M[, L])` `[Re h ; Im h]` when
                `complex_input`.
            context: `(B, 2M)` `(cos φ, -sin φ)` from `LayerContexts.gather`.

        Returns:
            `(B, 2M[, L])`.
        """
        cos, neg_sin = context.chunk(2, dim=1)
        if flat.dim() == 3:
            cos, neg_sin = cos.unsqueeze(2), neg_sin.unsqueeze(2)
        if not self.complex_input:
            return torch.cat([cos * flat, -neg_sin * flat], dim=1)
        real, imag = flat.chunk(2, dim=1)
        return torch.cat([cos * real + neg_sin * imag, cos * imag - neg_sin * real], dim=1)

    def complex_weight_matrix(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The real matrix that `bind_complex`'s output multiplies, and its bias.

        `[[A, -B], [B, A]]` `(2N, 2M)` gives `[Re ; Im]` of `W u`, or `[A, -B]` `(N, 2M)` its
        real part when the output is real. The bias is added to the real part.
        """
        real_part = self.base_layer.weight
        assert isinstance(real_part, torch.Tensor) and self.weight_imag is not None
        a, b = real_part.flatten(1), self.weight_imag.flatten(1)
        top = torch.cat([a, -b], dim=1)
        bias = self.base_layer.bias
        assert bias is None or isinstance(bias, torch.Tensor)
        if not self.complex_output:
            return top, bias
        if bias is not None:
            bias = torch.cat([bias, torch.zeros_like(bias)])
        return torch.cat([top, torch.cat([b, a], dim=1)]), bias

    def weight_matrix(self) -> torch.Tensor:
        """`W` as the matrix `bind`'s output multiplies: `(N, M)`, or `[A  B]` `(N, 2M)` for
        complex kinds, so that `[A B] [cos φ ⊙ x ; -sin φ ⊙ x] = Re(W (c ⊙ x))` is one GEMM."""
        base_weight = self.base_layer.weight
        assert isinstance(base_weight, torch.Tensor)
        weight = base_weight.flatten(1)
        if self.weight_imag is None:
            return weight
        return torch.cat([weight, self.weight_imag.flatten(1)], dim=1)


class SuperposedLinear(nn.Module, SuperposedLayer):
    """`y = Re(W (c[idx] ⊙ x)) + b` for a batch that may mix any contexts."""

    def __init__(
        self,
        base_layer: nn.Linear,
        kind: ContextKind,
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

    def forward(self, x: torch.Tensor, context_index: torch.Tensor) -> torch.Tensor:
        """Args:
            x: `(B, M)` real inputs, or `(B, 2M)` `[Re ; Im]` when `complex_input`.
            context_index: `(B,)` int64 row indices into the context table.

        Returns:
            `(B, N)` real outputs, or `(B, 2N)` `[Re ; Im]` when `complex_output`.
        """
        base = self.base_layer
        assert isinstance(base, nn.Linear)
        if self.kind is ContextKind.NONE:
            return base(x)
        context = self.contexts.gather(context_index)
        if self.carries_complex:
            weight, bias = self.complex_weight_matrix()
            return F.linear(self.bind_complex(x, context), weight, bias)
        return F.linear(self.bind(x, context), self.weight_matrix(), base.bias)


class SuperposedConv2d(nn.Module, SuperposedLayer):
    """A convolution whose kernel is bound to the context over (in_channels, kh, kw) (eq. 10).

    `(w ⊙ c) * x` equals `W (c ⊙ cols)` after im2col, so a batch mixing contexts is still one
    batched GEMM: each sample's columns are scaled (or rotated) by its own context.
    """

    def __init__(
        self,
        base_layer: nn.Conv2d,
        kind: ContextKind,
        *,
        model_seed: int,
        layer_index: int,
        local_mix: bool = False,
    ) -> None:
        super().__init__()
        if base_layer.groups != 1 or base_layer.padding_mode != "zeros":
            raise ValueError("superposed convolutions support groups=1 and zero padding only")
        if isinstance(base_layer.padding, str):
            raise ValueError("give the convolution's padding as integers, not 'same' or 'valid'")
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

    def forward(self, x: torch.Tensor, context_index: torch.Tensor) -> torch.Tensor:
        """Args:
            x: `(B, C, H, W)` real inputs, or `(B, 2C, H, W)` (real channels, then imaginary
                ones) when `complex_input`.
            context_index: `(B,)` int64 row indices into the context table.

        Returns:
            `(B, N, H', W')` real outputs, or `(B, 2N, H', W')` when `complex_output`.
        """
        conv = self.base_layer
        assert isinstance(conv, nn.Conv2d)
        if self.kind is ContextKind.NONE:
            return conv(x)
        batch, _, height, width = x.shape
        padding = (int(conv.padding[0]), int(conv.padding[1]))
        # (B, D, L), or (B, 2D, L) real patches then imaginary ones: unfold is channel-major
        cols = F.unfold(x, conv.kernel_size, conv.dilation, padding, conv.stride)
        context = self.contexts.gather(context_index)
        if self.carries_complex:
            weight, bias = self.complex_weight_matrix()
            bound = self.bind_complex(cols, context)
        else:
            weight, bias = self.weight_matrix(), conv.bias
            bound = self.bind(cols, context)
        out = torch.matmul(weight, bound)  # (N, D) @ (B, D, L) -> (B, N, L)
        if bias is not None:
            out = out + bias[:, None]
        out_h, out_w = (
            (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
            for size, pad, dil, k, stride in zip(
                (height, width),
                padding,
                conv.dilation,
                conv.kernel_size,
                conv.stride,
                strict=True,
            )
        )
        return out.view(batch, -1, out_h, out_w)  # (B, N, L) -> (B, N, H', W')


_TWINS: dict[type[nn.Module], Callable[..., SuperposedLayer]] = {
    nn.Linear: SuperposedLinear,
    nn.Conv2d: SuperposedConv2d,
}


def make_superposed(
    layer: nn.Module, kind: ContextKind, *, model_seed: int, layer_index: int, local_mix: bool
) -> SuperposedLayer:
    """The superposed twin of a plain layer (the one place that dispatches on layer type)."""
    twin = _TWINS.get(type(layer))
    if twin is None:
        raise TypeError(f"no superposed twin for {type(layer).__name__}; use Linear or Conv2d")
    return twin(layer, kind, model_seed=model_seed, layer_index=layer_index, local_mix=local_mix)


def superpose(
    module: nn.Module, kind: ContextKind, *, model_seed: int, local_mix: bool = False
) -> list[SuperposedLayer]:
    """Replaces, in place, every Linear and Conv2d in `module` by its superposed twin.

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
