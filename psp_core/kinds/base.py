"""What every context kind is: one layer's table of contexts, and how they bind its inputs.

A kind is a subclass of `LayerContexts`, and every superposed layer holds one instance as
`layer.contexts` (the state lives on the layer, as in peft's tuner layers). The subclass decides
what a context's row is (`row_shape`, `make_row`), which spec defines it (`check_spec`), and how
the rows bind a batch: `linear` for a Linear layer, `bound_weights` for a convolution's kernel
(eq. 10), which `conv2d` convolves each row with.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from psp_core.contexts import ContextSpec
from psp_core.kinds.groups import RowGroups

if TYPE_CHECKING:
    from psp_core.layers import SuperposedLayer


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
    # (`conv2d`); a kind whose binding is costly loops over more.
    MAX_LOOPED_GROUPS: ClassVar[int] = 1
    # Rows per grouped convolution on the CPU (see `conv2d`).
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

    def append(self, specs: Sequence[ContextSpec]) -> None:
        """Adds one row per spec, growing the table in place."""
        self.append_rows(self.make_rows(specs))

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
        self, layer: SuperposedLayer, x: torch.Tensor, context_index: torch.Tensor
    ) -> torch.Tensor:
        """A Linear layer's output, each row of `x` under the context of its `context_index`."""

    @abstractmethod
    def bound_weights(
        self, layer: SuperposedLayer, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`W` bound to each of `U` contexts (eq. 10's `w ⊙ c`), as the real matrices that
        multiply the layer's flattened input directly, and the bias.

        Args:
            layer: The layer whose weights are bound.
            context: `U` contexts from `gather`.

        Returns:
            `(U, N', M')` matrices and the `(N',)` bias (or None).
        """

    def conv2d(
        self, layer: SuperposedLayer, x: torch.Tensor, context_index: torch.Tensor
    ) -> torch.Tensor:
        """A convolution's output, each row of `x` convolved with its context's kernel.

        The rows are grouped by context and each distinct context's kernel `w ⊙ c` is bound once
        (`bound_weights`), so the context costs one kernel-sized product per distinct context
        rather than a pass over every input patch. A batch of one context runs one `F.conv2d`;
        several run as grouped convolutions over blocks of rows, a kernel per row (a kind whose
        binding is costly loops over a few contexts instead: `MAX_LOOPED_GROUPS`).
        """
        conv = layer.base_layer
        assert isinstance(conv, nn.Conv2d)
        groups = RowGroups.of(context_index)
        if len(groups) <= self.MAX_LOOPED_GROUPS:
            weights, bias = self.bound_weights(layer, self.gather(groups.contexts))
            kernels = weights.view(len(weights), -1, x.shape[1], *conv.kernel_size)
            outputs = [
                F.conv2d(rows, kernel, bias, conv.stride, conv.padding, conv.dilation)
                for rows, kernel in zip(groups.split(x), kernels, strict=True)
            ]
            return groups.merge(outputs)
        # Each row is its own group, with its own kernel: (1, b·C', H, W) with b kernels of
        # (N', C', kh, kw), for blocks of b rows, each block's kernels bound just before its
        # convolution. On the CPU, binding and convolving a whole batch of 256 rows at once ran
        # at 0.6-0.8 of the one-context speed (the bound kernels of every row went through
        # memory several times), and a loop over 8 groups at 0.6-0.9 (sorting the rows and
        # putting them back); blocks of 16 rows stay in cache and ran at 0.8-1.2. A GPU takes
        # the whole batch.
        block = self.ROWS_PER_GROUPED_CONV if x.device.type == "cpu" else len(x)
        # The bias is the same for every context: repeated once for a block's groups rather
        # than by every block (`repeat` took 5 % of a binary ConvNet's pass that way).
        _, bias = self.bound_weights(layer, self.gather(context_index[:0]))
        block_bias = None if bias is None else bias.repeat(min(block, len(x)))
        blocks = (
            self._conv_block(
                layer, x[start : start + block], context_index[start : start + block], block_bias
            )
            for start in range(0, len(x), block)
        )
        if torch.is_grad_enabled():
            return torch.cat(list(blocks))
        return stacked(blocks, len(x))

    def _conv_block(
        self,
        layer: SuperposedLayer,
        rows: torch.Tensor,
        context_index: torch.Tensor,
        block_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """One grouped convolution of `rows`, each row with its own context's kernel.

        Args:
            block_bias: The bias repeated for every row of a full block, or None.
        """
        conv = layer.base_layer
        assert isinstance(conv, nn.Conv2d)
        weights, _ = self.bound_weights(layer, self.gather(context_index))
        kernels = weights.view(len(rows) * weights.shape[1], rows.shape[1], *conv.kernel_size)
        out = F.conv2d(
            rows.flatten(0, 1).unsqueeze(0),
            kernels,
            None if block_bias is None else block_bias[: len(kernels)],  # each row's group
            conv.stride,
            conv.padding,
            conv.dilation,
            groups=len(rows),
        )
        return out.view(len(rows), -1, *out.shape[2:])  # (b, N', H', W')


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


def grown(table: torch.Tensor, count: int, capacity: int) -> torch.Tensor:
    """A copy of `table` with room for `capacity` rows, its first `count` rows kept."""
    bigger = torch.zeros((capacity, *table.shape[1:]), dtype=table.dtype, device=table.device)
    bigger[:count] = table[:count]
    return bigger
