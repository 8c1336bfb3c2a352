"""Superposed Linear and Conv2d layers: `y = W (c(k) ⊙ x)` with one context per batch row.

Following the adapter pattern of peft, `SuperposedLayer` holds the shared state (the wrapped
`base_layer`, the context dimension, the imaginary weight of complex kinds and the layer's
contexts), and `SuperposedLinear` / `SuperposedConv2d` add what a layer type computes.
`superpose` turns every `nn.Linear` and `nn.Conv2d` of a plain architecture into its superposed
twin. What a context is and how it binds a batch belongs to the layer's kind
(`layer.contexts`, a `psp_core.kinds.LayerContexts`); the layers own their forward passes and
hand the kind their weights, their complex sides and the batch's rows. The dependency goes one
way: the kinds know nothing of the layers.

A layer takes the batch's context rows as an argument, or, called without them, from the
innermost `batch_rows` block: `SuperposedModel` runs its whole body inside one, so superposed
layers work at any depth of nested containers and custom blocks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from psp_core.kinds import LayerContexts, RowGroups, kind_class
from psp_core.kinds.base import ComplexSides, LayerWeights

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


class SuperposedLayer(nn.Module, ABC):
    """Shared state of superposed layers; each layer type says what its context dimension is
    (`context_dim_of`) and computes its forward pass.

    Attributes:
        base_layer: The wrapped plain layer; its weight is `W` (the real part for complex kinds).
        context_dim: `M`, the length of this layer's context vector.
        contexts: The layer's kind: its table of contexts on the layer's device, and how they
            bind a batch.
        weight_imag: The imaginary part of `W` for complex kinds, else None.
        sides: Which sides receive and return complex activations as `[Re ; Im]`.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        kind: str,
        *,
        model_seed: int,
        layer_index: int,
        local_mix: bool = False,
    ) -> None:
        """Wraps `base_layer` with contexts of kind `kind` (a name in
        `psp_core.kinds.CONTEXT_KINDS`); `layer_index` is part of each context's seed.

        Raises:
            TypeError, ValueError: This layer type cannot wrap `base_layer`.
        """
        super().__init__()
        self.context_dim = self.context_dim_of(base_layer)
        self.base_layer = base_layer
        self.contexts: LayerContexts = kind_class(kind)(
            model_seed=model_seed,
            layer_index=layer_index,
            dim=self.context_dim,
            local_mix=local_mix,
        )
        weight = base_layer.weight
        assert isinstance(weight, torch.Tensor)
        self.weight_imag = self.contexts.imaginary_weight(weight)
        self.sides = ComplexSides()

    @staticmethod
    @abstractmethod
    def context_dim_of(base_layer: nn.Module) -> int:
        """`M` of a superposed twin of `base_layer`.

        Raises:
            TypeError, ValueError: This layer type cannot wrap `base_layer`.
        """

    def set_complex_sides(self, *, complex_input: bool, complex_output: bool) -> None:
        """Whether this layer receives and returns complex activations as `[Re ; Im]`.

        Raises:
            ValueError: The layer's kind has real contexts.
        """
        if (complex_input or complex_output) and not self.contexts.is_complex:
            raise ValueError(f"{self.contexts.kind} layers have no complex activations")
        self.sides = ComplexSides(complex_input, complex_output)

    def weights(self) -> LayerWeights:
        """The weights as matrices over the flattened input (see `LayerWeights`)."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        assert isinstance(weight, torch.Tensor)
        assert bias is None or isinstance(bias, torch.Tensor)
        imag = None if self.weight_imag is None else self.weight_imag.flatten(1)
        return LayerWeights(weight.flatten(1), imag, bias)

    def bound_weights(
        self, context_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`W` bound to the contexts of the rows `context_index` `(U,)`, as the kind binds it
        (`LayerContexts.bound_weights`): `(U, N', M')` matrices and the bias."""
        context = self.contexts.gather(context_index)
        return self.contexts.bound_weights(context, self.weights(), self.sides)


