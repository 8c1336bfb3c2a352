import pytest
import torch
import torch.nn.functional as F

from psp_core.pooling import MaxPool2x2


def pooling_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of `F.max_pool2d`, which the fast path must not make."""
    calls: list[int] = []
    original = F.max_pool2d

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "max_pool2d", counted)
    return calls


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 7, 9), (5, 1, 2, 3)])
def test_without_autograd_it_gives_max_pool2d_values_without_calling_it(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...]
) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, 1] = float("nan")
    x[-1, -1, :2, :2] = 0.5  # a window of ties
    expected = F.max_pool2d(x, 2)
    calls = pooling_calls(monkeypatch)
    with torch.inference_mode():
        pooled = MaxPool2x2()(x)
    with torch.no_grad():
        pooled_no_grad = MaxPool2x2()(x)
    assert calls == []
    assert pooled.shape == expected.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    assert torch.isnan(pooled[0, 0, 0, 0]) and pooled[-1, -1, 0, 0] == 0.5
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(pooled_no_grad, expected, rtol=0, atol=0, equal_nan=True)


def test_with_autograd_it_is_max_pool2d_and_its_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    x[0, 0, :2, :2] = 9.0  # ties: max_pool2d's gradient goes to the first of them only
    ours = x.clone().requires_grad_()
    reference = x.clone().requires_grad_()
    calls = pooling_calls(monkeypatch)
    weights = torch.arange(1.0, 1 + 2 * 3 * 3 * 3).view(2, 3, 3, 3)
    (MaxPool2x2()(ours) * weights).sum().backward()
    assert calls == [1]
    (F.max_pool2d(reference, 2) * weights).sum().backward()
    assert ours.grad is not None and reference.grad is not None
    assert torch.equal(ours.grad, reference.grad)
    assert ours.grad[0, 0, :2, :2].tolist() == [[1.0, 0.0], [0.0, 0.0]]
