"""`W u + b` for complex `W = A + iB` and `u`, in three real GEMMs each way (Gauss's product).

With `P1 = A Re u`, `P2 = B Im u` and `P3 = (A + B)(Re u + Im u)`:
`Re(W u) = P1 - P2` and `Im(W u) = P3 - P1 - P2`.

Written as an autograd function because autograd's own backward of that expression is slow on
the CPU: `A` and `B` each receive two gradients, one of them through `A + B`, and autograd
adds the weight-sized pieces in separate passes over memory (a tenth of a training step of a
complex 784-1024-1024 MLP). Here each weight's gradient is one GEMM accumulated onto the
shared `P3` term (`addmm`), and the same for the inputs.

Gauss's product saves a quarter of the multiplications at the price of `A + B`, a pass over a
weight-sized matrix on every call. With few rows that pass costs more than the multiplications
it saves: a prediction of one row took 1.5-1.9 times as long as the four products
`A Re u`, `B Im u`, `B Re u`, `A Im u` (two GEMMs over the stacked halves). So without
gradients (predictions) and with at most `FEW_ROWS` rows, `gauss_product` computes those four
products instead.
"""

from __future__ import annotations

from typing import Any

import torch

FEW_ROWS = 48
"""Up to this many rows, a product without gradients skips Gauss's `A + B` pass: measured on
two CPU cores, the four products were faster at 32 rows (1.3-1.5x for 256 and 1024 wide
layers) and about as fast at 64."""


class GaussProduct(torch.autograd.Function):
    """`[Re ; Im]` `(B, 2N)` of `W u + b`; the bias goes to the real part."""

    @staticmethod
    def forward(
        ctx: Any,
        real_u: torch.Tensor,
        imag_u: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        weight_sum = a + b
        input_sum = real_u + imag_u
        p1 = real_u @ a.T
        p2 = imag_u @ b.T
        n = a.shape[0]
        out = real_u.new_empty(len(real_u), 2 * n)
        torch.sub(input_sum @ weight_sum.T, p1, out=out[:, n:]).sub_(p2)
        torch.sub(p1, p2, out=out[:, :n])
        if bias is not None:
            out[:, :n].add_(bias)
        ctx.save_for_backward(real_u, imag_u, input_sum, a, b, weight_sum)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        real_u, imag_u, input_sum, a, b, weight_sum = ctx.saved_tensors
        grad_real, grad_imag = grad.chunk(2, dim=1)
        # The gradients of P1, P2 and P3: grad_real - grad_imag, -(grad_real + grad_imag) (its
        # sign goes into the GEMMs' alpha) and grad_imag.
        grad_p1 = grad_real - grad_imag
        minus_grad_p2 = grad_real + grad_imag
        grad_p3 = grad_imag.contiguous()
        needs = ctx.needs_input_grad
        d_real_u = d_imag_u = d_a = d_b = d_bias = None
        if needs[0] or needs[1]:
            shared = grad_p3 @ weight_sum
            d_real_u = torch.addmm(shared, grad_p1, a) if needs[0] else None
            d_imag_u = shared.addmm_(minus_grad_p2, b, alpha=-1) if needs[1] else None
        if needs[2] or needs[3]:
            shared = grad_p3.T @ input_sum
            d_a = torch.addmm(shared, grad_p1.T, real_u) if needs[2] else None
            d_b = shared.addmm_(minus_grad_p2.T, imag_u, alpha=-1) if needs[3] else None
        if ctx.has_bias and needs[4]:
            d_bias = grad_real.sum(0)
        return d_real_u, d_imag_u, d_a, d_b, d_bias


def gauss_product(
    real_u: torch.Tensor,
    imag_u: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """`W u + b` as `[Re ; Im]` `(B, 2N)` for `W = a + i b` and `u = real_u + i imag_u`.

    Args:
        real_u, imag_u: `(B, M)` halves of the input.
        a, b: `(N, M)` real and imaginary parts of the weight.
        bias: `(N,)`, added to the real part, or None.
    """
    if len(real_u) <= FEW_ROWS and not torch.is_grad_enabled():
        return _four_products(real_u, imag_u, a, b, bias)
    out = GaussProduct.apply(real_u, imag_u, a, b, bias)
    assert isinstance(out, torch.Tensor)
    return out


def _four_products(
    real_u: torch.Tensor,
    imag_u: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """`[Re ; Im]` of `W u + b` from `A Re u - B Im u` and `B Re u + A Im u`: each weight read
    once, by one GEMM over both halves of the input, and no weight-sized temporary."""
    rows, n = len(real_u), a.shape[0]
    halves = torch.cat([real_u, imag_u])
    by_a = halves @ a.T  # [A Re u ; A Im u]
    by_b = halves @ b.T  # [B Re u ; B Im u]
    out = real_u.new_empty(rows, 2 * n)
    torch.sub(by_a[:rows], by_b[rows:], out=out[:, :n])
    torch.add(by_b[:rows], by_a[rows:], out=out[:, n:])
    if bias is not None:
        out[:, :n].add_(bias)
    return out