class SuperposedLinear(SuperposedLayer):
    """`y = Re(W (c[idx] ⊙ x)) + b` for a batch that may mix any contexts."""

    base_layer: nn.Linear

    @staticmethod
    def context_dim_of(base_layer: nn.Module) -> int:
        """The input width of a Linear layer."""
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"SuperposedLinear wraps nn.Linear, not {type(base_layer).__name__}")
        return base_layer.in_features

    def forward(self, x: torch.Tensor, context_index: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: `(B, M)` real inputs, or `(B, 2M)` `[Re ; Im]` when `sides.input`.
            context_index: `(B,)` int64 row indices into the context table; by default those
                of the enclosing `batch_rows` block.

        Returns:
            `(B, N)` real outputs, or `(B, 2N)` `[Re ; Im]` when `sides.output`.
        """
        rows = _rows_of(self, context_index)
        if not self.contexts.has_contexts:
            output: torch.Tensor = self.base_layer(x)
            return output
        return self.contexts.linear(x, rows, self.weights(), self.sides)


class SuperposedConv2d(SuperposedLayer):
    """A convolution whose kernel is bound to the context over (in_channels, kh, kw) (eq. 10).

    The rows are grouped by context and each distinct context's kernel `w ⊙ c` is bound once
    (`bound_weights`), so the context costs one kernel-sized product per distinct context rather
    than a pass over every input patch. A batch of one context runs one `F.conv2d`; several run
    as grouped convolutions over blocks of rows, a kernel per row (a kind whose binding is
    costly loops over a few contexts instead: `LayerContexts.MAX_LOOPED_GROUPS`).
    """

    base_layer: nn.Conv2d

    @staticmethod
    def context_dim_of(base_layer: nn.Module) -> int:
        """A kernel's size over (in_channels, kh, kw).

        Raises:
            ValueError: The convolution has groups or a padding other than zeros.
        """
        if not isinstance(base_layer, nn.Conv2d):
            raise TypeError(f"SuperposedConv2d wraps nn.Conv2d, not {type(base_layer).__name__}")
        if base_layer.groups != 1 or base_layer.padding_mode != "zeros":
            raise ValueError("superposed convolutions support groups=1 and zero padding only")
        kh, kw = base_layer.kernel_size
        return base_layer.in_channels * kh * kw

    def forward(self, x: torch.Tensor, context_index: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: `(B, C, H, W)` real inputs, or `(B, 2C, H, W)` (real channels, then imaginary
                ones) when `sides.input`.
            context_index: `(B,)` int64 row indices into the context table; by default those
                of the enclosing `batch_rows` block.

        Returns:
            `(B, N, H', W')` real outputs, or `(B, 2N, H', W')` when `sides.output`.
        """
        rows = _rows_of(self, context_index)
        if not self.contexts.has_contexts:
            return self.base_layer(x)
        groups = RowGroups.of(rows)
        if len(groups) <= self.contexts.MAX_LOOPED_GROUPS:
            return self._convolve_groups(x, groups)
        return self._convolve_rows(x, rows)

    def _convolve_groups(self, x: torch.Tensor, groups: RowGroups) -> torch.Tensor:
        """One convolution per distinct context, with that context's kernel."""
        conv = self.base_layer
        weights, bias = self.bound_weights(groups.contexts)
        kernels = weights.view(len(weights), -1, x.shape[1], *conv.kernel_size)
        outputs = [
            F.conv2d(rows, kernel, bias, conv.stride, conv.padding, conv.dilation)
            for rows, kernel in zip(groups.split(x), kernels, strict=True)
        ]
        return groups.merge(outputs)

    def _convolve_rows(self, x: torch.Tensor, context_index: torch.Tensor) -> torch.Tensor:
        """Each row convolved with its own context's kernel, in grouped convolutions over blocks
        of rows."""
        # Each row is its own group, with its own kernel: (1, b·C', H, W) with b kernels of
        # (N', C', kh, kw), for blocks of b rows, each block's kernels bound just before its
        # convolution. On the CPU, binding and convolving a whole batch of 256 rows at once ran
        # at 0.6-0.8 of the one-context speed (the bound kernels of every row went through
        # memory several times), and a loop over 8 groups at 0.6-0.9 (sorting the rows and
        # putting them back); blocks of 16 rows stay in cache and ran at 0.8-1.2. A GPU takes
        # the whole batch.
        block = self.contexts.ROWS_PER_GROUPED_CONV if x.device.type == "cpu" else len(x)
        # The bias is the same for every context: repeated once for a block's groups rather
        # than by every block (`repeat` took 5 % of a binary ConvNet's pass that way).
        _, bias = self.bound_weights(context_index[:0])
        block_bias = None if bias is None else bias.repeat(min(block, len(x)))
        blocks = (
            self._convolve_block(
                x[start : start + block], context_index[start : start + block], block_bias
            )
            for start in range(0, len(x), block)
        )
        if torch.is_grad_enabled():
            return torch.cat(list(blocks))
        return stacked(blocks, len(x))

    def _convolve_block(
        self, rows: torch.Tensor, context_index: torch.Tensor, block_bias: torch.Tensor | None
    ) -> torch.Tensor:
        """`rows`, each with its own context's kernel (`LayerContexts.convolve_rows`).

        Args:
            block_bias: The bias repeated for every row of a full block, or None.
        """
        context = self.contexts.gather(context_index)
        return self.contexts.convolve_rows(
            rows, context, self.weights(), self.sides, self._convolve_each, block_bias
        )

    def _convolve_each(
        self, rows: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """One grouped convolution of `rows` `(b, C, H, W)`, each row with its own kernel of
        `kernels` `(b, N, C·kh·kw)`: `(b, N, H', W')`."""
        conv = self.base_layer
        count, channels = rows.shape[:2]
        out = F.conv2d(
            rows.reshape(1, count * channels, *rows.shape[2:]),
            kernels.reshape(count * kernels.shape[1], channels, *conv.kernel_size),
            None if bias is None else bias[: count * kernels.shape[1]],  # each row's group
            conv.stride,
            conv.padding,
            conv.dilation,
            groups=count,
        )
        return out.view(count, -1, *out.shape[2:])


def stacked(pieces: Iterator[torch.Tensor], rows: int) -> torch.Tensor:
    """The rows of `pieces` in one `(rows, ...)` tensor, each piece copied in as soon as it is
    made, while it is still in cache. Without autograd this beat `torch.cat` of every piece at
    the end by about a third of a 256-row convolution on the CPU (`cat` reads every piece back
    from memory); with autograd each copy would add a node that clones the whole gradient.
    """
    first = next(pieces)
    if len(first) == rows:  # one piece (a GPU takes the whole batch at once): nothing to copy
        return first
    out = first.new_empty(rows, *first.shape[1:])
    out[: len(first)] = first
    start = len(first)
    for piece in pieces:
        out[start : start + len(piece)] = piece
        start += len(piece)
    return out


_TWINS: dict[type[nn.Module], type[SuperposedLayer]] = {
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
        setattr(parent, attr, twin)
        layers.append(twin)
    return layers
