"""Models built from configs, and the honest parameter count against the paper's Table 1."""

import math

import pytest
import torch
from torch import nn

from psp_core.contexts import ContextSpec, binary_context
from psp_core.kinds import CONTEXT_KINDS, kind_class
from psp_core.layers import SuperposedLinear
from psp_core.models import ModelConfig, SuperposedModel, build_model, parameter_count
from psp_core.pooling import MaxPool2x2

M, N = 64, 10

# The paper's Table 1 for an M x N linear map: (parameters with one model, +1 model). Complex
# weights count as two reals, as in our layers; the layers' N biases are not in the table.
TABLE1 = {
    "none": (M * N, M * N),
    "binary": (M * (N + 1), M),
    "complex": (2 * M * N + M, M),
    "rotation": (M * (N + M), M * M),
    "onepower": (2 * M * N + M, 1),
}


@pytest.mark.parametrize("kind", CONTEXT_KINDS)
def test_single_layer_parameters_match_table1(kind: str) -> None:
    # A model with no hidden layer is one M x N map; add its N biases and one context.
    model = build_model(ModelConfig(kind=kind, input_shape=(M,), hidden=(), num_classes=N))
    # The numbers that define one context (one-power's cached vectors are derived from them).
    stored_per_context = sum(math.prod(layer.table.shape[1:]) for layer in model.bank.layers)
    with_one_model, per_model = TABLE1[kind]
    if kind == "none":
        assert parameter_count(model) == with_one_model + N
    elif kind == "onepower":
        # Table 1: 2M(N + 0.5) = the complex weights + the M base phases; +1 model = 1 exponent.
        assert parameter_count(model) + M == with_one_model + N
        assert stored_per_context == per_model
    elif kind == "complex":
        # We store (cos φ, -sin φ): 2M floats for the M phases Table 1 counts.
        assert parameter_count(model) + M == with_one_model + N
        assert stored_per_context == 2 * per_model
    else:
        assert parameter_count(model) + per_model == with_one_model + N
        assert stored_per_context == per_model


@pytest.mark.parametrize("arch", ["mlp", "convnet"])
def test_build_is_deterministic_in_the_seed(arch: str) -> None:
    shape = (64,) if arch == "mlp" else (1, 8, 8)
    config = ModelConfig(kind="complex", arch=arch, input_shape=shape, hidden=(8, 8))
    a, b = build_model(config), build_model(config)
    other = build_model(
        ModelConfig(kind="complex", arch=arch, input_shape=shape, hidden=(8, 8), seed=1)
    )
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert not all(
        torch.equal(pa, po) for pa, po in zip(a.parameters(), other.parameters(), strict=True)
    )


def test_build_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_model(ModelConfig(hidden=(8,)))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kind", CONTEXT_KINDS)
def test_convnet_takes_flat_or_shaped_rows(kind: str) -> None:
    model = build_model(
        ModelConfig(kind=kind, arch="convnet", input_shape=(1, 8, 8), hidden=(4, 6))
    )
    uses_power = kind_class(kind).uses_power
    model.bank.extend([ContextSpec(power=1.0) if uses_power else ContextSpec(seed=1)])
    x = torch.randn(3, 1, 8, 8)
    index = torch.zeros(3, dtype=torch.long)
    assert torch.equal(model(x, index), model(x.view(3, 64), index))
    assert model(x, index).shape == (3, 10)


