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

Linear layers with vector contexts bind each row's context to that row (one GEMM for any mix of
contexts). Rotation contexts are matrices, and a convolution's context belongs on its kernel
(eq. 10), so these two group the rows of a batch by context (`RowGroups`) and do one product per
distinct context: a batch with few contexts costs about what a plain layer costs, and no `M×M`
matrix or im2col buffer is ever copied per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    - one-power: one float64 exponent (8 bytes), which defines the context; the `M` base phases
      are shared by all contexts. The vectors `(cos kφ, -sin kφ)` are computed once, when a
      context is appended, and cached beside the exponents (`2M` float32 values, 8M bytes), so a
      forward pass gathers them like complex contexts instead of recomputing them;
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
        # One-power only: the cached vectors of the appended exponents, row for row.
        self.vectors: torch.Tensor
        self.register_buffer("vectors", torch.zeros((0, 2 * dim)), persistent=False)

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
        needed = self.count + len(rows)
        if needed > self.table.shape[0]:
            capacity = max(needed, 2 * self.table.shape[0], 8)
            self.table = _grown(self.table, self.count, capacity)
            if self.kind is ContextKind.ONEPOWER:
                self.vectors = _grown(self.vectors, self.count, capacity)
        if self.kind is ContextKind.ONEPOWER:
            # Made on the CPU like the other kinds' rows, so they are identical on every device.
            phases = onepower_phases(self.base_phases.cpu(), rows, local_mix=self.local_mix)
            self.vectors[self.count : needed] = phases_to_real_pair(phases).to(self.vectors.device)
        self.table[self.count : needed] = rows.to(self.table.device)
        self.count = needed

    def gather(self, context_index: torch.Tensor) -> torch.Tensor:
        """The context of every row of a batch.

        Args:
            context_index: int64 tensor of shape `(B,)`, each entry `< len(self)`.

        Returns:
            binary `(B, M)`; complex and one-power `(B, 2M)` as `(cos φ, -sin φ)`; rotation
            `(B, M, M)`.
        """
        if self.kind is ContextKind.ONEPOWER:
            return self.vectors[context_index]
        return self.table[context_index]

    def __len__(self) -> int:
        return self.count

    def bytes_per_context(self) -> int:
        """Bytes this layer keeps on its device for each context, one-power's cached vectors
        included (the shared base phases not counted)."""
        stored = math.prod(self.table.shape[1:]) * self.table.element_size()
        if self.kind is ContextKind.ONEPOWER:
            stored += self.vectors.shape[1] * self.vectors.element_size()
        return stored


def _grown(table: torch.Tensor, count: int, capacity: int) -> torch.Tensor:
    """A copy of `table` with room for `capacity` rows, its first `count` rows kept."""
    grown = torch.zeros((capacity, *table.shape[1:]), dtype=table.dtype, device=table.device)
    grown[:count] = table[:count]
    return grown


