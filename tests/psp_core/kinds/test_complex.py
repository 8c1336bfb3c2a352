"""Complex contexts: the kernel a convolution binds, with and without gradients."""

from __future__ import annotations

import pytest
import torch

from psp_core.contexts import ContextSpec
from psp_core.kinds.base import ComplexSides, LayerWeights
from psp_core.kinds.complex import ComplexContexts


def _contexts(dim: int, count: int) -> ComplexContexts:
    contexts = ComplexContexts(model_seed=3, layer_index=1, dim=dim, local_mix=False)
    contexts.append_rows(contexts.make_rows([ContextSpec(seed=seed) for seed in range(count)]))
    return contexts


@pytest.mark.parametrize(
    "sides",
    [ComplexSides(True, True), ComplexSides(True, False), ComplexSides(False, True)],
    ids=["complex to complex", "complex to real", "real to complex"],
)
def test_the_kernel_is_the_complex_product_with_or_without_gradients(
    sides: ComplexSides,
) -> None:
    n, m = 4, 6
    contexts = _contexts(m, 3)
    generator = torch.Generator().manual_seed(0)
    a, b, bias = (torch.randn(*shape, generator=generator) for shape in ((n, m), (n, m), (n,)))
    context = contexts.gather(torch.tensor([2, 0, 1]))
    cos, neg_sin = context.chunk(2, dim=1)
    bound = torch.complex(a, b)[None] * torch.complex(cos, -neg_sin)[:, None, :]  # W ⊙ c
    real, imag = bound.real, bound.imag
    top = torch.cat([real, -imag], dim=2) if sides.input else real
    bottom = torch.cat([imag, real], dim=2) if sides.input else imag
    expected = torch.cat([top, bottom], dim=1) if sides.output else top

    with torch.no_grad():
        predicting, _ = contexts.bound_weights(context, LayerWeights(a, b, bias), sides)
    weights = LayerWeights(a.requires_grad_(), b.requires_grad_(), bias)
    training, trained_bias = contexts.bound_weights(context, weights, sides)

    assert torch.allclose(predicting, expected, atol=1e-6)
    assert torch.equal(predicting, training.detach())
    assert training.requires_grad
    assert trained_bias is not None and len(trained_bias) == (2 * n if sides.output else n)
