"""Superposed layers: mixed-context batches, Proposition 3, and the dispatch to twins."""

import pytest
import torch
from torch import nn

from psp_core.contexts import (
    ContextSpec,
    binary_context,
    complex_phases,
    onepower_base_phases,
    rotation_context,
)
from psp_core.kinds import CONTEXT_KINDS, KINDS_WITH_CONTEXTS, LayerContexts, kind_class
from psp_core.layers import (
    SuperposedConv2d,
    SuperposedLinear,
    batch_rows,
    make_superposed,
    stacked,
    superpose,
)


def _spec(kind: str, i: int) -> ContextSpec:
    uses_power = kind_class(kind).uses_power
    return ContextSpec(power=i + 0.5 * (i % 2)) if uses_power else ContextSpec(seed=i)


def _linear(kind: str) -> SuperposedLinear:
    torch.manual_seed(0)
    layer = SuperposedLinear(nn.Linear(12, 5), kind, model_seed=3, layer_index=0)
    layer.contexts.append_rows(layer.contexts.make_rows([_spec(kind, i) for i in range(6)]))
    return layer


def _conv(kind: str) -> SuperposedConv2d:
    torch.manual_seed(0)
    base = nn.Conv2d(3, 4, kernel_size=3, padding=1, stride=2)
    layer = SuperposedConv2d(base, kind, model_seed=3, layer_index=0)
    layer.contexts.append_rows(layer.contexts.make_rows([_spec(kind, i) for i in range(6)]))
    return layer


# (name, layer factory, input shape): one table covering every layer type.
CASES = [("linear", _linear, (12,)), ("conv2d", _conv, (3, 9, 7))]


@pytest.mark.parametrize("kind", CONTEXT_KINDS)
@pytest.mark.parametrize(("name", "factory", "shape"), CASES, ids=[c[0] for c in CASES])
def test_mixed_batch_equals_row_by_row(kind, name, factory, shape) -> None:
    layer = factory(kind)
    x = torch.randn(10, *shape)
    index = torch.tensor([0, 5, 2, 2, 1, 3, 4, 0, 5, 1])
    mixed = layer(x, index)
    rows = torch.cat([layer(x[i : i + 1], index[i : i + 1]) for i in range(10)])
    assert mixed.shape == rows.shape
    assert torch.allclose(mixed, rows, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS_WITH_CONTEXTS)
