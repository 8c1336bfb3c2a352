"""Complex contexts: a phase `e^{iφ}` per input, binding complex weights (paper eq. 5).

Complex kinds keep complex weights `W = A + iB`, where `A` is the wrapped layer's weight and `B`
is the layer's `weight_imag`, and compute in real arithmetic in one of two ways:

- complex activations (`complex_activations`, the default of `ModelConfig`): a hidden layer
  returns its complex output as the real tensor `[Re ; Im]` of twice the width, so the next
  layer multiplies a complex input by its context, ReLU acts on the real and the imaginary parts
  separately, and the logits are the real part of the last layer. With `u = c ⊙ h`, a hidden
  layer computes `W u` with three real GEMMs instead of four (Gauss's product:
  `Re = A Re u - B Im u`, `Im = (A + B)(Re u + Im u) - A Re u - B Im u`).
- real part only: every layer returns `Re(W (c ⊙ x)) = A (cos φ ⊙ x) - B (sin φ ⊙ x)`, one real
  GEMM with `[A B]` of twice the inner width; the hidden activations are `ReLU(Re(·))`.

A layer learns which of its sides are complex from `set_complex_sides`, which the model calls:
the first layer's input and the last layer's output are always real. The layer hands its sides
to every call here as `ComplexSides`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from psp_core.contexts import ContextSpec, complex_phases, phases_to_real_pair
from psp_core.kinds.base import ComplexSides, LayerContexts, LayerWeights, RowConvolution
from psp_core.kinds.gauss_product import gauss_product


class ComplexContexts(LayerContexts):
    """`M` phases per context, stored as `(cos φ, -sin φ)`: `2M` float32 values (8M bytes), so
    a forward pass needs no trigonometry."""

    kind = "complex"
    is_complex = True

    def row_shape(self) -> tuple[int, ...]:
        return (2 * self.dim,)

    def make_row(self, spec: ContextSpec) -> torch.Tensor:
        assert spec.seed is not None
        phases = complex_phases(
            self.model_seed, spec.seed, self.layer_index, self.dim, local_mix=self.local_mix
        )
        return phases_to_real_pair(phases)

    def imaginary_weight(self, weight: torch.Tensor) -> nn.Parameter:
        """`B`, drawn like the real part (PyTorch's default U(±1/√fan_in)): the output variance
        then matches the plain layer, since E[cos²] = E[sin²] = 1/2."""
        imag = torch.empty_like(weight)
        bound = 1.0 / math.sqrt(self.dim)
        nn.init.uniform_(imag, -bound, bound)
        return nn.Parameter(imag)

    def linear(
        self, x: torch.Tensor, rows: torch.Tensor, weights: LayerWeights, sides: ComplexSides
    ) -> torch.Tensor:
        """`W (c ⊙ x) + b` as `[Re ; Im]` when the layer carries complex activations, else its
        real part; each row bound to its own context, then one GEMM for the batch.

        Args:
            x: `(B, M)` real inputs, or `(B, 2M)` `[Re ; Im]` when `sides.input`.
        """
        context = self.gather(rows)
        a, b, bias = weights
        assert b is not None
        if sides.either:
            real_u, imag_u = self.bind_complex(x, context, complex_input=sides.input)
            if sides.output:
                # Gauss's product: forward and backward do three quarters of the work of one
                # GEMM with `[[A, -B], [B, A]]`.
                return gauss_product(real_u, imag_u, a, b, bias)
            return F.linear(real_u, a, bias) - F.linear(imag_u, b)
        real_part_matrix = torch.cat([a, b], dim=1)  # [A B] (N, 2M)
        return F.linear(x.repeat(1, 2) * context, real_part_matrix, bias)

    def bind_complex(
        self, flat: torch.Tensor, context: torch.Tensor, *, complex_input: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`u = c ⊙ h` as the pair `(Re u, Im u)`, each `(B, M)` (kept apart, never
        concatenated: every product below takes the halves one at a time).

        Args:
            flat: `(B, M)` real inputs, or `(B, 2M)` `[Re h ; Im h]` when `complex_input`.
            context: `(B, 2M)` `(cos φ, -sin φ)` from `gather`.
            complex_input: Whether the layer's input is complex.
        """
        cos, neg_sin = context.chunk(2, dim=1)
        if not complex_input:
            return cos * flat, -neg_sin * flat
        real, imag = flat.chunk(2, dim=1)
        return cos * real + neg_sin * imag, cos * imag - neg_sin * real

    def convolve_rows(
        self,
        rows: torch.Tensor,
        context: torch.Tensor,
        weights: LayerWeights,
        sides: ComplexSides,
        convolve: RowConvolution,
        bound_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """Complex rows `[Re ; Im]` convolved with their complex kernels in three grouped
        convolutions (Gauss's product, as `linear` does) rather than one with the real blocks
        `[[K_r, -K_i], [K_i, K_r]]`: three quarters of the multiply-adds, and three kernels of
        `(N, M)` per row to bind instead of four. A layer with a real side convolves as every
        kind does."""
        if not (sides.input and sides.output):
            return super().convolve_rows(rows, context, weights, sides, convolve, bound_bias)
        a, b, bias = weights
        assert b is not None
        cos, neg_sin = context[:, None, :].chunk(2, dim=2)  # (U, 1, M) each
        # In place on fresh products: autograd needs `a`, `b` and the context, not these.
        real_kernel = torch.mul(a, cos).addcmul_(b, neg_sin)  # A cos φ - B sin φ
        imag_kernel = torch.mul(b, cos).addcmul_(a, neg_sin, value=-1)  # B cos φ + A sin φ
        channels = rows.shape[1] // 2
        real, imag = rows[:, :channels], rows[:, channels:]
        p1 = convolve(real, real_kernel, None)
        p2 = convolve(imag, imag_kernel, None)
        p3 = convolve(real + imag, real_kernel + imag_kernel, None)
        real_out = p1 - p2
        if bias is not None:
            real_out = real_out + bias[:, None, None]
        return torch.cat([real_out, p3 - p1 - p2], dim=1)

    def bound_weights(
        self, context: torch.Tensor, weights: LayerWeights, sides: ComplexSides
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The complex kernel `K = W ⊙ c = K_r + i K_i` for contexts `(U, 2M)`, in real blocks.

        Returns:
            `K_r` `(U, N, M)` when both sides are real (the real part of the output), and
            otherwise the blocks of the complex product, `[[K_r, -K_i], [K_i, K_r]]`
            `(U, 2N, 2M)`, less the imaginary input columns or output rows that a real side does
            not have. The bias is added to the real part.
        """
        a, b, bias = weights
        assert b is not None
        cos, neg_sin = context[:, None, :].chunk(2, dim=2)  # (U, 1, M) each
        if not sides.either:
            return torch.addcmul(a * cos, b, neg_sin), bias  # K_r = A cos φ - B sin φ
        n, m = a.shape
        kernel = a.new_empty(
            len(context), 2 * n if sides.output else n, 2 * m if sides.input else m
        )
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            _blocks_for_autograd(kernel, a, b, cos, neg_sin, sides)
        else:
            _blocks_in_place(kernel, a, b, cos, neg_sin, sides)
        if sides.output and bias is not None:
            bias = torch.cat([bias, torch.zeros_like(bias)])
        return kernel, bias


def _blocks_for_autograd(
    kernel: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    cos: torch.Tensor,
    neg_sin: torch.Tensor,
    sides: ComplexSides,
) -> None:
    """Fills `kernel` with the blocks of `ComplexContexts.bound_weights`, as autograd can
    follow: each block computed, then copied in (a convolution over many contexts binds a
    kernel per row, so the blocks are copied once rather than concatenated step by step)."""
    n, m = a.shape
    real = torch.addcmul(a * cos, b, neg_sin)  # K_r = A cos φ - B sin φ: (U, N, M)
    imag = torch.addcmul(b * cos, a, neg_sin, value=-1)  # K_i = B cos φ + A sin φ
    kernel[:, :n, :m] = real
    if sides.input:
        kernel[:, :n, m:] = -imag
    if sides.output:
        kernel[:, n:, :m] = imag
        if sides.input:
            kernel[:, n:, m:] = real


def _blocks_in_place(
    kernel: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    cos: torch.Tensor,
    neg_sin: torch.Tensor,
    sides: ComplexSides,
) -> None:
    """The same blocks without gradients (predictions), each computed in its place in `kernel`:
    no temporaries, so two fewer passes over memory per block and no fresh pages to fault in."""
    n, m = a.shape
    real = kernel[:, :n, :m]
    torch.mul(a, cos, out=real).addcmul_(b, neg_sin)
    if not sides.output:  # [K_r, -K_i]: -K_i = -B cos φ - A sin φ
        torch.mul(b, cos, out=kernel[:, :, m:]).neg_().addcmul_(a, neg_sin)
        return
    imag = kernel[:, n:, :m]
    torch.mul(b, cos, out=imag).addcmul_(a, neg_sin, value=-1)
    if sides.input:
        torch.neg(imag, out=kernel[:, :n, m:])
        kernel[:, n:, m:] = real
