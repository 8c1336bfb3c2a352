"""What every context kind is: one layer's table of contexts, and how they bind its inputs.

A kind is a subclass of `LayerContexts`, and every superposed layer holds one instance as
`layer.contexts` (the state lives on the layer, as in peft's tuner layers). The subclass decides
what a context's row is (`row_shape`, `make_row`), which spec defines it (`check_spec`), and how
the rows bind a batch: `linear` for a Linear layer, `bound_weights` for a convolution's kernel
(eq. 10), which `convolve_rows` convolves rows with (a kind may convolve another way). The
layers own their forward passes and hand the kinds what the maths needs (the weights as
`LayerWeights`, the complex sides as `ComplexSides`, a convolution as `RowConvolution`), so
nothing here knows a layer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from psp_core.contexts import ContextSpec


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


class ComplexSides(NamedTuple):
    """Which sides of a layer carry complex activations as `[Re ; Im]` (complex kinds only).

    Attributes:
        input: The layer receives complex activations.
        output: The layer returns them.
    """

    input: bool = False
    output: bool = False

    @property
    def either(self) -> bool:
        """Whether either side is complex."""
        return self.input or self.output


RowConvolution = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""A convolution layer's `convolve(inputs, kernels, bias)`: each of the `b` rows of `inputs`
`(b, C, H, W)` convolved with its own kernel of `kernels` `(b, N, C·kh·kw)` (and the bias
`(b·N,)`, or None), giving `(b, N, H', W')`."""