@dataclass(frozen=True)
class RowGroups:
    """The rows of a batch grouped by context, for layers that do one product per context.

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
        return x[self.order].split(self.sizes)

    def merge(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        """Puts per-context results back in the batch's row order (the inverse of `split`)."""
        grouped = torch.cat(list(pieces))
        return grouped.new_empty(grouped.shape).index_copy(0, self.order, grouped)


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
        """Applies the gathered vector contexts to real inputs, row by row.

        Args:
            flat: real inputs `(B, M)`.
            context: binary `(B, M)`, or complex `(B, 2M)`, from `LayerContexts.gather`.

        Returns:
            `c ⊙ x` `(B, M)` for binary; for complex kinds `[cos φ ⊙ x ; -sin φ ⊙ x]` `(B, 2M)`,
            to multiply with `weight_matrix()`.
        """
        if self.kind is ContextKind.BINARY:
            return flat * context
        return flat.repeat(1, 2) * context

    def rotate(self, flat: torch.Tensor, context_index: torch.Tensor) -> torch.Tensor:
        """`C_k x` for rotation contexts: one `(n, M) @ (M, M)` product per distinct context.

        Args:
            flat: real inputs `(B, M)`.
            context_index: `(B,)` int64 rows of the context table.

        Returns:
            `(B, M)`.
        """
        groups = RowGroups.of(context_index)
        rotations = self.contexts.gather(groups.contexts)  # (U, M, M)
        rotated = [r @ c.T for r, c in zip(groups.split(flat), rotations, strict=True)]
        return groups.merge(rotated)

    def bind_complex(self, flat: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """`u = c ⊙ h` for a complex kind, as `[Re u ; Im u]`.

        Args:
            flat: `(B, M)` real inputs, or `(B, 2M)` `[Re h ; Im h]` when `complex_input`.
            context: `(B, 2M)` `(cos φ, -sin φ)` from `LayerContexts.gather`.

        Returns:
            `(B, 2M)`.
        """
        cos, neg_sin = context.chunk(2, dim=1)
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

    def bound_weights(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`W` bound to each of `U` contexts (eq. 10's `w ⊙ c`), as the real matrices that
        multiply this layer's input directly, and the bias.

        Args:
            context: `U` contexts from `LayerContexts.gather`: binary `(U, M)`, complex
                `(U, 2M)` `(cos φ, -sin φ)`, rotation `(U, M, M)`.

        Returns:
            `(U, N, M)` for real kinds: `W ⊙ c` or `W C`. For complex kinds, with the complex
            kernel `K = W ⊙ c = K_r + i K_i`: `K_r` `(U, N, M)` when both sides are real (the
            real part of the output), and otherwise the blocks of the complex product,
            `[[K_r, -K_i], [K_i, K_r]]` `(U, 2N, 2M)`, less the imaginary input columns or
            output rows that a real side does not have. The bias is added to the real part.
        """
        base_weight, bias = self.base_layer.weight, self.base_layer.bias
        assert isinstance(base_weight, torch.Tensor)
        assert bias is None or isinstance(bias, torch.Tensor)
        weight = base_weight.flatten(1)  # (N, M)
        if self.kind is ContextKind.BINARY:
            return weight * context[:, None, :], bias
        if self.kind is ContextKind.ROTATION:
            return torch.matmul(weight, context), bias  # (N, M) @ (U, M, M)
        assert self.weight_imag is not None
        a, b = weight, self.weight_imag.flatten(1)
        cos, neg_sin = context[:, None, :].chunk(2, dim=2)  # (U, 1, M) each
        real, imag = a * cos + b * neg_sin, b * cos - a * neg_sin  # K_r, K_i: (U, N, M)
        real_rows = torch.cat([real, -imag], dim=2) if self.complex_input else real
        if not self.complex_output:
            return real_rows, bias
        imag_rows = torch.cat([imag, real], dim=2) if self.complex_input else imag
        if bias is not None:
            bias = torch.cat([bias, torch.zeros_like(bias)])
        return torch.cat([real_rows, imag_rows], dim=1), bias

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
        if self.kind is ContextKind.ROTATION:
            return F.linear(self.rotate(x, context_index), base.weight, base.bias)
        context = self.contexts.gather(context_index)
        if self.carries_complex:
            weight, bias = self.complex_weight_matrix()
            return F.linear(self.bind_complex(x, context), weight, bias)
        return F.linear(self.bind(x, context), self.weight_matrix(), base.bias)


class SuperposedConv2d(nn.Module, SuperposedLayer):
    """A convolution whose kernel is bound to the context over (in_channels, kh, kw) (eq. 10).

    The rows of a batch are grouped by context and each distinct context's kernel `w ⊙ c` is
    bound once (`bound_weights`), so the context costs one kernel-sized product per distinct
    context rather than a pass over every input patch. Few distinct contexts run one `F.conv2d`
    each; many (small groups, where a call per group would cost more than its work) run as one
    grouped convolution with a kernel per row.
    """

    # Above this many distinct contexts in a batch, one grouped convolution beats a loop.
    MAX_LOOPED_GROUPS = 16

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
        groups = RowGroups.of(context_index)
        weights, bias = self.bound_weights(self.contexts.gather(groups.contexts))
        kernels = weights.view(len(weights), -1, x.shape[1], *conv.kernel_size)
        if len(groups) <= self.MAX_LOOPED_GROUPS:
            outputs = [
                F.conv2d(rows, kernel, bias, conv.stride, conv.padding, conv.dilation)
                for rows, kernel in zip(groups.split(x), kernels, strict=True)
            ]
            return groups.merge(outputs)
        # Each row is its own group: (1, B·C', H, W) with B kernels of (N', C', kh, kw).
        batch, out_channels = len(x), kernels.shape[1]
        per_row = kernels[groups.inverse].flatten(0, 1)  # (B·N', C', kh, kw)
        out = F.conv2d(
            x.flatten(0, 1).unsqueeze(0),
            per_row,
            None,
            conv.stride,
            conv.padding,
            conv.dilation,
            groups=batch,
        )
        out = out.view(batch, out_channels, *out.shape[2:])  # (B, N', H', W')
        return out if bias is None else out + bias[:, None, None]


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
