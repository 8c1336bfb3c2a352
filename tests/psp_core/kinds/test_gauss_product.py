"""The complex product in three GEMMs: its value and its hand-written backward."""

import pytest
import torch

from psp_core.kinds.gauss_product import FEW_ROWS, gauss_product


def _operands(requires_grad: bool, rows: int = 5) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)

    def draw(*shape: int) -> torch.Tensor:
        values = torch.randn(*shape, dtype=torch.float64, generator=generator)
        return values.requires_grad_(requires_grad)

    return draw(rows, 7), draw(rows, 7), draw(3, 7), draw(3, 7), draw(3)


# Without gradients, few rows take the four products and more rows Gauss's three.
@pytest.mark.parametrize("rows", [1, 5, FEW_ROWS, FEW_ROWS + 1, 4 * FEW_ROWS])
@pytest.mark.parametrize("with_bias", [True, False])
def test_value_is_the_complex_product_with_the_bias_on_the_real_part(
    rows: int, with_bias: bool
) -> None:
    real_u, imag_u, a, b, bias = _operands(requires_grad=False, rows=rows)
    expected = torch.complex(real_u, imag_u) @ torch.complex(a, b).T
    if with_bias:
        expected += bias
    got = gauss_product(real_u, imag_u, a, b, bias if with_bias else None)
    assert torch.allclose(got, torch.cat([expected.real, expected.imag], dim=1))


def test_predictions_and_training_compute_the_same_product() -> None:
    operands = _operands(requires_grad=True, rows=3)
    with torch.inference_mode():
        predicted = gauss_product(*operands)
    trained = gauss_product(*operands)
    assert trained.requires_grad
    assert torch.allclose(predicted, trained.detach())


@pytest.mark.parametrize("with_bias", [True, False])
def test_backward_matches_finite_differences(with_bias: bool) -> None:
    real_u, imag_u, a, b, bias = _operands(requires_grad=True)
    assert torch.autograd.gradcheck(
        gauss_product, (real_u, imag_u, a, b, bias if with_bias else None)
    )


def test_backward_matches_autograd_of_the_complex_product() -> None:
    operands = _operands(requires_grad=True)
    real_u, imag_u, a, b, bias = operands
    weights = torch.randn(5, 6, dtype=torch.float64)
    (gauss_product(*operands) * weights).sum().backward()
    got = [t.grad.clone() for t in operands]
    for t in operands:
        t.grad = None
    product = torch.complex(real_u, imag_u) @ torch.complex(a, b).T + bias
    (torch.cat([product.real, product.imag], dim=1) * weights).sum().backward()
    for mine, reference in zip(got, operands, strict=True):
        assert torch.allclose(mine, reference.grad)


def test_weights_learn_when_the_inputs_need_no_gradient() -> None:
    real_u, imag_u, a, b, bias = _operands(requires_grad=True)
    out = gauss_product(real_u.detach(), imag_u.detach(), a, b, bias)
    out.sum().backward()
    assert a.grad is not None and b.grad is not None and bias.grad is not None
    assert torch.allclose(bias.grad, torch.full((3,), 5.0, dtype=torch.float64))