@pytest.mark.parametrize("kind", ["binary", "complex"])
def test_convnet_pools_before_relu_exactly_as_relu_before_pooling(kind: str) -> None:
    config = ModelConfig(kind=kind, arch="convnet", input_shape=(1, 8, 8), hidden=(4, 6, 5))
    model = build_model(config)
    model.bank.extend([ContextSpec(seed=s) for s in (1, 2, 3)])
    # Checkpoints name layers by position: the weights keep theirs.
    assert [name for name in model.state_dict() if name.endswith(".weight")] == [
        "body.0.base_layer.weight",
        "body.3.base_layer.weight",
        "body.6.base_layer.weight",
        "body.10.base_layer.weight",
    ]
    x = torch.randn(6, 1, 8, 8)
    index = torch.tensor([0, 1, 2, 0, 1, 2])

    def logits_and_gradients() -> list[torch.Tensor]:
        model.zero_grad()
        logits = model(x, index)
        logits.square().sum().backward()
        gradients = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return [logits.detach(), *gradients]

    pooled_first = logits_and_gradients()
    body = model.body
    assert isinstance(body, nn.Sequential)
    assert [type(body[i]) for i in (1, 2)] == [MaxPool2x2, nn.ReLU] and body[2].inplace
    # The same modules as conv → ReLU → pool, for each of the three blocks (8x8 → 4x4 → 2x2 → 1x1).
    model.body = nn.Sequential(*(body[i] for i in (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 10)))
    relu_first = logits_and_gradients()
    for got, expected in zip(pooled_first, relu_first, strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", CONTEXT_KINDS)
def test_convnet_predicts_the_logits_it_trains_on(kind: str) -> None:
    """Without autograd the ConvNet pools another way (`psp_core.pooling`): same logits."""
    config = ModelConfig(kind=kind, arch="convnet", input_shape=(2, 11, 9), hidden=(4, 6))
    model = build_model(config)
    uses_power = kind_class(kind).uses_power
    model.bank.extend([ContextSpec(power=p) if uses_power else ContextSpec(seed=p) for p in (1, 2)])
    x = torch.randn(5, 2, 11, 9)
    index = torch.tensor([0, 1, 1, 0, 1])
    trained_on = model(x, index)
    assert trained_on.requires_grad
    with torch.inference_mode():
        predicted = model(x, index)
    assert torch.equal(predicted, trained_on.detach())


def test_none_is_the_plain_architecture() -> None:
    plain = build_model(ModelConfig(kind="none", hidden=(16,)))
    binary = build_model(ModelConfig(kind="binary", hidden=(16,)))
    assert parameter_count(plain) == parameter_count(binary) == 64 * 16 + 16 + 16 * 10 + 10
    assert len(plain.bank.layers) == 2 and plain.bank.bytes_per_context() == 0


def test_config_round_trips_and_validates() -> None:
    config = ModelConfig(
        kind="onepower", input_shape=(1, 8, 8), arch="convnet", hidden=(3,), local_mix=True
    )
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="expected one of none, binary, complex, rotation"):
        ModelConfig(kind="quantum")
    with pytest.raises(ValueError, match="convnet"):
        ModelConfig(arch="convnet", input_shape=(64,))
    with pytest.raises(ValueError, match="local_mix"):
        ModelConfig(kind="binary", local_mix=True)


class _ResidualBlock(nn.Module):
    """A custom block whose own forward calls its layers, one of them in a nested container."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.inner(x))


def test_contexts_reach_superposed_layers_at_any_depth() -> None:
    config = ModelConfig(kind="binary", input_shape=(6,), hidden=(), num_classes=3, seed=4)
    torch.manual_seed(0)
    body = nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.ReLU()), _ResidualBlock(5))
    body.append(nn.Linear(5, 3))
    model = SuperposedModel(config, body)
    # In `named_modules` order, which numbers the layers for their contexts' seeds.
    layers = [body[0][0], body[1].inner[0], body[1].out, body[2]]
    assert all(isinstance(layer, SuperposedLinear) for layer in layers)
    seeds = [11, 12]
    model.bank.extend([ContextSpec(seed=s) for s in seeds])

    def by_hand(x: torch.Tensor, seed: int) -> torch.Tensor:
        """The body's math with each layer's signs drawn from the context seed directly."""

        def bound(layer_index: int, h: torch.Tensor) -> torch.Tensor:
            plain = layers[layer_index].base_layer
            signs = binary_context(config.seed, seed, layer_index, h.shape[1])
            return (h * signs) @ plain.weight.T + plain.bias

        h = torch.relu(bound(0, x))
        h = h + bound(2, torch.relu(bound(1, h)))
        return bound(3, h)

    x = torch.randn(5, 6)
    index = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        got = model(x, index)
        expected = torch.stack([by_hand(x[i : i + 1], seeds[r])[0] for i, r in enumerate(index)])
        assert torch.allclose(got, expected, atol=1e-5)
        first, second = (
            model(x, torch.zeros(5, dtype=torch.long)),
            model(x, torch.ones(5, dtype=torch.long)),
        )
        assert not torch.allclose(first, second, atol=1e-3)