class LayerContexts(nn.Module, ABC):
    """The contexts of one superposed layer: one row per context on the layer's device.

    Rows grow by doubling the capacity, so adding `K` contexts one at a time costs `O(K)` copies.
    The table is not part of the state dict: it is regenerated from the specs.

    Class attributes, set by each kind:
        kind: Its name in configs, settings and checkpoints.
        has_contexts: False for the plain baseline, whose layers ignore contexts.
        uses_power: Contexts are defined by a real exponent rather than an integer seed.
        is_complex: The layer keeps complex weights and may carry complex activations.
        table_dtype: The dtype of the stored rows.
    """

    kind: ClassVar[str]
    has_contexts: ClassVar[bool] = True
    uses_power: ClassVar[bool] = False
    is_complex: ClassVar[bool] = False
    table_dtype: ClassVar[torch.dtype] = torch.float32
    # A convolution over at most this many distinct contexts loops over them; above it, rows
    # are convolved in blocks, each row with its own kernel. Binding a kernel is elementwise
    # and cheap for most kinds, and on the CPU blocks of rows beat a loop over even 8 groups
    # (`SuperposedConv2d`); a kind whose binding is costly loops over more.
    MAX_LOOPED_GROUPS: ClassVar[int] = 1
    # Rows per grouped convolution on the CPU (see `SuperposedConv2d`).
    ROWS_PER_GROUPED_CONV: ClassVar[int] = 16

    def __init__(self, *, model_seed: int, layer_index: int, dim: int, local_mix: bool) -> None:
        super().__init__()
        self.model_seed = model_seed
        self.layer_index = layer_index
        self.dim = dim
        self.local_mix = local_mix
        self.count = 0
        self.table: torch.Tensor
        empty = torch.zeros((0, *self.row_shape()), dtype=self.table_dtype)
        self.register_buffer("table", empty, persistent=False)

    @abstractmethod
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one stored row, for this layer's context dimension `M`."""

    @abstractmethod
    def make_row(self, spec: ContextSpec) -> torch.Tensor:
        """The stored row of one context, generated on the CPU."""

    @classmethod
    def check_spec(cls, spec: ContextSpec) -> ContextSpec:
        """Checks that `spec` defines a context of this kind and returns it.

        Raises:
            ValueError: The spec has no seed (the default: a context is a seed).
        """
        if spec.seed is None:
            raise ValueError(f"{cls.kind} contexts are defined by an integer seed")
        return spec

    def make_rows(self, specs: Sequence[ContextSpec]) -> torch.Tensor:
        """The stacked rows of several contexts, generated on the CPU (see `make_row`)."""
        if not specs:
            return torch.zeros((0, *self.table.shape[1:]), dtype=self.table.dtype)
        return torch.stack([self.make_row(s) for s in specs]).to(self.table.dtype)

    def reserve(self, extra: int) -> None:
        """Makes room for `extra` more rows, growing the table by doubling, so that appending
        them copies only their rows. Safe beside forward passes: a pass that read the old table
        reads the same rows in it (`ContextBank.reserve`)."""
        needed = self.count + extra
        if needed > self.table.shape[0]:
            capacity = max(needed, 2 * self.table.shape[0], 8)
            self.table = grown(self.table, self.count, capacity)

    def append_rows(self, rows: torch.Tensor) -> None:
        """Appends rows made by `make_rows`, growing the table by doubling if need be."""
        if not len(rows):
            return
        self.reserve(len(rows))
        needed = self.count + len(rows)
        self.table[self.count : needed] = rows.to(self.table.device)
        self.count = needed

    def write_rows(self, positions: Sequence[int], rows: torch.Tensor) -> None:
        """Overwrites existing rows (of contexts that were let go) with rows from
        `make_rows`."""
        if not len(rows):
            return
        index = torch.tensor(list(positions), dtype=torch.int64, device=self.table.device)
        self.table[index] = rows.to(self.table.device)

    def gather(self, context_index: torch.Tensor) -> torch.Tensor:
        """The context of every row of a batch, as `linear` and `bound_weights` take it.

        Args:
            context_index: int64 tensor of shape `(B,)`, each entry `< len(self)`.

        Returns:
            `(B, *row_shape)` unless the kind says otherwise.
        """
        # `index_select` rather than `table[context_index]`: on the CPU advanced indexing took
        # 4-8x as long for a batch of 96 rows, a few percent of a small model's training step.
        return self.table.index_select(0, context_index)

    def __len__(self) -> int:
        return self.count

    def bytes_per_context(self) -> int:
        """Bytes this layer keeps on its device for each context."""
        return math.prod(self.table.shape[1:]) * self.table.element_size()

    def imaginary_weight(self, weight: torch.Tensor) -> nn.Parameter | None:
        """The imaginary part of the layer's weight `weight`; None for real kinds."""
        return None

    @abstractmethod
    def linear(
        self, x: torch.Tensor, rows: torch.Tensor, weights: LayerWeights, sides: ComplexSides
    ) -> torch.Tensor:
        """A Linear layer's output, each row of `x` under the context of its entry in `rows`
        (`(B,)` int64 row indices into the table)."""

    def convolve_rows(
        self,
        rows: torch.Tensor,
        context: torch.Tensor,
        weights: LayerWeights,
        sides: ComplexSides,
        convolve: RowConvolution,
        bound_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """Each of the `b` rows `(b, C', H, W)` convolved with the kernel of its own context
        (`context`: `b` contexts from `gather`): one grouped convolution with the bound
        kernels of `bound_weights`.

        Args:
            convolve: The layer's convolution of each row with its own kernel.
            bound_bias: The bias of the bound kernels (`bound_weights`), once per row.

        Returns:
            `(b, N', H', W')`.
        """
        kernels, _ = self.bound_weights(context, weights, sides)
        return convolve(rows, kernels, bound_bias)

    @abstractmethod
    def bound_weights(
        self, context: torch.Tensor, weights: LayerWeights, sides: ComplexSides
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`W` bound to each of `U` contexts (eq. 10's `w ⊙ c`), as the real matrices that
        multiply the layer's flattened input directly, and the bias.

        Args:
            context: `U` contexts from `gather`.
            weights: The layer's weights.
            sides: Which sides of the layer are complex.

        Returns:
            `(U, N', M')` matrices and the `(N',)` bias (or None).
        """


def grown(table: torch.Tensor, count: int, capacity: int) -> torch.Tensor:
    """A copy of `table` with room for `capacity` rows, its first `count` rows kept."""
    bigger = torch.zeros((capacity, *table.shape[1:]), dtype=table.dtype, device=table.device)
    bigger[:count] = table[:count]
    return bigger