@pytest.mark.parametrize(("name", "factory", "shape"), CASES, ids=[c[0] for c in CASES])
def test_contexts_recall_different_models(kind, name, factory, shape) -> None:
    layer = factory(kind)
    x = torch.randn(4, *shape)
    first = layer(x, torch.zeros(4, dtype=torch.long))
    second = layer(x, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(first, second, atol=1e-3)


def test_binary_linear_is_w_times_bound_input() -> None:
    layer = _linear("binary")
    x = torch.randn(3, 12)
    c = binary_context(3, 2, 0, 12)
    expected = (x * c) @ layer.base_layer.weight.T + layer.base_layer.bias
    assert torch.allclose(layer(x, torch.full((3,), 2)), expected, atol=1e-6)


def test_conv_binds_context_to_kernel() -> None:
    # Paper eq. 10: (w ⊙ c) * x, with c over (in_channels, kh, kw).
    layer = _conv("binary")
    x = torch.randn(2, 3, 9, 7)
    c = binary_context(3, 4, 0, 27).view(3, 3, 3)
    conv = layer.base_layer
    expected = nn.functional.conv2d(x, conv.weight * c, conv.bias, stride=2, padding=1)
    assert torch.allclose(layer(x, torch.full((2,), 4)), expected, atol=1e-5)


def test_complex_linear_is_real_part_of_complex_product() -> None:
    layer = _linear("complex")
    x = torch.randn(3, 12, dtype=torch.float64)
    pair = layer.contexts.table[1].double()
    c = torch.complex(pair[:12], -pair[12:])
    w = torch.complex(layer.base_layer.weight.double(), layer.weight_imag.double())
    expected = (w @ (c * x).T).real.T + layer.base_layer.bias.double()
    assert torch.allclose(
        layer(x.float(), torch.ones(3, dtype=torch.long)).double(), expected, atol=1e-5
    )


def _defined_context(kind: str, row: int) -> torch.Tensor:
    """Context `row` of `_linear(kind)` as complex numbers, from what defines it (its seed's
    phases, or its exponent times the base phases), without the layer's table."""
    spec = _spec(kind, row)
    if spec.power is not None:
        phases = spec.power * onepower_base_phases(3, 0, 12)
    else:
        assert spec.seed is not None
        phases = complex_phases(3, spec.seed, 0, 12)
    return torch.polar(torch.ones(12, dtype=torch.float64), phases)


@pytest.mark.parametrize("kind", ["complex", "onepower"])
def test_prop3_complex_gradient_is_context_rotated_model_gradient(kind: str) -> None:
    """∂J_PSP/∂W = (∂J_k/∂W(k)) ⊙ conj(c(k)) for W(k) = W ⊙ c(k), where the gradient of
    `W = A + iB` is `∂J/∂A + i ∂J/∂B` (PyTorch's convention for complex tensors)."""
    layer = _linear(kind)  # real part only: J_PSP = Σ (Re(W (c ⊙ x)) + b - t)²
    x, target = torch.randn(5, 12), torch.randn(5, 5)
    psp_out = layer(x, torch.full((5,), 3))
    (psp_out - target).pow(2).sum().backward()
    psp_grad = torch.complex(layer.base_layer.weight.grad, layer.weight_imag.grad)

    c = _defined_context(kind, 3)
    w = torch.complex(layer.base_layer.weight.detach(), layer.weight_imag.detach())
    model_k = (w.to(torch.complex128) * c).requires_grad_(True)  # the k-th model recalled
    bias = layer.base_layer.bias.detach().double()
    out_k = (x.to(torch.complex128) @ model_k.T).real + bias
    (out_k - target.double()).pow(2).sum().backward()
    assert torch.allclose(psp_out.detach().double(), out_k.detach(), atol=1e-5)
    assert torch.allclose(psp_grad.to(torch.complex128), model_k.grad * c.conj(), atol=1e-4)


def test_prop3_rotation_gradient_is_rotated_model_gradient() -> None:
    """∂J_PSP/∂W = (∂J_k/∂W(k)) C_kᵀ for W(k) = W C_k."""
    layer = _linear("rotation")
    x, target = torch.randn(5, 12), torch.randn(5, 5)
    (layer(x, torch.full((5,), 3)) - target).pow(2).sum().backward()
    rotation = rotation_context(3, 3, 0, 12)
    model_k = (layer.base_layer.weight.detach() @ rotation).requires_grad_(True)
    (x @ model_k.T + layer.base_layer.bias.detach() - target).pow(2).sum().backward()
    assert torch.allclose(layer.base_layer.weight.grad, model_k.grad @ rotation.T, atol=1e-4)


def test_superpose_replaces_every_linear_and_conv() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    layers = superpose(model, "binary", model_seed=0)
    assert [type(layer) for layer in layers] == [SuperposedConv2d, SuperposedLinear]
    assert isinstance(model[0], SuperposedConv2d) and isinstance(model[3], SuperposedLinear)
    assert [layer.context_dim for layer in layers] == [9, 8]
    assert [layer.contexts.layer_index for layer in layers] == [0, 1]


def test_make_superposed_rejects_other_layers() -> None:
    with pytest.raises(TypeError, match="Linear or Conv2d"):
        make_superposed(nn.LSTM(2, 2), "binary", model_seed=0, layer_index=0, local_mix=False)


def test_each_twin_wraps_only_its_own_layer_type() -> None:
    with pytest.raises(TypeError, match=r"wraps nn\.Linear, not Conv2d"):
        SuperposedLinear(nn.Conv2d(1, 2, 3), "binary", model_seed=0, layer_index=0)
    with pytest.raises(ValueError, match="groups=1 and zero padding only"):
        SuperposedConv2d(nn.Conv2d(2, 2, 3, groups=2), "binary", model_seed=0, layer_index=0)


def test_complex_weights_add_an_imaginary_part() -> None:
    layer = _linear("complex")
    assert layer.weight_imag is not None and layer.weight_imag.shape == (5, 12)
    assert _linear("binary").weight_imag is None


def _complex_pair(layer: SuperposedLinear | SuperposedConv2d, row: int) -> torch.Tensor:
    """The context of `row` as complex numbers `e^{iφ}` (the table stores `(cos φ, -sin φ)`)."""
    pair = layer.contexts.table[row].double()
    half = len(pair) // 2
    return torch.complex(pair[:half], -pair[half:])


@pytest.mark.parametrize(
    ("complex_input", "complex_output"), [(False, True), (True, True), (True, False)]
)
def test_complex_activations_are_the_complex_product(complex_input, complex_output) -> None:
    layer = _linear("complex")
    layer.set_complex_sides(complex_input=complex_input, complex_output=complex_output)
    real, imag = torch.randn(3, 12, dtype=torch.float64), torch.randn(3, 12, dtype=torch.float64)
    h = torch.complex(real, imag if complex_input else torch.zeros_like(imag))
    w = torch.complex(layer.base_layer.weight.double(), layer.weight_imag.double())
    out = (w @ (_complex_pair(layer, 2) * h).T).T + layer.base_layer.bias.double()
    given = torch.cat([real, imag], dim=1) if complex_input else real
    expected = torch.cat([out.real, out.imag], dim=1) if complex_output else out.real
    got = layer(given.float(), torch.full((3,), 2)).double()
    assert torch.allclose(got, expected, atol=1e-5)


def test_complex_conv_binds_the_context_to_a_complex_kernel() -> None:
    layer = _conv("complex")
    layer.set_complex_sides(complex_input=True, complex_output=True)
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)  # 3 real channels, then 3 imaginary ones
    c = _complex_pair(layer, 4).view(3, 3, 3)
    conv = layer.base_layer
    kernel = torch.complex(conv.weight.double(), layer.weight_imag.double()) * c
    x_complex = torch.complex(x[:, :3], x[:, 3:])

    def conv2d(inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(inputs, weight, stride=2, padding=1)

    out_real = conv2d(x_complex.real, kernel.real) - conv2d(x_complex.imag, kernel.imag)
    out_imag = conv2d(x_complex.real, kernel.imag) + conv2d(x_complex.imag, kernel.real)
    expected = torch.cat([out_real + conv.bias.double()[:, None, None], out_imag], dim=1)
    assert torch.allclose(layer(x.float(), torch.full((2,), 4)).double(), expected, atol=1e-5)


def _explicit_output(layer: SuperposedLinear | SuperposedConv2d, x: torch.Tensor, row: int):
    """One row's output from the math of its kind, in float64, without the layer's forward:
    the kernel `w ⊙ c` (or `W C`) built explicitly, complex kernels as complex numbers."""
    base = layer.base_layer
    weight = base.weight.double()
    bias = base.bias.double()
    if layer.contexts.kind == "binary":
        kernel = weight * layer.contexts.table[row].double().view(weight.shape[1:])
    elif layer.contexts.kind == "rotation":
        rotation = layer.contexts.table[row].double()
        kernel = (weight.flatten(1) @ rotation).view(weight.shape)
    else:
        c = torch.polar(torch.ones(layer.context_dim, dtype=torch.float64), _phases(layer, row))
        kernel = torch.complex(weight, layer.weight_imag.double()) * c.view(weight.shape[1:])
    x = x.double()
    if layer.sides.input:
        half = x.shape[1] // 2
        x = torch.complex(x[:, :half], x[:, half:])
    elif kernel.is_complex():
        x = x.to(torch.complex128)

    def apply(inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, SuperposedConv2d):
            return nn.functional.conv2d(inputs, weights, stride=base.stride, padding=base.padding)
        return inputs @ weights.T

    if kernel.is_complex():  # (x_r + i x_i)(K_r + i K_i), in real products
        out = torch.complex(
            apply(x.real, kernel.real) - apply(x.imag, kernel.imag),
            apply(x.real, kernel.imag) + apply(x.imag, kernel.real),
        )
    else:
        out = apply(x, kernel)
    shape = (1, -1) + (1,) * (out.dim() - 2)
    if not out.is_complex():
        return out + bias.view(shape)
    out = out + bias.view(shape).to(out.dtype)
    return torch.cat([out.real, out.imag], dim=1) if layer.sides.output else out.real


def _phases(layer: SuperposedLinear | SuperposedConv2d, row: int) -> torch.Tensor:
    """The phases φ of context `row`, from what defines it (a seed's pair or an exponent)."""
    if layer.contexts.kind == "onepower":
        return layer.contexts.table[row].double() * layer.contexts.base_phases
    pair = layer.contexts.table[row].double()
    half = len(pair) // 2
    return torch.atan2(-pair[half:], pair[:half])


# (kind, (complex_input, complex_output)): real kinds have one formulation, complex kinds four.
KIND_SIDES = [
    (kind, sides)
    for kind in KINDS_WITH_CONTEXTS
    for sides in (
        [(False, False), (False, True), (True, True), (True, False)]
        if kind_class(kind).is_complex
        else [(False, False)]
    )
]


@pytest.mark.parametrize(("kind", "sides"), KIND_SIDES, ids=lambda v: str(v))
@pytest.mark.parametrize(("name", "factory", "shape"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("max_looped", [16, 0], ids=["looped", "kernel-per-row"])
@pytest.mark.parametrize("autograd", [True, False], ids=["autograd", "no-grad"])
def test_grouped_mixed_batch_equals_the_explicit_math(
    kind, sides, name, factory, shape, max_looped, autograd, monkeypatch
) -> None:
    """A batch mixing contexts (grouped by context in rotation and conv) gives every row
    what its own context's kernel gives it, for every kind and every complex side, whether a
    convolution loops over its groups or runs grouped convolutions over blocks of rows (here
    of 4, 4 and 3 rows), and whether the blocks are concatenated (autograd) or copied into one
    output as they come (no grad)."""
    monkeypatch.setattr(kind_class(kind), "MAX_LOOPED_GROUPS", max_looped)
    monkeypatch.setattr(LayerContexts, "ROWS_PER_GROUPED_CONV", 4)
    layer = factory(kind)
    if kind_class(kind).is_complex:
        layer.set_complex_sides(complex_input=sides[0], complex_output=sides[1])
    channels = shape[0] * (2 if layer.sides.input else 1)
    x = torch.randn(11, channels, *shape[1:])
    index = torch.tensor([3, 0, 5, 3, 3, 1, 0, 4, 5, 3, 2])
    with torch.set_grad_enabled(autograd):
        got = layer(x, index).double()
    expected = torch.cat([_explicit_output(layer, x[i : i + 1], int(index[i])) for i in range(11)])
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["rotation", "complex"])
@pytest.mark.parametrize("max_looped", [16, 0], ids=["looped", "kernel-per-row"])
def test_grouped_conv_gradients_equal_row_by_row_gradients(kind, max_looped, monkeypatch) -> None:
    monkeypatch.setattr(kind_class(kind), "MAX_LOOPED_GROUPS", max_looped)
    monkeypatch.setattr(LayerContexts, "ROWS_PER_GROUPED_CONV", 3)
    layer = _conv(kind)
    x = torch.randn(7, 3, 9, 7)
    index = torch.tensor([2, 0, 2, 5, 0, 2, 1])
    layer(x, index).square().sum().backward()
    grouped = layer.base_layer.weight.grad.clone()
    layer.zero_grad()
    for i in range(7):
        layer(x[i : i + 1], index[i : i + 1]).square().sum().backward()
    assert torch.allclose(grouped, layer.base_layer.weight.grad, atol=1e-4)


@pytest.mark.parametrize("kind", ["complex", "onepower"])
def test_complex_rows_convolved_by_gauss_product_have_the_row_by_row_gradients(
    kind, monkeypatch
) -> None:
    """Complex activations in and out: each block of rows is three grouped convolutions."""
    monkeypatch.setattr(LayerContexts, "ROWS_PER_GROUPED_CONV", 3)
    layer = _conv(kind)
    layer.set_complex_sides(complex_input=True, complex_output=True)
    x = torch.randn(7, 6, 9, 7)
    index = torch.tensor([2, 0, 2, 5, 0, 2, 1])
    layer(x, index).square().sum().backward()
    grouped = [layer.base_layer.weight.grad.clone(), layer.weight_imag.grad.clone()]
    layer.zero_grad()
    for i in range(7):
        layer(x[i : i + 1], index[i : i + 1]).square().sum().backward()
    row_by_row = [layer.base_layer.weight.grad, layer.weight_imag.grad]
    for got, expected in zip(grouped, row_by_row, strict=True):
        assert torch.allclose(got, expected, atol=1e-4)


def test_real_kinds_have_no_complex_activations() -> None:
    with pytest.raises(ValueError, match="no complex activations"):
        _linear("binary").set_complex_sides(complex_input=True, complex_output=False)


def test_a_layer_takes_its_rows_from_the_enclosing_batch_rows_block() -> None:
    layer = _linear("binary")
    x, index = torch.randn(4, 12), torch.tensor([1, 0, 5, 1])
    with batch_rows(index):
        assert torch.equal(layer(x), layer(x, index))
        assert torch.equal(layer(x, torch.zeros(4, dtype=torch.long))[1], layer(x)[1])
    with pytest.raises(TypeError, match="needs the batch's context rows"):
        layer(x)


def test_stacked_copies_uneven_pieces_into_one_tensor_in_order() -> None:
    rows = torch.arange(22.0).view(11, 2)
    pieces = (rows[start : start + 4] for start in range(0, 11, 4))
    got = stacked(pieces, 11)
    assert torch.equal(got, rows)
    assert got.data_ptr() != rows.data_ptr()


def test_stacked_returns_a_single_piece_as_it_is() -> None:
    rows = torch.arange(6.0).view(3, 2)
    assert stacked(iter([rows]), 3) is rows
