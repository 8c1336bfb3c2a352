"""Models built from configs, and the honest parameter count against the paper's Table 1."""

import math

import pytest
import torch

from psp_core.contexts import ContextKind, ContextSpec
from psp_core.models import ModelConfig, build_model, parameter_count, table1_parameter_count

M, N = 64, 10


@pytest.mark.parametrize("kind", list(ContextKind), ids=str)
def test_single_layer_parameters_match_table1(kind: ContextKind) -> None:
    # A model with no hidden layer is one M x N map; add its N biases and one context.
    model = build_model(ModelConfig(kind=kind.value, input_shape=(M,), hidden=(), num_classes=N))
    # The numbers that define one context (one-power's cached vectors are derived from them).
    stored_per_context = sum(math.prod(layer.table.shape[1:]) for layer in model.bank.layers)
    with_one_model, per_model = table1_parameter_count(kind, M, N)
    if kind is ContextKind.NONE:
        assert parameter_count(model) == with_one_model + N
    elif kind is ContextKind.ONEPOWER:
        # Table 1: 2M(N + 0.5) = the complex weights + the M base phases; +1 model = 1 exponent.
        assert parameter_count(model) + M == with_one_model + N
        assert stored_per_context == per_model
    elif kind is ContextKind.COMPLEX:
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


@pytest.mark.parametrize("kind", list(ContextKind), ids=str)
def test_convnet_takes_flat_or_shaped_rows(kind: ContextKind) -> None:
    model = build_model(
        ModelConfig(kind=kind.value, arch="convnet", input_shape=(1, 8, 8), hidden=(4, 6))
    )
    model.bank.extend([ContextSpec(power=1.0) if kind.uses_power else ContextSpec(seed=1)])
    x = torch.randn(3, 1, 8, 8)
    index = torch.zeros(3, dtype=torch.long)
    assert torch.equal(model(x, index), model(x.view(3, 64), index))
    assert model(x, index).shape == (3, 10)


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
    with pytest.raises(ValueError):
        ModelConfig(kind="quantum")
    with pytest.raises(ValueError, match="convnet"):
        ModelConfig(arch="convnet", input_shape=(64,))
    with pytest.raises(ValueError, match="local_mix"):
        ModelConfig(kind="binary", local_mix=True)
